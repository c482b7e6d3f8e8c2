"""Files replaced whole or not at all, for every writer that concurrent runs may share (light: no torch)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def written_atomically(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` at once.

    The name is this process's own, so concurrent workers writing the same file (a shared
    baseline cache, a data folder prepared by several runs) never write into each other's
    half-written copy; whoever replaces last wins with a whole file. ``suffix`` keeps an
    extension a writer insists on (``np.savez`` appends ``.npz``).
    """
    partial = target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        yield partial
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
