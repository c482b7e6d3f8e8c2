"""Where a configured data path points: the working directory first, else the project root.

Device yamls name data files (a latency table, a folder of profiles) by relative paths, so
that the same yaml works in a Hydra run (its own working directory) and in
``python -m hardware ...`` started anywhere.
"""

from __future__ import annotations

from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the current directory if it exists there, else from the project root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return project_root() / path
