"""Errors raised while locating, verifying and reading datasets.

Each message names what was tried and how to fix it, so that a run that cannot find its
data tells the user which config key to set.
"""

from __future__ import annotations

from pathlib import Path


class DataNotFoundError(FileNotFoundError):
    """No place (prepared folder, source folder, upstream download) could provide a dataset."""


class DataChecksumError(RuntimeError):
    """A file's sha256 differs from the digest the project ships for it."""

    def __init__(self, path: Path | str, expected: str, actual: str, fix: str) -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        super().__init__(f"checksum mismatch for {self.path}: expected sha256 {expected}, got {actual}. {fix}")


class DataFormatError(ValueError):
    """A data file passed its checksum but its content is not what the reader expects."""
