"""Uniform affine quantization: the arithmetic every integer method of this package shares.

A real value ``r`` is represented by an integer ``q`` through ``r = scale * (q - zero_point)``
(Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", CVPR 2018, Sec. 2.1). Quantizing is ``q = clamp(round(r / scale) + zero_point,
qmin, qmax)``; for a value inside the representable range the round trip is off by at most
``scale / 2``. The survey of Berthelier et al. (2020, Sec. 2.5) motivates reducing precision to
8 bits or fewer; this module is the uniform, affine case of it.

What is here:

* :class:`QuantScheme` — bits, symmetric or asymmetric, per-tensor or per-channel, signed or
  unsigned integers; :meth:`QuantScheme.qrange` gives ``(qmin, qmax)``.
* :func:`compute_qparams` — scale and zero-point from a real range. The range is first widened to
  contain 0 so that zero (padding, ReLU outputs) is exactly representable (Jacob et al., Sec. 2.1).
  Symmetric schemes fix the zero-point at the middle of the integer range; signed symmetric
  schemes use the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` so that ``-x`` and ``x`` both round
  to representable values (as int8 weights are stored for ONNX Runtime and TFLite).
* :func:`quantize`, :func:`dequantize`, :func:`fake_quantize` and the straight-through estimator
  :class:`FakeQuantizeSTE` (Bengio et al. 2013; Jacob et al., Sec. 3): forward quantizes and
  dequantizes, backward passes the gradient unchanged inside the clipping range and zeroes it
  outside (the "clipped" straight-through estimator).
* Observers that turn observed tensors into a range: :class:`MinMaxObserver` (exact extremes, or
  an exponential moving average as Jacob et al. use for activations during training),
  :class:`PercentileObserver` (clips the tails at a percentile, so rare outliers do not stretch
  the step) and :class:`MSEObserver` (searches the clipping range that minimises the mean squared
  quantization error; the full range is one of the candidates, so it is never worse than min-max
  on the values it saw). ``OBSERVERS`` maps their config names to the classes.
* :class:`QuantizedTensor` and :func:`quantize_tensor` — the integers with their parameters.

Departure: percentile and MSE observers work on a bounded random sample of the observed values
(``max_samples`` per channel group, 2**20 by default) rather than on every activation of every
calibration batch, to keep memory flat; min and max are always exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: Smallest scale used, so that an all-zero tensor or channel still has a valid (positive) step.
MIN_SCALE = 1e-8


class QuantizationError(ValueError):
    """An impossible quantization request (0 bits, an unknown observer, a bad axis)."""


def min_bits(symmetric: bool) -> int:
    """The fewest bits of a scheme: a symmetric one needs a level each side of its zero-point (2),
    an asymmetric one takes 1 (two levels, one of them the exact zero)."""
    return 2 if symmetric else 1


@dataclass(frozen=True)
class QuantScheme:
    """How a tensor is mapped to integers.

    ``signed`` chooses int (``True``) or uint (``False``) storage; ``narrow_range`` drops the most
    negative (signed) or the largest (unsigned) code, and defaults to ``True`` exactly for signed
    symmetric schemes. ``ch_axis`` is the channel axis of per-channel schemes (0: the output
    channels of conv and linear weights).
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    ch_axis: int = 0
    signed: bool = True
    narrow_range: bool | None = None

    def __post_init__(self) -> None:
        lo = min_bits(self.symmetric)
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not lo <= self.bits <= 16:
            why = " (a symmetric scheme needs one level each side of zero; 1 bit is asymmetric)" if lo > 1 else ""
            raise QuantizationError(f"bits must be an integer in {lo}..16{why}, got {self.bits!r}")
        qmin, qmax = self.qrange()
        if qmax <= qmin:
            raise QuantizationError(f"{self.bits}-bit narrow_range leaves a single level ({qmin}); use narrow_range false")

    @property
    def narrow(self) -> bool:
        return (self.symmetric and self.signed) if self.narrow_range is None else self.narrow_range

    def qrange(self) -> tuple[int, int]:
        """The integer range ``(qmin, qmax)``."""
        if self.signed:
            return -(2 ** (self.bits - 1)) + int(self.narrow), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1 - int(self.narrow)


def quant_range(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """``(qmin, qmax)`` of ``bits``-bit integers (signed two's complement or unsigned)."""
    return QuantScheme(bits=bits, symmetric=False, signed=signed, narrow_range=narrow).qrange()


def _along(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel ``t`` so that it broadcasts against ``x`` along ``axis``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def compute_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, scheme: QuantScheme
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero-point (int32) mapping ``[min_val, max_val]`` onto ``scheme``.

    Works element-wise, so per-channel ranges give per-channel parameters.
    """
    qmin, qmax = scheme.qrange()
    min_val = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    max_val = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    if scheme.symmetric:
        mid = 0 if scheme.signed else (qmax + qmin + 1) // 2
        half_steps = min(qmax - mid, mid - qmin)
        amax = torch.maximum(-min_val, max_val)
        scale = torch.clamp(amax / half_steps, min=MIN_SCALE)
        zero_point = torch.full_like(scale, mid, dtype=torch.int32)
    else:
        scale = torch.clamp((max_val - min_val) / (qmax - qmin), min=MIN_SCALE)
        zero_point = torch.clamp(qmin - torch.round(min_val / scale), qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zero_point


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Integers (int32) ``clamp(round(x / scale) + zero_point, qmin, qmax)``."""
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Reals ``scale * (q - zero_point)`` (float32)."""
    s, z = _along(scale, q, axis), _along(zero_point, q, axis)
    return (q.to(torch.float32) - z.to(torch.float32)) * s


class FakeQuantizeSTE(torch.autograd.Function):
    """Quantize-dequantize in the forward pass, clipped straight-through gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                axis: int | None) -> torch.Tensor:
        s, z = _along(scale, x, axis).to(x.dtype), _along(zero_point, x, axis).to(x.dtype)
        unclamped = torch.round(x / s) + z
        ctx.save_for_backward((unclamped >= qmin) & (unclamped <= qmax))
        return (torch.clamp(unclamped, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """``dequantize(quantize(x))`` with the straight-through estimator as its gradient."""
    return FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax, axis)


# --------------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------------


class MinMaxObserver:
    """Range from the exact minimum and maximum seen (per tensor or per channel).

    With ``averaging_constant`` in (0, 1] the range is an exponential moving average of each
    batch's extremes instead (Jacob et al. 2018, Sec. 3, for activations during training).
    """

    def __init__(self, scheme: QuantScheme, averaging_constant: float | None = None, **_: Any) -> None:
        if averaging_constant is not None and not 0 < averaging_constant <= 1:
            raise QuantizationError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.scheme = scheme
        self.averaging_constant = averaging_constant
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.batches = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a 2-D [groups, values] view: one row per channel, or one row in all."""
        x = x.detach().to(torch.float32)
        if not self.scheme.per_channel:
            return x.reshape(1, -1)
        axis = self.scheme.ch_axis
        if not -x.dim() <= axis < x.dim():
            raise QuantizationError(f"ch_axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        if rows.shape[1] == 0:
            return
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        elif self.averaging_constant is None:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)
        self.batches += 1
        self._observe_rows(rows)

    def _observe_rows(self, rows: torch.Tensor) -> None:
        """Hook for observers that keep more than the extremes."""

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max), per channel for per-channel schemes (shape [C]) or scalars."""
        if self.min_val is None or self.max_val is None:
            raise QuantizationError("the observer saw no values: run calibration batches through it first")
        if self.scheme.per_channel:
            return self.min_val, self.max_val
        return self.min_val[0], self.max_val[0]

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return compute_qparams(*self.range(), self.scheme)


class _SamplingObserver(MinMaxObserver):
    """Keeps a bounded uniform random sample of the observed values of each channel group."""

    def __init__(self, scheme: QuantScheme, max_samples: int = 2**20, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(scheme, **kwargs)
        if max_samples < 1:
            raise QuantizationError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = max_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.sample: torch.Tensor | None = None

    def _subsample(self, rows: torch.Tensor, keep: int) -> torch.Tensor:
        if rows.shape[1] <= keep:
            return rows
        idx = torch.randperm(rows.shape[1], generator=self.generator)[:keep]
        return rows[:, idx]

    def _observe_rows(self, rows: torch.Tensor) -> None:
        per_row = max(1, self.max_samples // rows.shape[0])
        if self.sample is None:
            self.sample = self._subsample(rows, per_row)
            return
        # every batch keeps an equal share of the budget: the k-th batch gets 1/k of it
        take_new = max(1, per_row // self.batches)
        old = self._subsample(self.sample, max(per_row - take_new, 0))
        self.sample = torch.cat([old, self._subsample(rows, take_new)], dim=1)

    def _sample(self) -> torch.Tensor:
        if self.sample is None:
            raise QuantizationError("the observer saw no values: run calibration batches through it first")
        return self.sample

    def _per_scheme(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (lo, hi) if self.scheme.per_channel else (lo[0], hi[0])


class PercentileObserver(_SamplingObserver):
    """Range from the ``percentile`` and ``100 - percentile`` quantiles of the observed values."""

    def __init__(self, scheme: QuantScheme, percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(scheme, **kwargs)
        if not 50 < percentile <= 100:
            raise QuantizationError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self._sample()
        q = self.percentile / 100.0
        lo = torch.quantile(sample, 1.0 - q, dim=1)
        hi = torch.quantile(sample, q, dim=1)
        return self._per_scheme(lo, hi)


class MSEObserver(_SamplingObserver):
    """Range ``[t * min, t * max]`` with ``t`` in a grid over (0, 1] minimising quantization MSE.

    The grid includes ``t = 1`` (the min-max range), so the chosen range is never worse than
    min-max on the sampled values. Per-channel schemes choose ``t`` for each channel.
    """

    def __init__(self, scheme: QuantScheme, grid: int = 100, **kwargs: Any) -> None:
        super().__init__(scheme, **kwargs)
        if grid < 1:
            raise QuantizationError(f"grid must be >= 1, got {grid}")
        self.grid = grid

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self._sample()
        assert self.min_val is not None and self.max_val is not None
        qmin, qmax = self.scheme.qrange()
        best_err = torch.full((sample.shape[0],), float("inf"))
        best_lo, best_hi = self.min_val.clone(), self.max_val.clone()
        for step in range(1, self.grid + 1):
            t = step / self.grid
            lo, hi = self.min_val * t, self.max_val * t
            scale, zp = compute_qparams(lo, hi, self.scheme)
            approx = dequantize(quantize(sample, scale, zp, qmin, qmax, axis=0), scale, zp, axis=0)
            err = (approx - sample).pow(2).mean(dim=1)
            better = err <= best_err if step == self.grid else err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return self._per_scheme(best_lo, best_hi)


#: Observer classes by the name configs use (``observer: minmax | percentile | mse``).
OBSERVERS: dict[str, Callable[..., MinMaxObserver]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, scheme: QuantScheme, **kwargs: Any) -> MinMaxObserver:
    """An observer by config name; unknown names are refused with the list of known ones."""
    if name not in OBSERVERS:
        raise QuantizationError(f"unknown observer {name!r}; choose one of {sorted(OBSERVERS)}")
    return OBSERVERS[name](scheme, **kwargs)


# --------------------------------------------------------------------------------------------
# Quantized tensors
# --------------------------------------------------------------------------------------------


@dataclass
class QuantizedTensor:
    """Integers with the parameters that map them back to reals."""

    q: torch.Tensor  # int32, the shape of the original tensor
    scale: torch.Tensor  # float32, scalar or [C]
    zero_point: torch.Tensor  # int32, like scale
    scheme: QuantScheme

    @property
    def axis(self) -> int | None:
        return self.scheme.ch_axis if self.scheme.per_channel else None

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero_point, self.axis)


def quantize_tensor(x: torch.Tensor, scheme: QuantScheme, observer: str = "minmax", **observer_kwargs: Any) -> QuantizedTensor:
    """Quantize ``x`` with parameters from one observation of ``x`` itself (weights)."""
    obs = make_observer(observer, scheme, **observer_kwargs)
    obs.observe(x)
    scale, zero_point = obs.qparams()
    qmin, qmax = scheme.qrange()
    axis = scheme.ch_axis if scheme.per_channel else None
    return QuantizedTensor(quantize(x.detach().float(), scale, zero_point, qmin, qmax, axis), scale, zero_point, scheme)
