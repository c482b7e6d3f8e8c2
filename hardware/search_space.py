"""Random MobileNetV2-like and ResNet-like architectures, for profiling and validating tables.

The lookup-table emulator (``hardware.lookup``) is only as good as its coverage of the
layer configurations a search explores. Like ProxylessNAS (Cai et al., 2019, Sec. 3.3:
the latency of each candidate block is profiled once, then a network's latency is the
sum over its blocks) and CompactNet (Li et al., 2019: layers profiled over channel
counts, other counts interpolated), we profile a *space* and validate on architectures
sampled from it that the profile never saw.

Two spaces, each a small dataclass with the numbers that define it:

- ``MobileNetV2Space``: inverted-residual stages after Sandler et al. (2018, Table 2),
  with random width per stage, depth per stage, kernel (3/5/7) and expansion (3/4/6)
  per block; ImageNet strides at a small input (default 64x64) to stay fast on a CPU.
- ``ResNetSpace``: CIFAR ResNets after He et al. (2016, Sec. 4.2: three stages of basic
  blocks, 16/32/64 filters, ResNet-20 = 3 blocks per stage), with random widths, depths
  and kernels (3/5), at 32x32.

Channel counts are multiples of 8 (MobileNet's ``make_divisible``), so that a profile
on a coarser channel grid must interpolate most of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90 % of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise, 1x1 linear projection, identity shortcut."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(cin, hidden, 1, 1))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(conv_bn_act(hidden, cout, 1, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.use_shortcut else out


class BasicBlock(nn.Module):
    """ResNet basic block: two kxk conv-bn, projection shortcut when the shape changes, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, kernel, 1, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = self.shortcut(x) if self.shortcut is not None else x
        return self.relu2(out + identity)


class Classifier(nn.Module):
    """Global average pool, flatten, fully connected."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class MobileNetV2Space:
    """MobileNetV2-like networks: (expansion, channels, blocks, stride) per stage, randomised."""

    name: str = "mobilenetv2"
    input_size: int = 64
    classes: int = 1000
    stem_channels: tuple[int, ...] = (16, 24, 32)
    #: (base channels, max blocks, stride) of the stages after the first t=1 block
    stages: tuple[tuple[int, int, int], ...] = (
        (24, 3, 2),
        (32, 4, 2),
        (64, 4, 2),
        (96, 3, 1),
        (160, 3, 2),
        (320, 1, 1),
    )
    width_multipliers: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25)
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    last_channels: tuple[int, ...] = (640, 960, 1280)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        stages = []
        for base, max_blocks, stride in self.stages:
            stages.append(
                {
                    "channels": make_divisible(base * rng.choice(self.width_multipliers)),
                    "stride": stride,
                    "blocks": [
                        {"kernel": rng.choice(self.kernels), "expansion": rng.choice(self.expansions)}
                        for _ in range(rng.randint(1, max_blocks))
                    ],
                }
            )
        stem = rng.choice(self.stem_channels)
        return {
            "space": self.name,
            "input_size": self.input_size,
            "stem": stem,
            "first": make_divisible(stem * rng.choice((0.5, 0.75, 1.0))),
            "stages": stages,
            "last": rng.choice(self.last_channels),
            "classes": self.classes,
        }

    def build(self, config: dict[str, Any]) -> nn.Module:
        layers: list[nn.Module] = [conv_bn_act(3, config["stem"], 3, 2)]
        layers.append(InvertedResidual(config["stem"], config["first"], 3, 1, 1))
        cin = config["first"]
        for stage in config["stages"]:
            for index, block in enumerate(stage["blocks"]):
                stride = stage["stride"] if index == 0 else 1
                layers.append(InvertedResidual(cin, stage["channels"], block["kernel"], stride, block["expansion"]))
                cin = stage["channels"]
        layers.append(conv_bn_act(cin, config["last"], 1, 1))
        return nn.Sequential(nn.Sequential(*layers), Classifier(config["last"], config["classes"]))


@dataclass(frozen=True)
class ResNetSpace:
    """CIFAR-style ResNets: three stages of basic blocks with random width, depth and kernel."""

    name: str = "resnet"
    input_size: int = 32
    classes: int = 10
    stem_channels: tuple[int, ...] = (16, 24, 32)
    #: (channel choices, max blocks, stride) per stage
    stages: tuple[tuple[tuple[int, ...], int, int], ...] = (
        ((16, 24, 32, 40, 48), 4, 1),
        ((32, 40, 48, 56, 64, 80, 96), 4, 2),
        ((64, 80, 96, 112, 128, 160, 192), 4, 2),
    )
    kernels: tuple[int, ...] = (3, 5)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {
            "space": self.name,
            "input_size": self.input_size,
            "stem": rng.choice(self.stem_channels),
            "stages": [
                {
                    "channels": rng.choice(choices),
                    "stride": stride,
                    "blocks": [{"kernel": rng.choice(self.kernels)} for _ in range(rng.randint(1, max_blocks))],
                }
                for choices, max_blocks, stride in self.stages
            ],
            "classes": self.classes,
        }

    def build(self, config: dict[str, Any]) -> nn.Module:
        stem = conv_bn_act(3, config["stem"], 3, 1)
        stem[2] = nn.ReLU(inplace=True)
        layers: list[nn.Module] = [stem]
        cin = config["stem"]
        for stage in config["stages"]:
            for index, block in enumerate(stage["blocks"]):
                stride = stage["stride"] if index == 0 else 1
                layers.append(BasicBlock(cin, stage["channels"], block["kernel"], stride))
                cin = stage["channels"]
        return nn.Sequential(nn.Sequential(*layers), Classifier(cin, config["classes"]))


#: ResNet-20 of He et al. (2016, Sec. 4.2) in the ResNet space (projection shortcuts, option B).
RESNET20_CONFIG: dict[str, Any] = {
    "space": "resnet",
    "input_size": 32,
    "stem": 16,
    "stages": [
        {"channels": 16, "stride": 1, "blocks": [{"kernel": 3}] * 3},
        {"channels": 32, "stride": 2, "blocks": [{"kernel": 3}] * 3},
        {"channels": 64, "stride": 2, "blocks": [{"kernel": 3}] * 3},
    ],
    "classes": 10,
}

SPACES: dict[str, Any] = {
    "mobilenetv2": MobileNetV2Space(),
    "resnet": ResNetSpace(),
    # a few seconds to profile: for tests and smoke runs
    "tiny": ResNetSpace(
        name="tiny", input_size=8, stem_channels=(8,), stages=(((8, 16), 1, 1), ((16, 24), 1, 2)), kernels=(3,)
    ),
}


def get_space(name: str):
    """The search space registered under ``name``."""
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; known: {sorted(SPACES)}") from None


def sample_architectures(
    space_names: list[str] | tuple[str, ...], count: int, seed: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """``count`` named random configurations, alternating between the given spaces."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        space = get_space(space_names[index % len(space_names)])
        out.append((f"{space.name}-{index:03d}", space.sample(rng)))
    return out


def build(config: dict[str, Any]) -> nn.Module:
    """The network a configuration describes (the space is named in the configuration)."""
    return get_space(config["space"]).build(config).eval()


def input_shape_of(config: dict[str, Any], batch_size: int = 1) -> tuple[int, int, int, int]:
    size = int(config["input_size"])
    return (batch_size, 3, size, size)


__all__ = [
    "MobileNetV2Space",
    "ResNetSpace",
    "RESNET20_CONFIG",
    "SPACES",
    "build",
    "get_space",
    "input_shape_of",
    "make_divisible",
    "sample_architectures",
]
