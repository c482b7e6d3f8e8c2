"""What the CIFAR studies sized for a 2-core CPU share: their cut of CIFAR-10 JPEG and their command line.

A study trains on a subset of the training split, chooses on a subset of val and reports on a
subset of test; these arguments and the data module built from them are the same in every such
study, and so is the command line a study's JSON records (its numeric options, so a rerun with
the same command resumes it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.data import CIFAR10JPEGDataModule

ROOT = Path(__file__).resolve().parents[2]
#: arguments that say where things are, not what was measured: never part of a study's settings
PATH_ARGUMENTS = ("source_dir", "data_dir", "out")


def add_subset_arguments(parser: argparse.ArgumentParser, train: int = 3000, val: int = 1000, test: int = 2000,
                         batch_size: int = 64) -> None:
    parser.add_argument("--train-subset", type=int, default=train, help="training images every training sees")
    parser.add_argument("--val-subset", type=int, default=val, help="val images choices are made on")
    parser.add_argument("--test-subset", type=int, default=test, help="test images top-1 is reported on")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--source-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data", help="prepared datasets (paths.data_dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")


def subset_datamodule(args: argparse.Namespace) -> CIFAR10JPEGDataModule:
    """CIFAR-10 JPEG cut to the study's subsets (the 5,000-image val split of the run pipeline), prepared."""
    dm = CIFAR10JPEGDataModule(data_dir=args.data_dir, source_dir=args.source_dir, batch_size=args.batch_size,
                               eval_batch_size=256, seed=42, val_size=5000, train_subset=args.train_subset,
                               val_subset=args.val_subset, test_subset=args.test_subset)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def command(study: str, args: argparse.Namespace) -> str:
    """The command line that reproduces ``args``' numeric options of ``python -m benchmarks.studies.<study>``."""
    options = " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in vars(args).items() if isinstance(v, (int, float)))
    return f"python -m benchmarks.studies.{study} {options}"
