"""The quantizers of fake-quantized layers, by name: the one place a method's plan asks for them.

A quantizer is an ``nn.Module`` playing one role in a quantized conv/linear layer
(:mod:`.fakequant`): ``"weight"`` (``forward(weight)``, ``freeze(weight)``, ``integer_weight(weight)``)
or ``"act"`` (``forward(x)`` on the layer's input, calibrated through ``mode`` and
``finish_calibration()``). Each registers under a name and a role with the bit-widths it can
represent, so a width it cannot take fails naming that quantizer's range; methods choose one by
name (``weight_quantizer``, ``act_quantizer`` in their yaml) and get per-layer widths through the
layer plan. The uniform quantizers (:mod:`.fakequant`) and PACT's learned clipping (:mod:`.pact`)
register here; sign (1 bit) and ternary (2 bits) quantizers join the same way.

    create_quantizer("uniform", "weight", QuantScheme(bits=4, per_channel=True), channels=16)
    create_quantizer("pact", "act", QuantScheme(bits=2, symmetric=False, signed=False))
    list_quantizers("act")                                   # ['pact', 'uniform']

``stored_as`` names the quantizer a stored model is rebuilt with when the training-time module
holds state the deployed one does not need: PACT's learned ``alpha`` deploys as the uniform
quantizer with scale ``alpha / (2^k - 1)``, which is all its file stores.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from methods.quantization.uniform import QuantizationError, QuantScheme

ROLES = ("weight", "act")

#: (lowest, highest) bit-width a quantizer takes, given whether its scheme is symmetric
BitRange = Callable[[bool], tuple[int, int]]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class QuantizerEntry:
    """One registered quantizer: how to build it and which bit-widths it takes."""

    name: str
    role: str
    factory: Callable[..., nn.Module]
    bit_range: BitRange
    stored_as: str

    def range_text(self, symmetric: bool) -> str:
        lo, hi = self.bit_range(symmetric)
        other_lo, other_hi = self.bit_range(not symmetric)
        if (lo, hi) == (other_lo, other_hi):
            return f"{lo}..{hi}"
        kind, other = ("symmetric", "asymmetric") if symmetric else ("asymmetric", "symmetric")
        return f"{lo}..{hi} with {'a' if symmetric else 'an'} {kind} scheme, {other_lo}..{other_hi} {other}"

    def check_bits(self, bits: Any, symmetric: bool) -> int:
        """``bits`` if this quantizer can represent that width, else an error giving its range."""
        lo, hi = self.bit_range(symmetric)
        if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
            raise QuantizationError(f"{bits!r} bits is not a width the {self.name!r} {self.role} quantizer takes "
                                    f"({self.range_text(symmetric)})")
        return bits


_REGISTRY: dict[tuple[str, str], QuantizerEntry] = {}


def _constant(lo: int, hi: int) -> BitRange:
    return lambda _symmetric: (lo, hi)


def register_quantizer(name: str, role: str, *, bits: tuple[int, int] | BitRange,
                       stored_as: str | None = None) -> Callable[[F], F]:
    """Decorator registering ``factory(scheme, **options) -> nn.Module`` as the ``role`` quantizer ``name``.

    ``bits``: the (lowest, highest) width it takes, or a function of ``symmetric`` giving them.
    """
    if role not in ROLES:
        raise QuantizationError(f"quantizer {name!r}: role must be one of {list(ROLES)}, got {role!r}")
    bit_range = bits if callable(bits) else _constant(*bits)

    def wrap(factory: F) -> F:
        _REGISTRY[(role, name)] = QuantizerEntry(name, role, factory, bit_range, stored_as or name)
        return factory

    return wrap


def _discover() -> None:
    """Import every module of this package, so that quantizers defined beside their method register."""
    package = importlib.import_module(__package__ or "methods.quantization")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def list_quantizers(role: str | None = None) -> list[str]:
    """Names of the registered quantizers (of ``role`` only, when given), sorted."""
    _discover()
    return sorted({name for r, name in _REGISTRY if role in (None, r)})


def quantizer_entry(name: str, role: str) -> QuantizerEntry:
    """The registered ``role`` quantizer ``name``; unknown names are refused with the registered ones."""
    if not isinstance(name, str):
        raise QuantizationError(f"a quantizer name is a string, got {name!r}; registered {role} quantizers: "
                                f"{list_quantizers(role)}")
    if (role, name) not in _REGISTRY:
        _discover()
    if (role, name) not in _REGISTRY:
        raise QuantizationError(f"unknown {role} quantizer {name!r}; registered: {list_quantizers(role)}")
    return _REGISTRY[(role, name)]


def create_quantizer(name: str, role: str, scheme: QuantScheme, **options: Any) -> nn.Module:
    """The ``role`` quantizer ``name`` for ``scheme`` (its width checked against the quantizer's range)."""
    entry = quantizer_entry(name, role)
    entry.check_bits(scheme.bits, scheme.symmetric)
    return entry.factory(scheme, **options)
