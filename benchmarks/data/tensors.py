"""In-memory image datasets: normalised once, indexed like a TensorDataset.

On a CPU with two cores, decoding or normalising images per sample costs more than the
small models being trained; holding the normalised float tensor in memory keeps data
loading cheap. The optional training augmentation (random crop with zero padding, then a
horizontal flip, the standard CIFAR recipe of He et al. 2016, Sec. 4.2) works on the
normalised tensor and pads with the value a black pixel has after normalisation, so it
matches the usual pad-then-normalise pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def normalise_uint8(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[1] != len(mean):
        raise ValueError(
            f"expected uint8 images shaped (N, {len(mean)}, H, W), got {tuple(tensor.shape)} {tensor.dtype}"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = torch.empty(tensor.shape, dtype=torch.float32)
    for start in range(0, len(tensor), 8192):  # chunks keep the temporary memory small
        chunk = tensor[start : start + 8192].to(torch.float32).div_(255.0)
        out[start : start + 8192] = chunk.sub_(mean_t).div_(std_t)
    return out


class PadCropFlip:
    """Random ``size`` crop of the image padded by ``padding`` pixels, then a random
    horizontal flip with probability 1/2; uses torch's global random state."""

    def __init__(self, padding: int, fill: torch.Tensor, flip: bool = True) -> None:
        self.padding = padding
        self.fill = fill.view(-1, 1, 1)
        self.flip = flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        channels, height, width = image.shape
        pad = self.padding
        if pad > 0:
            canvas = self.fill.expand(channels, height + 2 * pad, width + 2 * pad).clone()
            canvas[:, pad : pad + height, pad : pad + width] = image
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = canvas[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image


class InMemoryImageDataset(Dataset):
    """``(image, label)`` pairs from one normalised float tensor and one label tensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: PadCropFlip | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return image, self.labels[index]

    def with_augment(self, augment: PadCropFlip | None) -> InMemoryImageDataset:
        """The same samples (shared memory) with another augmentation."""
        return InMemoryImageDataset(self.images, self.labels, augment)


def black_fill(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The per-channel value of a black pixel after normalisation."""
    return -torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)
