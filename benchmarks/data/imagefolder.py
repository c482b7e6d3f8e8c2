"""User data in ImageNet-style folders, read with torchvision's ``ImageFolder``.

Layout under ``root``: ``train/<class>/*``, ``val/<class>/*`` and optionally
``test/<class>/*`` (without it the test split is the val split). Class names are the
sorted folder names of ``train/``; ``val`` and ``test`` must use the same classes.

Training transform (``augment: true``): ``RandomResizedCrop(crop_size)`` + horizontal
flip; evaluation: ``Resize(resize_size)`` + ``CenterCrop(crop_size)``; both normalise with
``mean``/``std`` (default ImageNet). The folder ships its own validation split, so
``val_size`` is not used. The data stay where they are: ``root`` is read in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from benchmarks.data.base import ImageDataModule, Splits
from benchmarks.data.errors import DataFormatError, DataNotFoundError
from benchmarks.data.sources import PreparedData, sha256_file


class ImageFolderDataModule(ImageDataModule):
    """An image-classification dataset in ``root/{train,val[,test]}/<class>/*`` folders.

    Args (beyond :class:`ImageDataModule`):
        root: the folder holding ``train/`` and ``val/`` (mandatory).
        resize_size: shorter side before the centre crop for evaluation.
        crop_size: side of the square input.
        augment: random resized crop + flip for training (else the evaluation transform).
        hash_contents: the ``checksum`` covers every file's bytes (reads every file once
            per prepare); false: only relative paths and sizes, for very large folders.
    """

    default_name = "imagefolder"
    default_mean = IMAGENET_DEFAULT_MEAN
    default_std = IMAGENET_DEFAULT_STD

    def __init__(
        self,
        *args,
        root: str | Path,
        resize_size: int = 256,
        crop_size: int = 224,
        augment: bool = True,
        hash_contents: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if root is None or str(root) in ("", "???"):
            raise ValueError("dataset.root is not set: point it at a folder holding train/<class>/ and val/<class>/")
        if crop_size < 1 or resize_size < crop_size:
            raise ValueError(
                f"dataset.crop_size={crop_size} must be >= 1 and dataset.resize_size={resize_size} >= crop_size"
            )
        self.root = Path(root).expanduser()
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.augment = bool(augment)
        self.hash_contents = bool(hash_contents)

    def _split_dirs(self) -> dict[str, Path]:
        dirs = {split: self.root / split for split in ("train", "val", "test")}
        missing = [split for split in ("train", "val") if not dirs[split].is_dir()]
        if missing:
            raise DataNotFoundError(
                f"image folder {self.root} lacks {', '.join(missing)}/: expected "
                f"{self.root}/train/<class>/* and {self.root}/val/<class>/* (test/ optional); "
                "set dataset.root to such a folder"
            )
        if not dirs["test"].is_dir():
            dirs["test"] = dirs["val"]
        return dirs

    def prepare_data(self) -> None:
        """Read in place: check the layout and compute the checksum over the files."""
        dirs = self._split_dirs()
        digests: dict[str, str] = {}
        for split_dir in sorted(set(dirs.values())):
            for path in sorted(p for p in split_dir.rglob("*") if p.is_file()):
                key = path.relative_to(self.root).as_posix()
                if self.hash_contents:
                    digests[key] = sha256_file(path)
                else:
                    digests[key] = hashlib.sha256(str(path.stat().st_size).encode()).hexdigest()
        self.prepared = PreparedData(self.root, "in place", digests)
        self.checksum = self.prepared.checksum

    def _transform(self, train: bool):
        from torchvision import transforms  # noqa: PLC0415  (heavy, only for this dataset)

        if train and self.augment:
            head: Sequence = [transforms.RandomResizedCrop(self.crop_size), transforms.RandomHorizontalFlip()]
        else:
            head = [transforms.Resize(self.resize_size), transforms.CenterCrop(self.crop_size)]
        return transforms.Compose([*head, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def _load_splits(self) -> Splits:
        from torchvision.datasets import ImageFolder  # noqa: PLC0415

        dirs = self._split_dirs()
        train = ImageFolder(str(dirs["train"]), transform=self._transform(train=True))
        val = ImageFolder(str(dirs["val"]), transform=self._transform(train=False))
        test = ImageFolder(str(dirs["test"]), transform=self._transform(train=False))
        for split, dataset in (("val", val), ("test", test)):
            if dataset.classes != train.classes:
                raise DataFormatError(
                    f"{dirs[split]} has classes {dataset.classes}, train/ has {train.classes}: "
                    "use the same class folders in every split"
                )
        channels = len(self.mean)
        return Splits(
            train=train,
            train_eval=val,
            val=val,
            test=test,
            classes=tuple(train.classes),
            input_shape=(channels, self.crop_size, self.crop_size),
        )
