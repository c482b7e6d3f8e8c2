"""The MobileNetV2-like search space of ProxylessNAS, its candidate blocks, and derived architectures.

Cai et al., "ProxylessNAS" (ICLR 2019), Sec. 4 / the authors' ``super_proxyless.py``: a fixed
3x3 stem, a fixed 3x3 MBConv1 block, then stages of searched blocks. Every searched block picks
one of {kernel 3, 5, 7} x {expansion 3, 6} (an inverted residual: 1x1 expansion, KxK depthwise,
linear 1x1 projection, ReLU6), plus ``zero`` (the block is skipped) wherever the block keeps its
shape (stride 1, same width), so depth is searched too; an identity shortcut is added wherever the
shape is kept. A feature-mix 1x1 conv, global pooling and the classifier end the network.

Stage widths, depths, strides and the input size are config values (:class:`SpaceConfig`), set
from a named preset (:data:`PRESETS`) key by key. A derived network is a plain JSON file
(:class:`Architecture`: the resolved space and one op per searched block) that the model zoo
builds (``model=searched model.arch=<file>``), so it trains, prunes and quantizes like any model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.config import fail, option
from methods.nn_init import init_conv_linear

ZERO = "zero"
#: what an op name looks like: ``k<kernel>e<expansion>`` or ``zero``
OP_FORMAT = "k<kernel>e<expansion> (e.g. k3e6) or 'zero'"


@dataclass(frozen=True)
class Slot:
    """One searched block: where it sits, its shapes and the ops it may take (in order)."""

    index: int
    in_channels: int
    out_channels: int
    stride: int
    input_size: int
    candidates: tuple[str, ...]

    @property
    def keeps_shape(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class SearchSpace:
    """A space with every number fixed (a preset, or one resolved from config): what the supernet, the derived nets
    and the costs read."""

    input_size: int
    stem_channels: int
    stem_stride: int
    first_channels: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    strides: tuple[int, ...]
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 6)
    zero: bool = True
    head_channels: int = 1280

    def ops(self) -> tuple[str, ...]:
        return tuple(op_name(k, e) for k in self.kernels for e in self.expansions)

    def slots(self) -> list[Slot]:
        size = _out_size(_out_size(self.input_size, self.stem_stride), 1)  # stem, then the fixed MBConv1
        channels, slots = self.first_channels, list[Slot]()
        for width, depth, stride in zip(self.widths, self.depths, self.strides, strict=True):
            for position in range(depth):
                block_stride = stride if position == 0 else 1
                keeps = block_stride == 1 and channels == width
                ops = self.ops() + ((ZERO,) if keeps and self.zero else ())
                slots.append(Slot(len(slots), channels, width, block_stride, size, ops))
                size, channels = _out_size(size, block_stride), width
        return slots

    @property
    def output_size(self) -> int:
        """The spatial size the head sees."""
        size = _out_size(self.input_size, self.stem_stride)
        for stride in self.strides:
            size = _out_size(size, stride)
        return size

    def as_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


#: ``imagenet``: the paper's mobile space at 224 px (for latency; no ImageNet training here).
#: ``cifar``: the same stages for 32 px inputs, with the stem and the first stage at stride 1 (total
#: stride 8, as MobileNetV2-CIFAR here). ``cifar_small``: a narrower, shallower CIFAR space whose search
#: and training fit a 2-core CPU (the preset of conf/experiment/nas_cifar_small.yaml).
PRESETS: dict[str, SearchSpace] = {
    "imagenet": SearchSpace(224, 32, 2, 16, (24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1)),
    "cifar": SearchSpace(32, 32, 1, 16, (24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1), (1, 2, 2, 1, 2, 1)),
    "cifar_small": SearchSpace(32, 16, 1, 16, (24, 32, 64, 96), (2, 3, 3, 2), (2, 2, 2, 1), head_channels=512),
}


def _out_size(size: int, stride: int) -> int:
    return (size + stride - 1) // stride


def op_name(kernel: int, expansion: int) -> str:
    return f"k{kernel}e{expansion}"


def parse_op(name: str, key: str = "op") -> tuple[int, int]:
    """``k5e3`` -> (5, 3); anything else is an error naming the format."""
    try:
        kernel, expansion = name.removeprefix("k").split("e")
        parsed = int(kernel), int(expansion)
    except (AttributeError, ValueError):
        fail(key, f"{name!r} is not an op: expected {OP_FORMAT}")
    if not name.startswith("k") or parsed[0] % 2 == 0 or min(parsed) < 1:
        fail(key, f"{name!r} is not an op: expected {OP_FORMAT} with an odd kernel and expansion >= 1")
    return parsed


@dataclass
class SpaceConfig:
    """``space``: a preset, and any of its numbers overridden (null = the preset's)."""

    preset: str = option("cifar", choices=tuple(PRESETS), why="the named space every null key below is taken from")
    input_size: int | None = option(None, gt=0, why="input resolution at which candidates are priced (null: the preset's)")
    stem_channels: int | None = option(None, gt=0)
    stem_stride: int | None = option(None, choices=(1, 2))
    first_channels: int | None = option(None, gt=0)
    widths: list[int] | None = None
    depths: list[int] | None = None
    strides: list[int] | None = None
    kernels: list[int] | None = None
    expansions: list[int] | None = None
    zero: bool | None = None
    head_channels: int | None = option(None, gt=0)

    def check(self, key: str) -> None:
        resolve(self, key)

    def resolved(self) -> SearchSpace:
        return resolve(self, "method.space")


def resolve(config: SpaceConfig, key: str) -> SearchSpace:
    """``config``'s preset with its non-null keys applied, checked; errors name ``key.<field>``."""
    changes: dict[str, Any] = {f.name: tuple(value) if isinstance(value, list) else value
                               for f in dataclasses.fields(SearchSpace) if (value := getattr(config, f.name)) is not None}
    space = dataclasses.replace(PRESETS[config.preset], **changes)
    stages = {"widths": space.widths, "depths": space.depths, "strides": space.strides}
    if len({len(v) for v in stages.values()}) != 1 or not space.widths:
        fail(key, f"widths, depths and strides must give one value per stage, got {stages}")
    for name, ok, what in (("widths", all(w > 0 for w in space.widths), "> 0"),
                           ("depths", all(d >= 1 for d in space.depths), ">= 1"),
                           ("strides", all(s in (1, 2) for s in space.strides), "1 or 2"),
                           ("kernels", all(k >= 1 and k % 2 == 1 for k in space.kernels), "odd and >= 1"),
                           ("expansions", all(e >= 1 for e in space.expansions), ">= 1")):
        if not ok:
            fail(f"{key}.{name}", f"{list(getattr(space, name))} has values that are not {what}")
    if not space.kernels or not space.expansions:
        fail(key, "has an empty candidate set: kernels and expansions need at least one value each "
                  f"(got kernels={list(space.kernels)}, expansions={list(space.expansions)})")
    return space


@dataclass(frozen=True)
class Architecture:
    """A derived network: the space it came from and one op per searched block (``zero`` = skipped)."""

    space: SearchSpace
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        slots = self.space.slots()
        if len(self.ops) != len(slots):
            fail("arch.ops", f"has {len(self.ops)} ops but the space has {len(slots)} searched blocks")
        for slot, op in zip(slots, self.ops, strict=True):
            if op not in slot.candidates:
                if op != ZERO:
                    parse_op(op, f"arch.ops[{slot.index}]")
                fail(f"arch.ops[{slot.index}]", f"{op!r} is not a candidate of block {slot.index} "
                                                f"(stride {slot.stride}, {slot.in_channels}->{slot.out_channels} "
                                                f"channels): choose one of {list(slot.candidates)}")

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.as_dict(), "ops": list(self.ops)}

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: Any, key: str = "arch") -> Architecture:
        if not isinstance(data, dict) or set(data) != {"space", "ops"}:
            fail(key, "must be a mapping with exactly the keys 'space' and 'ops' (a file written by a NAS method)")
        fields = {f.name for f in dataclasses.fields(SearchSpace)}
        if not isinstance(data["space"], dict) or set(data["space"]) != fields:
            fail(f"{key}.space", f"must have exactly the keys {sorted(fields)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["space"].items()}
        space = SearchSpace(**values)
        return cls(space, tuple(data["ops"]))

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        file = Path(path)
        if not file.is_file():
            fail("model.arch", f"{file} is not a file: give the architecture JSON a NAS run wrote (its artifact arch.json)")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            fail("model.arch", f"{file} is not valid JSON ({err})")
        return cls.from_dict(data, f"model.arch ({file.name})")


class ConvBnReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6: every conv of the space but the projections."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class MBConv(nn.Module):
    """The inverted residual (Sandler et al. 2018) with a KxK depthwise; identity shortcut when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, expansion: int, stride: int,
                 shortcut: bool | None = None) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.kernel, self.expansion, self.stride = kernel, expansion, stride
        self.expand = ConvBnReLU6(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBnReLU6(hidden, hidden, kernel, stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        keeps = stride == 1 and in_channels == out_channels
        self.shortcut = keeps if shortcut is None else shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.shortcut else out


def build_op(op: str, slot: Slot, shortcut: bool | None = None) -> nn.Module:
    """The module of ``op`` at ``slot`` (``zero``: identity, the block is skipped)."""
    if op == ZERO:
        return nn.Identity()
    kernel, expansion = parse_op(op)
    return MBConv(slot.in_channels, slot.out_channels, kernel, expansion, slot.stride, shortcut)


class Head(nn.Sequential):
    """Feature mix (1x1 conv to ``head_channels``), global average pooling, dropout, classifier."""

    def __init__(self, in_channels: int, head_channels: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__(ConvBnReLU6(in_channels, head_channels, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(drop_rate), nn.Linear(head_channels, num_classes))


def stem(space: SearchSpace, in_chans: int) -> nn.Sequential:
    """The fixed part before the searched blocks: the 3x3 conv and the 3x3 MBConv1 block."""
    return nn.Sequential(ConvBnReLU6(in_chans, space.stem_channels, 3, space.stem_stride),
                         MBConv(space.stem_channels, space.first_channels, 3, 1, 1))


class SearchedNet(nn.Module):
    """A derived architecture as a plain network (skipped blocks are not built)."""

    def __init__(self, arch: Architecture, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        space = arch.space
        self.stem = stem(space, in_chans)
        self.blocks = nn.Sequential(*(build_op(op, slot) for slot, op in zip(space.slots(), arch.ops, strict=True)
                                      if op != ZERO))
        self.head = Head(space.widths[-1], space.head_channels, num_classes, drop_rate)
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def describe(arch: Architecture) -> Iterator[dict[str, Any]]:
    """One row per searched block: stage, shapes and op (kernel, expansion; skipped blocks say so)."""
    stage_of = [s for s, depth in enumerate(arch.space.depths) for _ in range(depth)]
    for slot, op in zip(arch.space.slots(), arch.ops, strict=True):
        kernel, expansion = parse_op(op) if op != ZERO else (None, None)
        yield {"block": slot.index, "stage": stage_of[slot.index], "in": slot.in_channels, "out": slot.out_channels,
               "stride": slot.stride, "input_size": slot.input_size, "op": op, "kernel": kernel, "expansion": expansion}
