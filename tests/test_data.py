"""Datasets: data resolution order, checksum verification, idx/JPEG parsing, splits, configs.

Tiny real files (idx .gz, JPEG tarballs, PNG folders) are built in ``tmp_path`` and
registered as extra data sources; the entries for the real datasets are left untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from benchmarks.atomic import written_atomically
from benchmarks.data import (
    SOURCES,
    CIFAR10JPEGDataModule,
    DataChecksumError,
    DataFormatError,
    DataNotFoundError,
    DataSource,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SourceFile,
)
from benchmarks.data.mnist import read_idx_images, read_idx_labels
from benchmarks.data.sources import MARKER_NAME, manifest_digest

SHARED = Path("/work/shared/data")
CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x803 if array.ndim == 3 else 0x801
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register(monkeypatch, name: str, folder: Path, subdir: str, files: tuple[str, ...]) -> DataSource:
    source = DataSource(name, subdir, tuple(SourceFile(f, _sha256(folder / f)) for f in files))
    monkeypatch.setitem(SOURCES, name, source)
    return source


@pytest.fixture
def tiny_idx(tmp_path, monkeypatch):
    """A real-format idx dataset (30 train, 10 test, 4x4) in ``<tmp>/source/tiny-idx``."""
    folder = tmp_path / "source" / "tiny-idx"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (30, 4, 4)),
        "train-labels-idx1-ubyte.gz": np.arange(30) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 4, 4)),
        "t10k-labels-idx1-ubyte.gz": np.arange(10) % 10,
    }
    for filename, array in arrays.items():
        _write_idx(folder / filename, array)
    _register(monkeypatch, "tiny_idx", folder, "tiny-idx", IDX_FILES)
    return {"source_dir": tmp_path / "source", "data_dir": tmp_path / "prepared", "folder": folder, "arrays": arrays}


def _tiny_mnist(tiny, **kwargs) -> MNISTDataModule:
    args = dict(data_dir=tiny["data_dir"], source_dir=tiny["source_dir"], val_size=5, batch_size=4, name="tiny_idx")
    return MNISTDataModule(**{**args, **kwargs})


def _ready(datamodule):
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


# ---------------------------------------------------------------- resolution order
def test_source_is_verified_and_copied_when_nothing_is_prepared(tiny_idx):
    dm = _ready(_tiny_mnist(tiny_idx))
    assert dm.prepared.origin == "source"
    local = tiny_idx["data_dir"] / "tiny_idx"
    for filename in IDX_FILES:
        assert (local / "raw" / filename).read_bytes() == (tiny_idx["folder"] / filename).read_bytes()
    marker = json.loads((local / MARKER_NAME).read_text())
    expected = {f: _sha256(tiny_idx["folder"] / f) for f in IDX_FILES}
    assert marker["files"] == expected
    assert dm.checksum == marker["checksum"] == manifest_digest(expected)
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (25, 5, 10)
    assert dm.input_shape == (1, 4, 4) and dm.num_classes == 10
    image, label = dm.data_test[3]
    raw = torch.tensor(tiny_idx["arrays"]["t10k-images-idx3-ubyte.gz"][3], dtype=torch.float32)
    torch.testing.assert_close(image[0], (raw / 255 - 0.1307) / 0.3081)
    assert int(label) == 3


def test_prepared_folder_is_preferred_over_the_source(tiny_idx):
    first = _ready(_tiny_mnist(tiny_idx))
    # a corrupted source proves the source is not read when a prepared copy exists
    (tiny_idx["folder"] / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    second = _ready(_tiny_mnist(tiny_idx))
    assert second.prepared.origin == "prepared"
    assert second.checksum == first.checksum
    shutil.rmtree(tiny_idx["source_dir"])
    third = _ready(_tiny_mnist(tiny_idx, source_dir=None))
    assert third.prepared.origin == "prepared"


def test_nothing_found_names_the_three_places(tiny_idx):
    shutil.rmtree(tiny_idx["source_dir"])
    with pytest.raises(DataNotFoundError) as error:
        _tiny_mnist(tiny_idx).prepare_data()
    message = str(error.value)
    assert str(tiny_idx["data_dir"] / "tiny_idx") in message
    assert str(tiny_idx["source_dir"] / "tiny-idx") in message
    assert "download: false" in message
    for fix in ("paths.data_dir", "paths.source_data_dir", "dataset.download=true"):
        assert fix in message
    with pytest.raises(DataNotFoundError, match="source_dir is null"):
        _tiny_mnist(tiny_idx, source_dir=None).prepare_data()


def test_corrupted_source_copy_raises_checksum_error(tiny_idx):
    victim = tiny_idx["folder"] / "t10k-images-idx3-ubyte.gz"
    expected = _sha256(victim)
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DataChecksumError) as error:
        _tiny_mnist(tiny_idx).prepare_data()
    assert error.value.path == victim
    message = str(error.value)
    assert str(victim) in message and expected in message and _sha256(victim) in message
    assert "re-copy" in message
    assert not (tiny_idx["data_dir"] / "tiny_idx" / MARKER_NAME).exists()


def test_corrupted_prepared_copy_raises_checksum_error(tiny_idx):
    _tiny_mnist(tiny_idx).prepare_data()
    local = tiny_idx["data_dir"] / "tiny_idx" / "raw" / "train-images-idx3-ubyte.gz"
    local.write_bytes(local.read_bytes()[:-1])
    with pytest.raises(DataChecksumError, match="train-images-idx3-ubyte.gz.*delete"):
        _tiny_mnist(tiny_idx).prepare_data()


def test_concurrent_writers_of_one_file_never_share_a_partial_copy(tmp_path):
    """Workers of one sweep write the same baseline cache file at once: each writes its own
    partial copy, the target ends whole (one writer's bytes), and no partial file is left."""
    target = tmp_path / "baseline.cbm"
    with written_atomically(target) as first, written_atomically(target) as second:
        assert first != second
        first.write_bytes(b"a" * 1000)
        second.write_bytes(b"b" * 10)
    assert target.read_bytes() == b"a" * 1000  # the outer writer replaced last
    with pytest.raises(ValueError), written_atomically(target) as failed:
        failed.write_bytes(b"half")
        raise ValueError("the writer failed")
    assert target.read_bytes() == b"a" * 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["baseline.cbm"]


def test_idx_reader_checks_magic_and_counts(tmp_path):
    labels = tmp_path / "labels.gz"
    _write_idx(labels, np.arange(7))
    assert read_idx_labels(labels).tolist() == list(range(7))
    with pytest.raises(DataFormatError, match="0x801.*expected 0x803"):
        read_idx_images(labels)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as handle:
        handle.write(np.array([0x803, 5, 2, 2], dtype=">u4").tobytes() + bytes(4 * 4))
    with pytest.raises(DataFormatError, match="5 images"):
        read_idx_images(short)


# ---------------------------------------------------------------- config and splits
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("eval_batch_size", 0),
        ("train_subset", 0),
        ("test_subset", -1),
        ("val_size", -1),
        ("num_workers", -1),
    ],
)
def test_bad_config_names_the_key(tiny_idx, key, value):
    with pytest.raises(ValueError, match=f"dataset.{key}"):
        _tiny_mnist(tiny_idx, **{key: value})


def test_val_size_must_be_smaller_than_train(tiny_idx):
    with pytest.raises(ValueError, match="dataset.val_size=30"):
        _ready(_tiny_mnist(tiny_idx, val_size=30))


def test_split_subsets_and_shuffle_are_seeded(tiny_idx):
    def labels(loader):
        return torch.cat([y for _, y in loader]).tolist()

    a = _ready(_tiny_mnist(tiny_idx, seed=7, train_subset=8, val_subset=3, test_subset=4))
    b = _ready(_tiny_mnist(tiny_idx, seed=7, train_subset=8, val_subset=3, test_subset=4))
    c = _ready(_tiny_mnist(tiny_idx, seed=8))
    assert (len(a.data_train), len(a.data_val), len(a.data_test)) == (8, 3, 4)
    assert labels(a.train_dataloader()) == labels(b.train_dataloader())
    assert labels(a.val_dataloader()) == labels(b.val_dataloader())
    assert labels(a.test_dataloader()) == labels(b.test_dataloader())
    assert c.data_val.indices != _ready(_tiny_mnist(tiny_idx, seed=7)).data_val.indices
    # train shuffles (different order per epoch), evaluation keeps its order
    loader = a.train_dataloader()
    assert sorted(labels(loader)) == sorted(labels(loader))
    assert labels(a.test_dataloader()) == [int(a.data_test[i][1]) for i in range(4)]


# ---------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST not present")
def test_real_mnist_loads_with_a_reproducible_split(tmp_path):
    def make():
        return _ready(MNISTDataModule(data_dir=tmp_path, source_dir=SHARED, val_size=5000, seed=1))

    dm = make()
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (55000, 5000, 10000)
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10 and len(dm.classes) == 10
    assert dm.checksum == manifest_digest({f.filename: f.sha256 for f in SOURCES["mnist"].files})
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (128, 1, 28, 28)  # eval_batch_size defaults to batch_size
    assert labels[:3].tolist() == [7, 2, 1]  # the first MNIST test digits
    again = make()
    assert again.prepared.origin == "prepared"
    assert again.data_val.indices == dm.data_val.indices
    assert again.data_train.indices == dm.data_train.indices
    # a folder prepared anew is byte for byte the same (it is a DVC output: same data, same hash)
    other = _ready(MNISTDataModule(data_dir=tmp_path / "other", source_dir=SHARED, val_size=5000, seed=1))
    for name in ("PREPARED.json", *(f"raw/{f.filename}" for f in SOURCES["mnist"].files)):
        assert (other.folder / name).read_bytes() == (dm.folder / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg").is_dir(), reason="shared CIFAR-10 JPEG not present")
def test_real_cifar10_jpeg_prepares(tmp_path):
    dm = _ready(CIFAR10JPEGDataModule(data_dir=tmp_path, source_dir=SHARED, val_size=5000))
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (45000, 5000, 10000)
    assert dm.classes[0] == "airplane" and dm.classes[-1] == "truck" and dm.input_shape == (3, 32, 32)
    # the first test images keep CIFAR-10's order within their class (test image 3 is airplane)
    assert int(dm.data_test[0][1]) == 0


# ---------------------------------------------------------------- CIFAR-10 JPEG, small path
def _color(split: str, cls: int, index: int) -> tuple[int, int, int]:
    return (40 * cls + 20, 10 * index + 30, 200 if split == "train" else 100)


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A tar.gz of ``top/{train,test}/{class}/NNNN.jpg`` flat-coloured 32x32 JPEGs."""
    folder = tmp_path / "source" / "tiny-cifar"
    folder.mkdir(parents=True)
    tarball = folder / "tiny.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        # classes and files written out of order: the prepared arrays must be sorted
        for split, count in (("test", 2), ("train", 3)):
            for cls, name in ((1, "cat"), (0, "bird")):
                for index in reversed(range(count)):
                    buffer = io.BytesIO()
                    Image.new("RGB", (32, 32), _color(split, cls, index)).save(buffer, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"top/{split}/{name}/{index:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
    _register(monkeypatch, "tiny_cifar", folder, "tiny-cifar", ("tiny.tar.gz",))
    return {"source_dir": tmp_path / "source", "data_dir": tmp_path / "prepared"}


def test_cifar10_jpeg_decodes_in_sorted_order(tiny_cifar):
    dm = _ready(
        CIFAR10JPEGDataModule(name="tiny_cifar", val_size=2, augment=False, mean=(0, 0, 0), std=(1, 1, 1), **tiny_cifar)
    )
    assert dm.classes == ("bird", "cat") and dm.input_shape == (3, 32, 32)
    assert (tiny_cifar["data_dir"] / "tiny_cifar" / "arrays.npz").is_file()
    assert [int(dm.data_test[i][1]) for i in range(4)] == [0, 0, 1, 1]
    for position, (cls, index) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        pixel = dm.data_test[position][0][:, 16, 16] * 255
        torch.testing.assert_close(pixel, torch.tensor(_color("test", cls, index), dtype=torch.float32), atol=3, rtol=0)
    again = _ready(CIFAR10JPEGDataModule(name="tiny_cifar", val_size=2, **tiny_cifar))
    assert again.prepared.origin == "prepared" and again.checksum == dm.checksum


def test_cifar10_jpeg_augment_pads_with_black(tiny_cifar):
    torch.manual_seed(0)
    dm = _ready(CIFAR10JPEGDataModule(name="tiny_cifar", val_size=2, augment=True, **tiny_cifar))
    black = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    shifted = 0
    for _ in range(20):
        image, _ = dm.data_train[0]
        assert image.shape == (3, 32, 32)
        corners = image[:, [0, 0, -1, -1], [0, -1, 0, -1]].T
        shifted += int(any(torch.allclose(c, black) for c in corners))
    assert shifted > 0  # some crops reached into the padding
    val_image, _ = dm.data_val[0]
    assert not torch.allclose(val_image[:, 0, 0], black)  # validation is never augmented


# ---------------------------------------------------------------- ImageFolder
def _image_folder(root: Path, splits=("train", "val")) -> None:
    for split in splits:
        for cls, value in (("ants", 50), ("bees", 200)):
            (root / split / cls).mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (40, 30), (value, index, 0)).save(root / split / cls / f"{index}.png")


def test_imagefolder_uses_val_as_test_when_absent(tmp_path):
    _image_folder(tmp_path / "images")
    dm = _ready(
        ImageFolderDataModule(
            data_dir=tmp_path / "prepared", root=tmp_path / "images", resize_size=24, crop_size=16, batch_size=2
        )
    )
    assert dm.classes == ("ants", "bees") and dm.input_shape == (3, 16, 16)
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (6, 6, 6)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 0]
    checksum = dm.checksum
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "images" / "val" / "ants" / "0.png")
    changed = ImageFolderDataModule(data_dir=tmp_path / "prepared", root=tmp_path / "images")
    changed.prepare_data()
    assert changed.checksum != checksum


def test_imagefolder_missing_layout_is_explained(tmp_path):
    _image_folder(tmp_path / "images", splits=("train",))
    with pytest.raises(DataNotFoundError, match="lacks val/"):
        ImageFolderDataModule(data_dir=tmp_path, root=tmp_path / "images").prepare_data()


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("mnist", MNISTDataModule),
        ("fashion_mnist", FashionMNISTDataModule),
        ("cifar10_jpeg", CIFAR10JPEGDataModule),
        ("imagefolder", ImageFolderDataModule),
    ],
)
def test_configs_instantiate(tmp_path, name, cls):
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path / "data"), "source_data_dir": str(SHARED)},
            "seed": 5,
            "dataset": OmegaConf.load(CONF / f"{name}.yaml"),
        }
    )
    if name == "imagefolder":
        with pytest.raises(Exception, match="root"):
            instantiate(cfg.dataset)  # root: ??? is mandatory
        cfg.dataset.root = str(tmp_path / "images")
    dm = instantiate(cfg.dataset)
    assert isinstance(dm, cls)
    assert dm.name == name and dm.seed == 5 and dm.folder == tmp_path / "data" / name
    assert dm.source_dir == SHARED and dm.download is False


# ---------------------------------------------------------------- upstream download (loopback)
@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``<tmp>/upstream`` (no network needed)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "upstream"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _downloadable(monkeypatch, tiny, server, md5_of=None) -> None:
    root, url = server
    files = []
    for filename in IDX_FILES:
        shutil.copyfile(tiny["folder"] / filename, root / filename)
        md5 = hashlib.md5((md5_of or root / filename).read_bytes()).hexdigest()
        files.append(SourceFile(filename, "0" * 64, urls=(url + "missing/" + filename, url + filename), md5=md5))
    monkeypatch.setitem(SOURCES, "tiny_idx", DataSource("tiny_idx", "tiny-idx", tuple(files)))


def test_download_is_the_last_resort_and_is_md5_checked(tiny_idx, monkeypatch, loopback_server):
    _downloadable(monkeypatch, tiny_idx, loopback_server)
    shutil.rmtree(tiny_idx["source_dir"])
    with pytest.raises(DataNotFoundError, match="download: false"):
        _tiny_mnist(tiny_idx).prepare_data()
    dm = _ready(_tiny_mnist(tiny_idx, download=True))  # first mirror 404s, second serves
    assert dm.prepared.origin == "download" and len(dm.data_test) == 10
    marker = json.loads((tiny_idx["data_dir"] / "tiny_idx" / MARKER_NAME).read_text())
    assert marker["origin"] == "download"
    assert marker["files"]["t10k-labels-idx1-ubyte.gz"] == _sha256(loopback_server[0] / "t10k-labels-idx1-ubyte.gz")
    assert _ready(_tiny_mnist(tiny_idx, download=True)).prepared.origin == "prepared"


def test_download_with_wrong_md5_is_refused(tiny_idx, monkeypatch, loopback_server, tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the file")
    _downloadable(monkeypatch, tiny_idx, loopback_server, md5_of=other)
    shutil.rmtree(tiny_idx["source_dir"])
    with pytest.raises(DataNotFoundError, match="3. upstream download: failed"):
        _tiny_mnist(tiny_idx, download=True).prepare_data()
    assert not (tiny_idx["data_dir"] / "tiny_idx" / MARKER_NAME).exists()
