"""Where a dataset's files come from, and how they become a verified local copy.

A :class:`DataSource` lists the files of one dataset with the sha256 digests published in
the project's shared data folder (``SHA256SUMS``); these digests ship with the project in
:data:`SOURCES` and are never read from the source folder at run time. Datasets look
their files up by name, so a new dataset (or a test fixture) is one
:func:`register_source` call; the entries for the real datasets are never weakened.

:func:`resolve` tries, in order:

1. the prepared folder ``<data_dir>/<name>``: used when its marker file (written only after
   a verified prepare) is present and every file still matches the digests it records;
2. the read-only source folder ``<source_dir>/<subdir>``: every file's sha256 is checked
   against the table, then the file is copied into the prepared folder;
3. an upstream download (only with ``download=True``) through torchvision's download
   utilities, checked against the upstream md5 where one is published.

If none works, one :class:`DataNotFoundError` names the three places and the fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.atomic import written_atomically
from benchmarks.data.errors import DataChecksumError, DataNotFoundError

MARKER_NAME = "PREPARED.json"
RAW_DIR_NAME = "raw"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset as the project knows it.

    ``sha256`` is the digest of the copy in the shared source folder. ``urls`` are upstream
    mirrors tried in order; ``md5`` is the upstream file's published md5 (upstream bytes
    may differ from the shared copy, e.g. when the shared copy was re-gzipped), or None
    when upstream publishes none.
    """

    filename: str
    sha256: str
    urls: tuple[str, ...] = ()
    md5: str | None = None


@dataclass(frozen=True)
class DataSource:
    """The files of one dataset: ``name`` is the dataset name (and the prepared folder's
    name), ``subdir`` the folder under the source root holding the files."""

    name: str
    subdir: str
    files: tuple[SourceFile, ...]
    notes: str = ""
    expected_samples: dict[str, int] = field(default_factory=dict)
    """Samples per split (e.g. ``{"train": 60000, "test": 10000}``) that a reader checks;
    empty: no check. For a download without a published digest this is the content check."""


@dataclass
class PreparedData:
    """A verified local copy: where it lives and the digests of its files."""

    folder: Path
    origin: str  # "prepared", "source" or "download"
    file_digests: dict[str, str] = field(default_factory=dict)
    derived_digests: dict[str, str] = field(default_factory=dict)

    @property
    def raw_dir(self) -> Path:
        return self.folder / RAW_DIR_NAME

    @property
    def checksum(self) -> str:
        """One sha256 over the source files: the digest of their ``sha256  name`` listing."""
        return manifest_digest(self.file_digests)


SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource, *, replace: bool = False) -> DataSource:
    """Add ``source`` to :data:`SOURCES`; an existing name needs ``replace=True``."""
    if source.name in SOURCES and not replace and SOURCES[source.name] != source:
        raise ValueError(f"data source {source.name!r} is already registered; pass replace=True")
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> DataSource:
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES)) or "none"
        raise KeyError(
            f"no data source named {name!r} (known: {known}); register one with benchmarks.data.sources.register_source"
        ) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(digests: dict[str, str]) -> str:
    """sha256 of the sorted ``<sha256>  <name>`` lines (the SHA256SUMS format)."""
    lines = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


BuildCache = Callable[[Path, Path], Iterable[Path]]
"""``build(raw_dir, folder) -> derived files``: turns verified raw files into a cache."""


def resolve(
    source: DataSource,
    data_dir: str | Path,
    source_dir: str | Path | None,
    download: bool,
    build: BuildCache | None = None,
) -> PreparedData:
    """Return a verified prepared copy of ``source`` under ``<data_dir>/<source.name>``."""
    folder = Path(data_dir).expanduser() / source.name
    prepared = read_prepared(folder, source)
    if prepared is not None:
        return prepared
    attempts = [f"1. prepared folder {folder}: {_why_not_prepared(folder)}"]

    source_folder = Path(source_dir).expanduser() / source.subdir if source_dir else None
    if source_folder is None:
        attempts.append(f"2. source folder: not set (source_dir is null; expects <source_dir>/{source.subdir})")
    else:
        missing = [f.filename for f in source.files if not (source_folder / f.filename).is_file()]
        if not missing:
            digests = _copy_verified(source, source_folder, folder)
            return _finish(folder, "source", digests, build)
        attempts.append(f"2. source folder {source_folder}: missing {', '.join(missing)}")

    if not download:
        attempts.append("3. upstream download: disabled (download: false)")
    elif not all(f.urls for f in source.files):
        attempts.append("3. upstream download: no upstream URL known for this dataset")
    else:
        try:
            digests = _download_verified(source, folder)
        except Exception as error:  # noqa: BLE001  (any failure is reported in the message below)
            attempts.append(f"3. upstream download: failed ({type(error).__name__}: {error})")
        else:
            return _finish(folder, "download", digests, build)

    files = ", ".join(f.filename for f in source.files)
    raise DataNotFoundError(
        f"dataset {source.name!r} not found. Tried:\n  "
        + "\n  ".join(attempts)
        + f"\nProvide it in one of these ways: set paths.data_dir to a folder holding a prepared "
        f"copy ({source.name}/{MARKER_NAME}); set paths.source_data_dir to a folder holding "
        f"{source.subdir}/ with {files}; or, when online, set dataset.download=true."
    )


def read_prepared(folder: Path, source: DataSource) -> PreparedData | None:
    """The prepared copy in ``folder`` if its marker is present and every file matches it."""
    marker_path = folder / MARKER_NAME
    if not marker_path.is_file():
        return None
    marker = json.loads(marker_path.read_text())
    recorded: dict[str, str] = marker.get("files", {})
    if sorted(recorded) != sorted(f.filename for f in source.files):
        return None  # prepared for another file list: prepare again
    fix = f"The prepared copy is corrupted: delete {folder} so that it is prepared again."
    for name, expected in {**recorded, **marker.get("derived", {})}.items():
        path = folder / (RAW_DIR_NAME if name in recorded else "") / name
        if not path.is_file():
            return None
        actual = sha256_file(path)
        if actual != expected:
            raise DataChecksumError(path, expected, actual, fix)
    return PreparedData(folder, "prepared", dict(recorded), dict(marker.get("derived", {})))


def _why_not_prepared(folder: Path) -> str:
    if not folder.exists():
        return "absent"
    return f"no complete prepared copy (no {MARKER_NAME} matching the file list)"


def _copy_verified(source: DataSource, source_folder: Path, folder: Path) -> dict[str, str]:
    raw_dir = folder / RAW_DIR_NAME
    raw_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for spec in source.files:
        origin = source_folder / spec.filename
        actual = sha256_file(origin)
        if actual != spec.sha256:
            raise DataChecksumError(
                origin,
                spec.sha256,
                actual,
                f"The source copy is corrupted: re-copy {spec.filename} into {source_folder} "
                "from a good copy (or delete it and use another source).",
            )
        with written_atomically(raw_dir / spec.filename) as partial:
            shutil.copyfile(origin, partial)
            copied = sha256_file(partial)
            if copied != spec.sha256:
                raise DataChecksumError(
                    partial, spec.sha256, copied, f"Copying {origin} failed: check free disk space and retry."
                )
        digests[spec.filename] = copied
    return digests


def _download_verified(source: DataSource, folder: Path) -> dict[str, str]:
    from torchvision.datasets.utils import download_url  # heavy import, only when online

    raw_dir = folder / RAW_DIR_NAME
    raw_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for spec in source.files:
        errors = []
        for url in spec.urls:
            try:
                download_url(url, str(raw_dir), filename=spec.filename, md5=spec.md5)
                break
            except Exception as error:  # noqa: BLE001  (try the next mirror; all errors are reported)
                errors.append(f"{url}: {type(error).__name__}: {error}")
        else:
            raise RuntimeError("; ".join(errors))
        path = raw_dir / spec.filename
        if spec.md5 is not None and md5_file(path) != spec.md5:
            path.unlink()
            raise RuntimeError(f"{spec.filename}: md5 differs from the upstream {spec.md5}")
        digests[spec.filename] = sha256_file(path)
    return digests


def _finish(folder: Path, origin: str, digests: dict[str, str], build: BuildCache | None) -> PreparedData:
    derived: dict[str, str] = {}
    if build is not None:
        for path in build(folder / RAW_DIR_NAME, folder):
            derived[str(Path(path).relative_to(folder))] = sha256_file(Path(path))
    # No timestamp: the folder is a DVC output, and the same data must hash the same on every clone.
    marker = {
        "origin": origin,
        "files": digests,
        "derived": derived,
        "checksum": manifest_digest(digests),
    }
    with written_atomically(folder / MARKER_NAME) as partial:
        partial.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return PreparedData(folder, origin, digests, derived)
