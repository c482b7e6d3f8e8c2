"""CompressBench: the run pipeline, datasets, model zoo, tracking and leaderboard."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _existing_dir(path: str) -> str | None:
    """The absolute path if that folder exists, else None (config: optional sources)."""
    resolved = Path(path).resolve()
    return str(resolved) if resolved.is_dir() else None


# Resolvers the configs use to derive paths (conf/paths/default.yaml).
OmegaConf.register_new_resolver("cb.project_dir", lambda: str(Path(__file__).resolve().parent.parent), replace=True)
OmegaConf.register_new_resolver("cb.existing_dir", _existing_dir, replace=True)
