"""Uniform quantization, observers and bit-packing (methods.quantization.uniform / .packing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.quantization.packing import (
    PackingError,
    array_part,
    load_parts,
    pack_bits,
    packed_nbytes,
    packed_part,
    part_array,
    part_sizes,
    save_parts,
    unpack_bits,
)
from methods.quantization.uniform import (
    MSEObserver,
    MinMaxObserver,
    PercentileObserver,
    QuantizationError,
    QuantScheme,
    compute_qparams,
    dequantize,
    fake_quantize,
    make_observer,
    quantize,
    quantize_tensor,
)

SCHEMES = [
    QuantScheme(bits=b, symmetric=sym, per_channel=pc, signed=signed)
    for b in (2, 4, 8)
    for sym in (True, False)
    for pc in (True, False)
    for signed in (True, False)
]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_round_trip_error_is_at_most_half_a_step(scheme: QuantScheme) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, 3, 3) * torch.linspace(0.1, 4.0, 6)[:, None, None, None] + 0.3
    qt = quantize_tensor(x, scheme)
    qmin, qmax = scheme.qrange()
    assert qt.q.min() >= qmin and qt.q.max() <= qmax
    err = (qt.dequantize() - x).abs()
    scale = qt.scale[:, None, None, None] if scheme.per_channel else qt.scale
    assert torch.all(err <= scale / 2 * (1 + 1e-5) + 1e-7)


def test_zero_is_exact_and_symmetric_ranges_are_narrow() -> None:
    scheme = QuantScheme(bits=8, symmetric=True)
    assert scheme.qrange() == (-127, 127)
    assert QuantScheme(bits=8, symmetric=False).qrange() == (-128, 127)
    assert QuantScheme(bits=8, symmetric=False, signed=False).qrange() == (0, 255)
    scale, zp = compute_qparams(torch.tensor(0.5), torch.tensor(3.0), QuantScheme(bits=4, symmetric=False))
    # the range is widened to contain 0, and 0 maps exactly to the zero-point
    assert dequantize(quantize(torch.tensor(0.0), scale, zp, -8, 7), scale, zp) == 0.0
    assert float(scale) == pytest.approx(3.0 / 15)


def test_per_channel_beats_per_tensor_on_very_different_channel_ranges() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 16, 3, 3) * torch.logspace(-3, 1, 8)[:, None, None, None]
    errs = {}
    for per_channel in (False, True):
        qt = quantize_tensor(w, QuantScheme(bits=8, per_channel=per_channel))
        errs[per_channel] = (qt.dequantize() - w).pow(2).mean(dim=(1, 2, 3))
    # the small channels are all but erased per tensor, kept per channel
    assert errs[True].sum() < errs[False].sum()
    assert errs[True][0] < errs[False][0] / 100
    assert torch.all(errs[True] <= errs[False] + 1e-12)


def test_percentile_clips_outliers_that_stretch_min_max() -> None:
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[:10] = 1000.0
    scheme = QuantScheme(bits=8, symmetric=False)
    minmax, pct = MinMaxObserver(scheme), PercentileObserver(scheme, percentile=99.9)
    for obs in (minmax, pct):
        obs.observe(x)
    assert float(minmax.range()[1]) == 1000.0
    assert float(pct.range()[1]) < 5.0
    # and the bulk of the values is quantized far more finely
    bulk = x[10:]
    err = {}
    for name, obs in (("minmax", minmax), ("pct", pct)):
        s, z = obs.qparams()
        err[name] = (dequantize(quantize(bulk, s, z, *scheme.qrange()), s, z) - bulk).pow(2).mean()
    assert err["pct"] < err["minmax"] / 100


def test_mse_observer_is_not_worse_than_min_max_on_heavy_tails() -> None:
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((50_000,))
    for bits in (4, 8):
        scheme = QuantScheme(bits=bits, symmetric=True)
        errs = {}
        for name in ("minmax", "mse"):
            obs = make_observer(name, scheme)
            obs.observe(x)
            s, z = obs.qparams()
            errs[name] = float((dequantize(quantize(x, s, z, *scheme.qrange()), s, z) - x).pow(2).mean())
        assert errs["mse"] <= errs["minmax"]
    assert errs["mse"] < errs["minmax"] * 0.9  # heavy tails: clipping pays at 8 bits too


def test_per_channel_mse_and_percentile_give_one_range_per_channel() -> None:
    scheme = QuantScheme(bits=4, per_channel=True)
    w = torch.randn(5, 40) * torch.arange(1, 6)[:, None]
    for obs in (MSEObserver(scheme), PercentileObserver(scheme, percentile=99.0)):
        obs.observe(w)
        lo, hi = obs.range()
        assert lo.shape == hi.shape == (5,)
        assert torch.all(hi <= w.max(dim=1).values + 1e-6)


def test_sampling_observer_keeps_every_batch_represented() -> None:
    scheme = QuantScheme(bits=8, symmetric=False)
    obs = PercentileObserver(scheme, percentile=99.0, max_samples=1000)
    for i in range(10):
        obs.observe(torch.full((5000,), float(i)))
    assert obs.sample is not None and obs.sample.shape[1] <= 1000
    counts = torch.bincount(obs.sample[0].long(), minlength=10)
    assert torch.all(counts > 50)  # roughly 100 each, none starved


def test_ema_min_max_follows_recent_batches() -> None:
    obs = MinMaxObserver(QuantScheme(symmetric=False), averaging_constant=0.5)
    obs.observe(torch.tensor([-1.0, 1.0]))
    obs.observe(torch.tensor([-3.0, 3.0]))
    assert float(obs.range()[1]) == pytest.approx(2.0)


def test_straight_through_gradient_is_clipped() -> None:
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 2.0], requires_grad=True)
    scale, zp = torch.tensor(0.01), torch.tensor(0, dtype=torch.int32)
    y = fake_quantize(x, scale, zp, -127, 127)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(y.detach(), torch.tensor([-1.27, -0.3, 0.0, 0.4, 1.27]))


@pytest.mark.parametrize("bad", [0, 1, 17, 33, 2.5, True])
def test_impossible_bit_widths_are_refused(bad) -> None:
    with pytest.raises(QuantizationError, match="bits"):
        QuantScheme(bits=bad)


def test_unknown_observer_and_empty_observer_are_refused() -> None:
    with pytest.raises(QuantizationError, match="unknown observer 'median'.*minmax"):
        make_observer("median", QuantScheme())
    with pytest.raises(QuantizationError, match="saw no values"):
        MinMaxObserver(QuantScheme()).qparams()
    with pytest.raises(QuantizationError, match="percentile"):
        PercentileObserver(QuantScheme(), percentile=20)


# --------------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_packing_round_trips_for_every_bit_width(bits: int, signed: bool) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    for count in (1, 7, 8, 9, 1001):
        values = rng.integers(lo, hi, size=count)
        values[0], values[-1] = lo, hi - 1  # the extremes are always there
        data = pack_bits(values, bits, signed)
        assert len(data) == packed_nbytes(count, bits) == -(-count * bits // 8)
        assert np.array_equal(unpack_bits(data, bits, count, signed), values)


def test_packing_refuses_codes_that_do_not_fit() -> None:
    with pytest.raises(PackingError, match="do not fit 3-bit unsigned"):
        pack_bits(np.array([0, 8]), 3)
    with pytest.raises(PackingError, match="do not fit 4-bit signed"):
        pack_bits(np.array([-9]), 4, signed=True)
    with pytest.raises(PackingError, match="bits must be an integer in 1..8"):
        pack_bits(np.array([0]), 9)
    with pytest.raises(PackingError, match="integer codes"):
        pack_bits(np.array([0.5]), 4)


def test_container_round_trips_and_accounts_for_every_byte(tmp_path) -> None:
    codes = torch.randint(-8, 8, (4, 3, 3, 3))
    scale = torch.rand(4)
    half = torch.randn(5, dtype=torch.bfloat16)
    parts = [
        packed_part("w", codes, 4, signed=True),
        array_part("w.scale", scale, kind="scales"),
        array_part("h", half, kind="weights16"),
    ]
    size = save_parts(tmp_path / "m.bin", parts, {"model": "tiny"})
    meta, loaded = load_parts(tmp_path / "m.bin")
    assert meta == {"model": "tiny"}
    assert torch.equal(part_array(loaded["w"]), codes.long())
    assert torch.equal(part_array(loaded["w.scale"]), scale)
    assert torch.equal(part_array(loaded["h"]), half)
    sizes = part_sizes(tmp_path / "m.bin")
    assert sizes["codes"] == 54 and sizes["scales"] == 16 and sizes["weights16"] == 10
    assert sizes["total"] == size == sum(v for k, v in sizes.items() if k != "total")
