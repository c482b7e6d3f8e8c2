"""The common base of CompressBench's datamodules.

One class holds what every dataset shares: the config keys and their validation, the
three-place data resolution (:mod:`benchmarks.data.sources`), the seeded validation split
carved out of the training set, the seeded subsets for tiny runs and the deterministic
dataloaders. A dataset subclass says how to build a cache from its verified raw files
(optional) and how to read its splits (:meth:`ImageDataModule._load_splits`).
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from benchmarks.data import checksums as _checksums  # noqa: F401  (registers the known sources)
from benchmarks.data.errors import DataFormatError
from benchmarks.data.sources import PreparedData, get_source, resolve

# Offsets that give each split's subset its own stream of the one configured seed.
_SPLIT_SALT = {"val_split": 0, "train": 1, "val": 2, "test": 3}


@dataclass
class Splits:
    """What a subclass reads: ``train`` (training transforms) and ``train_eval`` (the same
    samples with evaluation transforms, for a validation split carved out of it), ``val``
    when the dataset ships its own validation split (else None), and ``test``."""

    train: Dataset
    train_eval: Dataset
    val: Dataset | None
    test: Dataset
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]


class ImageDataModule(L.LightningDataModule):
    """Base of the image-classification datamodules.

    Args:
        data_dir: prepared local root; the dataset lives in ``<data_dir>/<name>``.
        source_dir: read-only source root (``<source_dir>/<subdir>``), or None.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (None: ``batch_size``).
        num_workers: dataloader worker processes (0: load in the main process).
        val_size: samples held out from the training set for validation (seeded split).
        seed: seeds the validation split, the subsets and the training shuffle.
        train_subset, val_subset, test_subset: keep only the first N samples of a seeded
            permutation of that split (None: all), for tiny runs.
        download: allow an upstream download when neither local place has the data.
        name: dataset name (the prepared folder's name and the data source's key).
        mean, std: per-channel normalisation (None: the dataset's default).
    """

    default_name: ClassVar[str] = ""
    default_mean: ClassVar[tuple[float, ...]] = ()
    default_std: ClassVar[tuple[float, ...]] = ()

    def __init__(
        self,
        data_dir: str | Path,
        source_dir: str | Path | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        download: bool = False,
        name: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _require_int("batch_size", batch_size, minimum=1)
        if eval_batch_size is not None:
            _require_int("eval_batch_size", eval_batch_size, minimum=1)
        _require_int("num_workers", num_workers, minimum=0)
        _require_int("val_size", val_size, minimum=0)
        _require_int("seed", seed, minimum=None)
        for key, value in (("train_subset", train_subset), ("val_subset", val_subset), ("test_subset", test_subset)):
            if value is not None:
                _require_int(key, value, minimum=1)
        if data_dir is None or str(data_dir) == "":
            raise ValueError("dataset.data_dir is not set: set paths.data_dir to a writable folder for prepared data")
        self.name: str = name or self.default_name
        if not self.name:
            raise ValueError("dataset.name is not set: name the dataset in its yaml (name: ...)")
        self.mean = tuple(float(v) for v in (mean if mean is not None else self.default_mean))
        self.std = tuple(float(v) for v in (std if std is not None else self.default_std))
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(
                f"dataset.mean {self.mean} and dataset.std {self.std} need one value per channel "
                "and positive std values"
            )
        self.data_dir = Path(data_dir).expanduser()
        self.source_dir = Path(source_dir).expanduser() if source_dir else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.test_subset = test_subset
        self.download = download

        self.prepared: PreparedData | None = None
        self.classes: tuple[str, ...] = ()
        self.num_classes = 0
        self.input_shape: tuple[int, int, int] = (0, 0, 0)
        self.checksum = ""
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None
        #: samples in each split before the subsets (a run's data fraction is measured against them)
        self.available_sizes: dict[str, int] = {}

    # ------------------------------------------------------------------ where the data is
    @property
    def folder(self) -> Path:
        """The prepared local folder ``<data_dir>/<name>``."""
        return self.data_dir / self.name

    def prepare_data(self) -> None:
        """Find, verify and copy (or download) the dataset once; builds its cache."""
        self.prepared = resolve(
            get_source(self.name), self.data_dir, self.source_dir, self.download, build=self._build_cache
        )
        self.checksum = self.prepared.checksum

    def prepared_data(self) -> PreparedData:
        """The verified local copy; :meth:`prepare_data` finds it first where it has not run (one process)."""
        if self.prepared is None:
            self.prepare_data()
        if self.prepared is None:
            raise RuntimeError(f"{type(self).__name__}.prepare_data() left .prepared unset")
        return self.prepared

    def _build_cache(self, raw_dir: Path, folder: Path) -> list[Path]:
        """Turn the verified raw files into derived files in ``folder`` (default: none)."""
        return []

    # ------------------------------------------------------------------ splits
    def _load_splits(self) -> Splits:
        raise NotImplementedError(f"{type(self).__name__} must implement _load_splits()")

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        self.prepared_data()
        splits = self._load_splits()
        self.classes = tuple(splits.classes)
        self.num_classes = len(self.classes)
        self.input_shape = splits.input_shape

        if splits.val is None:
            n_train = _size(splits.train)
            if self.val_size >= n_train:
                raise ValueError(
                    f"dataset.val_size={self.val_size} must be smaller than the training set "
                    f"({n_train} samples): lower val_size"
                )
            order = torch.randperm(n_train, generator=self._generator("val_split")).tolist()
            train: Dataset = Subset(splits.train, order[self.val_size :])
            val: Dataset = Subset(splits.train_eval, order[: self.val_size])
        else:
            train, val = splits.train, splits.val
        self.data_train = self._subset(train, self.train_subset, "train")
        self.data_val = self._subset(val, self.val_subset, "val")
        self.data_test = self._subset(splits.test, self.test_subset, "test")
        self.available_sizes = {"train": _size(train), "val": _size(val), "test": _size(splits.test)}

    def _generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) * 16 + _SPLIT_SALT[purpose])

    def _subset(self, dataset: Dataset, size: int | None, split: str) -> Dataset:
        if size is None or size >= _size(dataset):
            return dataset
        order = torch.randperm(_size(dataset), generator=self._generator(split))[:size].tolist()
        return Subset(dataset, order)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(int(self.seed)) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def image_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """(channels, height, width) of an NCHW image batch."""
    _, channels, height, width = images.shape
    return int(channels), int(height), int(width)


def check_sample_count(name: str, split: str, count: int, where: Path) -> None:
    """Raise :class:`DataFormatError` when the source registry expects another count."""
    expected = get_source(name).expected_samples.get(split)
    if expected is not None and count != expected:
        raise DataFormatError(
            f"{where}: {name} {split} split has {count} samples, expected {expected}; "
            f"delete {where} so that it is prepared again from a good copy"
        )


def _size(dataset: Dataset) -> int:
    return len(cast(Sized, dataset))


def _require_int(key: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"dataset.{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"dataset.{key} must be >= {minimum}, got {value}")
