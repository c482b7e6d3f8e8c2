"""A Hydra launcher running each job of a multirun as a Ray task: ``launcher=ray`` (conf/launcher/ray.yaml)."""
