"""`python -m benchmarks [+method=<name>] [+hw=<name>] [group=option ...]`: one run, or a grid with -m."""

from __future__ import annotations

import logging
import os
import warnings

# No telemetry: these machines have no internet, and nothing should wait on it.
for _var, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("DVC_NO_ANALYTICS", "1")):
    os.environ.setdefault(_var, _value)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import benchmarks  # noqa: E402,F401  (registers the config resolvers)
from benchmarks.pipeline import run  # noqa: E402


def _quiet_libraries() -> None:
    """Keep the console to our stage lines and Lightning's progress bars."""
    for name in ("mlflow", "alembic", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    _quiet_libraries()
    return run(cfg)


if __name__ == "__main__":
    main()
