"""Datasets of the run pipeline: LightningDataModules configured by ``conf/dataset/``.

Each datamodule finds its data in the prepared folder ``<data_dir>/<name>``, else the
read-only source folder, else (``download: true``) upstream; every file is checked against
the sha256 digests shipped in :mod:`benchmarks.data.checksums`.
"""

from benchmarks.data.base import ImageDataModule, Splits
from benchmarks.data.cifar10_jpeg import CIFAR10JPEGDataModule
from benchmarks.data.errors import DataChecksumError, DataFormatError, DataNotFoundError
from benchmarks.data.imagefolder import ImageFolderDataModule
from benchmarks.data.mnist import FashionMNISTDataModule, MNISTDataModule
from benchmarks.data.sources import SOURCES, DataSource, SourceFile, register_source

__all__ = [
    "CIFAR10JPEGDataModule",
    "DataChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "DataSource",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SOURCES",
    "SourceFile",
    "Splits",
    "register_source",
]
