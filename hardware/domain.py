"""The domain an emulator was fitted on, and a note for a model that lies outside it.

A fitted emulator is a regression: its stated error holds for models like the ones it
was fitted on (input sizes, batch, bit-widths, operator kinds, channel counts) and says
nothing about others. A 28x28 LeNet-5 priced by a cost model fitted to 224x224
MobileNets is an extrapolation; the report must say so instead of lending it the fit's
error. Targets build a ``FittedDomain`` from the layer lists of their fit data, with their
own notion of an operator kind (the roofline's efficiency kinds, the cost model's
families), and add ``note()`` to every report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from hardware.layers import LayerSpec

#: Layer ops that have channel counts (the rest inherit them from their input).
_CHANNELLED = ("conv", "dwconv", "linear")

Kind = Callable[[LayerSpec], str | None]


def _span(values: Iterable[int]) -> tuple[int, int] | None:
    values = list(values)
    return (min(values), max(values)) if values else None


def _side(layers: list[LayerSpec]) -> tuple[int, int] | None:
    """(height, width) of the network input: the first layer that sees an image."""
    for layer in layers:
        if len(layer.input_shape) == 4:
            return int(layer.input_shape[2]), int(layer.input_shape[3])
    return None


def _text(span: tuple[int, int] | None, unit: str = "") -> str:
    if span is None:
        return "none"
    low, high = span
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


@dataclass(frozen=True)
class FittedDomain:
    """What a target's fit data covers: ranges and the operator kinds it contains."""

    label: str  # what the fit data is, e.g. "4 AMC MobileNetV1 TF-Lite profiles"
    resolutions: tuple[int, int] | None  # smallest and largest input side (px); None: no image input
    batch: tuple[int, int]
    bits: tuple[int, int]  # max(weight, activation) bits of the costed layers
    channels: tuple[int, int] | None
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, label: str, networks: Iterable[list[LayerSpec]], kind: Kind) -> FittedDomain:
        networks = [list(layers) for layers in networks]
        if not networks:
            raise ValueError(f"fitted domain {label!r}: no networks to describe")
        sides = [side for layers in networks if (side := _side(layers)) is not None]
        costed = [layer for layers in networks for layer in layers if kind(layer) is not None]
        return cls(
            label=label,
            resolutions=_span(v for side in sides for v in side),
            batch=_span(int(layers[0].input_shape[0]) for layers in networks if layers[0].input_shape) or (1, 1),
            bits=_span(max(layer.weight_bits, layer.act_bits) for layer in costed) or (32, 32),
            channels=_span(_channels(costed)),
            kinds=tuple(sorted({str(kind(layer)) for layer in costed})),
        )

    def outside(self, layers: list[LayerSpec], kind: Kind) -> list[str]:
        """How ``layers`` leave the domain (empty when they stay inside it)."""
        reasons = []
        side = _side(layers)
        if side is not None and self.resolutions is not None and not all(_inside(v, self.resolutions) for v in side):
            reasons.append(f"input {side[0]}x{side[1]} px (fitted {_text(self.resolutions, ' px')})")
        batch = int(layers[0].input_shape[0]) if layers and layers[0].input_shape else 1
        if not _inside(batch, self.batch):
            reasons.append(f"batch {batch} (fitted {_text(self.batch)})")
        costed = [layer for layer in layers if kind(layer) is not None]
        bits = _span(max(layer.weight_bits, layer.act_bits) for layer in costed)
        if bits is not None and not (_inside(bits[0], self.bits) and _inside(bits[1], self.bits)):
            reasons.append(f"{_text(bits)}-bit layers (fitted {_text(self.bits)}-bit)")
        channels = _span(_channels(costed))
        if channels is not None and self.channels is not None:
            if not (_inside(channels[0], self.channels) and _inside(channels[1], self.channels)):
                reasons.append(f"channels {_text(channels)} (fitted {_text(self.channels)})")
        unseen = sorted({str(kind(layer)) for layer in costed} - set(self.kinds))
        if unseen:
            reasons.append(f"operator kinds not in the fit data: {', '.join(unseen)}")
        return reasons

    def note(self, hw: str, layers: list[LayerSpec], kind: Kind) -> str | None:
        """A report note when ``layers`` are outside the domain, else None."""
        reasons = self.outside(layers, kind)
        if not reasons:
            return None
        return (
            f"outside {hw}'s fitted domain ({self.describe()}): {'; '.join(reasons)}; "
            "its stated error does not cover this model"
        )

    def describe(self) -> str:
        return (
            f"{self.label}: {_text(self.resolutions, ' px')}, batch {_text(self.batch)}, {_text(self.bits)}-bit, "
            f"channels {_text(self.channels)}, operators {', '.join(self.kinds)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _channels(layers: Iterable[LayerSpec]) -> list[int]:
    return [c for layer in layers if layer.op in _CHANNELLED for c in (layer.in_channels, layer.out_channels) if c]


def _inside(value: int, span: tuple[int, int]) -> bool:
    return span[0] <= value <= span[1]
