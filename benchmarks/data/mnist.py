"""MNIST and Fashion-MNIST from their idx ``.gz`` files, parsed with numpy.

idx format (LeCun et al., "The MNIST database"): a big-endian header, magic 0x00000803 for
an image file (then count, rows, cols) and 0x00000801 for a label file (then count),
followed by unsigned bytes. Every header is checked against the file's length, and the
image and label counts against each other.

Normalisation: MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530 (train-set pixel mean
and std over 255). No augmentation.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from benchmarks.data.base import ImageDataModule, Splits, check_sample_count, image_shape
from benchmarks.data.errors import DataFormatError
from benchmarks.data.tensors import InMemoryImageDataset, normalise_uint8

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 images ``(N, rows, cols)`` from an idx3 ``.gz`` file."""
    data = _read_gz(path)
    _check_magic(path, data, IDX_IMAGES_MAGIC, "image", header_bytes=16)
    header = np.frombuffer(data, dtype=">u4", count=4)
    count, rows, cols = (int(v) for v in header[1:])
    if len(data) != 16 + count * rows * cols:
        raise DataFormatError(
            f"{path}: header says {count} images of {rows}x{cols} but the file holds {len(data) - 16} bytes of pixels"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols).copy()


def read_idx_labels(path: Path) -> np.ndarray:
    """uint8 labels ``(N,)`` from an idx1 ``.gz`` file."""
    data = _read_gz(path)
    _check_magic(path, data, IDX_LABELS_MAGIC, "label", header_bytes=8)
    header = np.frombuffer(data, dtype=">u4", count=2)
    count = int(header[1])
    if len(data) != 8 + count:
        raise DataFormatError(f"{path}: header says {count} labels but the file holds {len(data) - 8}")
    return np.frombuffer(data, dtype=np.uint8, offset=8).copy()


def _check_magic(path: Path, data: bytes, magic: int, kind: str, header_bytes: int) -> None:
    found = int(np.frombuffer(data, dtype=">u4", count=1)[0]) if len(data) >= 4 else None
    if found != magic:
        shown = hex(found) if found is not None else "missing"
        raise DataFormatError(f"{path}: not an idx {kind} file (magic {shown}, expected {hex(magic)})")
    if len(data) < header_bytes:
        raise DataFormatError(f"{path}: idx {kind} file shorter than its {header_bytes}-byte header")


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise DataFormatError(f"{path}: not a readable gzip file ({error})") from error


class IdxDataModule(ImageDataModule):
    """A grey-scale dataset stored as the four MNIST-style idx files."""

    class_names: tuple[str, ...] = ()

    def _read_split(self, prefix: str) -> InMemoryImageDataset:
        raw = self.prepared_data().raw_dir
        images = read_idx_images(raw / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx_labels(raw / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DataFormatError(f"{raw}: {prefix} has {len(images)} images but {len(labels)} labels")
        check_sample_count(self.name, "train" if prefix == "train" else "test", len(labels), raw)
        if labels.size and int(labels.max()) >= len(self.class_names):
            raise DataFormatError(f"{raw}: {prefix} label {int(labels.max())} outside 0..{len(self.class_names) - 1}")
        normalised = normalise_uint8(images[:, None, :, :], self.mean, self.std)
        return InMemoryImageDataset(normalised, torch.from_numpy(labels.astype(np.int64)))

    def _load_splits(self) -> Splits:
        train = self._read_split("train")
        test = self._read_split("t10k")
        return Splits(
            train=train,
            train_eval=train,
            val=None,
            test=test,
            classes=self.class_names,
            input_shape=image_shape(train.images),
        )


class MNISTDataModule(IdxDataModule):
    """MNIST handwritten digits: 60,000 train (minus ``val_size``) / 10,000 test, 1x28x28."""

    default_name = "mnist"
    default_mean = (0.1307,)
    default_std = (0.3081,)
    class_names = tuple(str(digit) for digit in range(10))


class FashionMNISTDataModule(IdxDataModule):
    """Fashion-MNIST (Zalando): 60,000 train (minus ``val_size``) / 10,000 test, 1x28x28."""

    default_name = "fashion_mnist"
    default_mean = (0.2860,)
    default_std = (0.3530,)
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
