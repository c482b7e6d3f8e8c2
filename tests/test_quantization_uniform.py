"""Uniform quantization, observers, the quantized model file, PTQ, QAT, PACT and half precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.quantization.uniform import (
    MinMaxObserver,
    MSEObserver,
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


@pytest.mark.parametrize("signed", [True, False])
def test_one_bit_asymmetric_schemes_have_two_levels_and_keep_zero(signed: bool) -> None:
    scheme = QuantScheme(bits=1, symmetric=False, signed=signed)
    assert scheme.qrange() == ((-1, 0) if signed else (0, 1))
    x = torch.linspace(-0.2, 3.0, 101) if not signed else torch.linspace(-3.0, 0.2, 101)
    qt = quantize_tensor(x, scheme)
    values = torch.unique(qt.dequantize())
    assert len(values) == 2 and 0.0 in values.tolist()
    with pytest.raises(QuantizationError, match="symmetric"):
        QuantScheme(bits=1, symmetric=True, signed=signed)
    with pytest.raises(QuantizationError, match="single level"):
        QuantScheme(bits=1, symmetric=False, signed=True, narrow_range=True)


def test_unknown_observer_and_empty_observer_are_refused() -> None:
    with pytest.raises(QuantizationError, match="unknown observer 'median'.*minmax"):
        make_observer("median", QuantScheme())
    with pytest.raises(QuantizationError, match="saw no values"):
        MinMaxObserver(QuantScheme()).qparams()
    with pytest.raises(QuantizationError, match="percentile"):
        PercentileObserver(QuantScheme(), percentile=20)


# --------------------------------------------------------------------------------------------
# fake-quant models, the stored file, PTQ and the int8 ONNX deployment
# --------------------------------------------------------------------------------------------

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

from torch import nn  # noqa: E402

from methods.base import MethodConfigError  # noqa: E402
from methods.quantization.fakequant import (  # noqa: E402
    ActQuantizer,
    WeightQuantizer,
    calibrate,
    fold_batchnorm,
    freeze,
    layer_bits,
    layer_plan,
    prepare,
    quant_layers,
    save_quantized,
)
from methods.quantization.pact import PACT, AlphaL2, PACTFunction, PACTQuantizer  # noqa: E402
from methods.quantization.ptq import PostTrainingQuantization, quantize_for_inference  # noqa: E402
from methods.quantization.quantizers import create_quantizer, list_quantizers  # noqa: E402
from methods.storage import load_model, part_sizes  # noqa: E402


def tiny_conv_net(in_chans: int = 3, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    )
    with torch.no_grad():  # BN statistics and a classifier of a trained-looking network
        net[-1].weight.mul_(20.0)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def quantized_tiny(bits: int = 8, per_channel: bool = True, observer: str = "minmax", weight_bits: int | None = None):
    net = tiny_conv_net()
    batches = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    model = copy.deepcopy(net)
    folded = fold_batchnorm(model)
    plan = layer_plan(model, QuantScheme(weight_bits or bits, per_channel=per_channel),
                      QuantScheme(bits, symmetric=False, signed=False), act_observer=observer)
    prepare(model, plan)
    calibrate(model, batches, 3)
    freeze(model)
    return net, model, plan, folded, batches


def test_batchnorm_folding_keeps_the_function() -> None:
    net = tiny_conv_net()
    folded_net = copy.deepcopy(net)
    pairs = fold_batchnorm(folded_net)
    assert pairs == [("0", "1"), ("3", "4")]
    x = torch.randn(4, 3, 12, 12)
    assert torch.allclose(folded_net(x), net(x), atol=1e-5)
    assert isinstance(folded_net[1], nn.Identity)


@pytest.mark.parametrize("bits,per_channel", [(8, True), (4, False), (3, True)])
def test_stored_model_decodes_to_the_evaluated_one(tmp_path: Path, bits: int, per_channel: bool) -> None:
    net, model, plan, folded, batches = quantized_tiny(bits, per_channel)
    x = torch.randn(5, 3, 12, 12)
    written = save_quantized(model, tmp_path / "m.cbq", plan, folded)
    decoded = load_model(tmp_path / "m.cbq", net)
    assert torch.equal(decoded(x), model(x))  # identical, not merely close
    sizes = part_sizes(tmp_path / "m.cbq")
    n_weights = sum(layer.weight.numel() for layer in quant_layers(decoded).values())
    assert sizes["weight_codes"] == sum(-(-layer.weight.numel() * bits // 8) for layer in quant_layers(decoded).values())
    assert sizes["weight_codes"] < n_weights * 4 * bits / 32 + 8
    assert written == sizes and sizes["total"] == (tmp_path / "m.cbq").stat().st_size
    for layer in quant_layers(decoded).values():  # at most 2^bits distinct values per scale group
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1) if per_channel else layer.weight.reshape(1, -1)
        assert max(len(torch.unique(r)) for r in rows) <= 2**bits
    assert layer_bits(decoded) == {"0": (bits, bits), "3": (bits, bits), "8": (bits, bits)}


def test_quantization_error_of_the_decoded_model_shrinks_with_bits(tmp_path: Path) -> None:
    x = torch.randn(16, 3, 12, 12)
    errs = []
    for bits in (3, 5, 8):
        net, model, *_ = quantized_tiny(bits)
        errs.append(float((model(x) - net(x)).detach().abs().mean()))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("options,key", [
    ({"bits": 0}, "method.bits"), ({"bits": 33}, "method.bits"), ({"bits": 9}, r"method.bits: 9 .*'uniform'.*2\.\.8"),
    ({"bits": 1}, r"method.bits: 1 bits .*'uniform' weight quantizer takes \(2\.\.8 with a symmetric scheme, 1\.\.8"),
    ({"act_bits": 33}, "method.act_bits"), ({"act_bits": 0}, r"method.act_bits: .*1\.\.8.*or 32 keeps"),
    ({"act_bits": 1, "act_symmetric": True}, r"method.act_bits: .*2\.\.8 with a symmetric"),
    ({"observer": "median"}, "method.observer"),
    ({"calibration_batches": 0}, "method.calibration_batches"), ({"percentile": 30}, "method.percentile"),
    ({"bitz": 8}, r"method.bitz is not a key .*did you mean 'bits'"),
    ({"weight_quantizer": "pact"}, r"method.weight_quantizer: unknown weight quantizer 'pact'; registered: .*'uniform'"),
    ({"act_quantizer": "sine"}, r"method.act_quantizer: unknown act quantizer 'sine'; registered: .*'pact'"),
    ({"act_quantizer": ["pact"]}, r"method.act_quantizer must be a string, got \['pact'\]"),
    ({"layer_bits": [4, 4]}, "method.layer_bits must be a mapping"),
    ({"layer_bits": {"3": 4}}, r"method.layer_bits.3 must be a list of 2 values"),
    ({"layer_bits": {"3": [1, 4]}}, r"method.layer_bits.3: 1 bits .*2\.\.8 with a symmetric"),
    ({"layer_bits": {"3": [4, 9]}}, r"method.layer_bits.3: 9 bits .*'uniform' act quantizer"),
])
def test_ptq_refuses_impossible_requests_naming_the_key(options: dict, key: str) -> None:
    with pytest.raises(MethodConfigError, match=key):
        PostTrainingQuantization(**options)


def test_quantizer_registry_names_and_ranges() -> None:
    assert {"uniform", "pact"} <= set(list_quantizers("act"))
    assert "uniform" in list_quantizers("weight") and "pact" not in list_quantizers("weight")
    assert isinstance(create_quantizer("uniform", "weight", QuantScheme(4), channels=3), WeightQuantizer)
    assert isinstance(create_quantizer("pact", "act", QuantScheme(1, symmetric=False, signed=False)), PACTQuantizer)
    with pytest.raises(QuantizationError, match=r"unknown weight quantizer 'pact'; registered: \[.*'uniform'"):
        create_quantizer("pact", "weight", QuantScheme(4))
    with pytest.raises(QuantizationError, match=r"9 bits .*'pact' act quantizer takes \(1\.\.8\)"):
        create_quantizer("pact", "act", QuantScheme(9, symmetric=False, signed=False))
    with pytest.raises(QuantizationError, match="unsigned and asymmetric"):
        create_quantizer("pact", "act", QuantScheme(4, symmetric=True))


def stored_and_decoded(method, tmp_path: Path, batches: list[torch.Tensor] | None = None):
    """``method``'s config applied to the tiny net through the PTQ path, frozen, written and decoded."""
    net = tiny_conv_net()
    batches = batches or [torch.randn(8, 3, 12, 12) for _ in range(3)]
    quantized, plan, folded = quantize_for_inference(net, method.config, batches)
    freeze(quantized)
    save_quantized(quantized, tmp_path / "m.cbq", plan, folded)
    return net, quantized, load_model(tmp_path / "m.cbq", net)


def test_per_layer_bit_widths_override_the_default_and_are_recorded(tmp_path: Path) -> None:
    method = PostTrainingQuantization(bits=8, act_bits=8, onnx=False, layer_bits={"3": [4, 2], "8": [1, 32]},
                                      symmetric=False)
    net, quantized, decoded = stored_and_decoded(method, tmp_path)
    assert layer_bits(decoded) == {"0": (8, 8), "3": (4, 2), "8": (1, 32)}
    x = torch.randn(5, 3, 12, 12)
    assert torch.equal(decoded(x), quantized(x))
    layers = quant_layers(decoded)
    for name, (w_bits, _) in layer_bits(decoded).items():
        rows = layers[name].weight.detach().reshape(layers[name].weight.shape[0], -1)
        assert max(len(torch.unique(r)) for r in rows) <= 2**w_bits
    seen = {}
    hook = layers["3"].input_quantizer.register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    decoded(x)
    hook.remove()
    assert len(torch.unique(seen["out"])) <= 4  # 2-bit activations into layer 3
    assert isinstance(layers["8"].input_quantizer, nn.Identity)  # 32: its input stays float


def test_per_layer_bits_must_name_quantized_layers() -> None:
    with pytest.raises(MethodConfigError, match=r"method.layer_bits names \['9'\].*those are \['0', '3', '8'\]"):
        PostTrainingQuantization(layer_bits={"9": [4, 4]}).config.plan(tiny_conv_net(), (1, 3, 12, 12))
    with pytest.raises(MethodConfigError, match=r"method.layer_bits names \['3'\].*those are \['0', '8'\]"):
        PostTrainingQuantization(layer_bits={"3": [4, 4]}, layers={"exclude": ["3"]}).config.plan(tiny_conv_net(),
                                                                                                 (1, 3, 12, 12))


def test_one_bit_weights_and_activations_store_and_decode(tmp_path: Path) -> None:
    method = PostTrainingQuantization(bits=1, act_bits=1, symmetric=False, onnx=False)
    net, quantized, decoded = stored_and_decoded(method, tmp_path)
    assert set(layer_bits(decoded).values()) == {(1, 1)}
    x = torch.randn(5, 3, 12, 12)
    assert torch.equal(decoded(x), quantized(x))
    for layer in quant_layers(decoded).values():  # two values per output channel
        for row in layer.weight.detach().reshape(layer.weight.shape[0], -1):
            assert len(torch.unique(row)) <= 2
    assert part_sizes(tmp_path / "m.cbq")["weight_codes"] == sum(
        -(-layer.weight.numel() // 8) for layer in quant_layers(decoded).values())


def test_int8_onnx_runs_in_onnx_runtime_and_agrees_with_fake_quant(tmp_path: Path) -> None:
    import onnx

    from methods.quantization.onnx_int8 import export_int8, int8_saturates, onnx_ops, ort_session

    # 7-bit weights where this CPU's u8 x s8 kernels saturate on 8-bit ones (reduce_range)
    net, model, plan, folded, batches = quantized_tiny(8, weight_bits=7 if int8_saturates(127, 255) else 8)
    save_quantized(model, tmp_path / "m.cbq", plan, folded)
    decoded = load_model(tmp_path / "m.cbq", net)
    path = export_int8(decoded, batches, tmp_path / "m_int8.onnx")
    ops = onnx_ops(path)
    assert ops.get("QLinearConv") == 2, ops  # executed with integer kernels, not float
    x = torch.cat(batches)  # inside the calibrated ranges of every tensor ONNX Runtime quantizes
    simulated = decoded(x).detach()
    deployed = torch.from_numpy(ort_session(path).run(None, {"input": x.numpy()})[0])
    # the deployed model also quantizes tensors the simulation keeps in float (pooled features,
    # logits): a few 8-bit steps of the output range apart (int16 saturation would be ~30%)
    out_range = float(simulated.max() - simulated.min())
    assert (deployed - simulated).abs().max() < 0.02 * out_range
    assert (deployed.argmax(1) == simulated.argmax(1)).float().mean() >= 0.9
    # our integers are the ones stored in the ONNX model
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    conv = quant_layers(decoded)["0"]
    ours = conv.weight_quantizer.integer_weight(conv.weight).numpy()
    theirs = [v for k, v in inits.items() if v.dtype == np.int8 and v.shape == ours.shape]
    assert any(np.array_equal(v, ours) for v in theirs)


def test_int8_export_refuses_other_bit_widths(tmp_path: Path) -> None:
    from methods.quantization.onnx_int8 import export_int8

    net, model, plan, folded, batches = quantized_tiny(8)
    for layer in quant_layers(model).values():
        layer.input_quantizer = nn.Identity()  # float activations: no integer kernel takes them
    with pytest.raises(QuantizationError, match="8 bits only"):
        export_int8(model, batches, tmp_path / "m.onnx")


# --------------------------------------------------------------------------------------------
# QAT, PACT and half precision through a real (tiny) context
# --------------------------------------------------------------------------------------------

from methods.losses import TrainingStep  # noqa: E402
from methods.quantization.half import HalfPrecision, HalfPrecisionModel  # noqa: E402
from methods.quantization.qat import QuantizationAwareTraining  # noqa: E402
from tests.conftest import SHARED_DATA, needs_shared_data  # noqa: E402


def test_pact_gradients_are_the_papers() -> None:
    x = torch.tensor([-1.0, 0.2, 0.9, 1.5, 3.0], requires_grad=True)
    alpha = torch.tensor(1.0, requires_grad=True)
    y = PACTFunction.apply(x, alpha, 3)  # 2 bits: levels 0, 1/3, 2/3, 1
    assert torch.allclose(y.detach(), torch.tensor([0.0, 1 / 3, 1.0, 1.0, 1.0]))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 0.0, 0.0]))  # inside [0, alpha) only
    assert float(alpha.grad) == 9.0  # the upstream gradients where x >= alpha


def test_alpha_penalty_is_a_loss_term_over_the_learned_clipping_levels() -> None:
    learned, kept = (PACTQuantizer(QuantScheme(2, symmetric=False, signed=False)) for _ in range(2))
    learned.clip_at(3.0)
    model = nn.Sequential(learned, kept)  # ``kept`` never started learning: not PACT's (signed inputs)
    step = TrainingStep(inputs=torch.zeros(1), targets=torch.zeros(1), logits=torch.zeros(1, 2), model=model)
    penalty = AlphaL2(0.5)(step)
    assert penalty.item() == pytest.approx(0.5 * 9.0)
    penalty.backward()
    assert float(learned.alpha.grad) == pytest.approx(3.0) and kept.alpha.grad is None
    assert float(AlphaL2(0.5)(TrainingStep(step.inputs, step.targets, step.logits, nn.Sequential(kept)))) == 0.0


def test_pact_activations_come_through_the_plan_and_are_stored_as_uniform(tmp_path: Path) -> None:
    method = PostTrainingQuantization(bits=4, act_bits=4, act_quantizer="pact", onnx=False)
    net, quantized, decoded = stored_and_decoded(method, tmp_path)
    pact = {name: layer.input_quantizer for name, layer in quant_layers(quantized).items()}
    assert all(isinstance(q, PACTQuantizer) for q in pact.values())
    assert not pact["0"].learning  # the normalised image has negative values: kept uniform, calibrated
    assert pact["3"].learning and pact["8"].learning
    assert float(pact["3"].alpha) == pytest.approx(float(pact["3"].observer.range()[1]))
    assert int(pact["3"].zero_point) == 0
    decoded_act = [layer.input_quantizer for layer in quant_layers(decoded).values()]
    assert all(type(q) is ActQuantizer for q in decoded_act)  # alpha is training state, not stored
    x = torch.randn(5, 3, 12, 12)
    assert torch.equal(decoded(x), quantized(x))


@pytest.mark.parametrize("options,key", [
    ({"act_quantizer": "uniform"}, "method.act_quantizer is 'uniform': PACT learns"), ({"act_symmetric": True}, "method.act_symmetric"),
    ({"act_bits": 32}, "method.act_bits"), ({"act_bits": 9}, r"method.act_bits: 9 bits .*'pact' act quantizer takes \(1\.\.8\)"),
])
def test_pact_refuses_what_it_cannot_learn(options: dict, key: str) -> None:
    with pytest.raises(MethodConfigError, match=key):
        PACT(**options)


def test_pact_equals_uniform_quantization_with_its_scale() -> None:
    q = PACTQuantizer(QuantScheme(4, symmetric=False, signed=False))
    q.clip_at(2.5)
    x = torch.linspace(-1, 4, 1001)
    y = q(x).detach()
    uniform = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, 15)
    assert torch.allclose(y, uniform, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_context(tmp_path_factory: pytest.TempPathFactory):
    from benchmarks.context import make_context
    from benchmarks.data.mnist import MNISTDataModule
    from benchmarks.schema import RecipeConfig, TrainerConfig
    from hardware.measured import LocalCPU

    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"no shared data at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("quant_ctx")
    dm = MNISTDataModule(data_dir=root / "data", source_dir=SHARED_DATA, batch_size=64, eval_batch_size=128,
                         val_size=256, train_subset=256, val_subset=128, test_subset=128, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    recipe = RecipeConfig(epochs=1, lr=0.01, weight_decay=0.0)
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0)

    def build(name: str):
        return make_context(dm, LocalCPU(warmup=1, repeats=3, min_time_s=0), recipe, trainer, 0, root / name)

    return build


def mnist_net() -> nn.Module:
    net = tiny_conv_net(in_chans=1, classes=10)
    return net


@needs_shared_data
@pytest.mark.parametrize("method", [
    QuantizationAwareTraining(finetune={"epochs": 1, "lr": 0.01}, calibration_batches=2, bits=8, act_bits=8),
    PACT(finetune={"epochs": 1, "lr": 0.01}, calibration_batches=2, bits=4, act_bits=4, alpha_decay=0.01),
    QuantizationAwareTraining(finetune={"epochs": 1, "lr": 0.01}, calibration_batches=2, bits=4, act_bits=4,
                              act_quantizer="pact"),
], ids=["qat8", "pact4", "qat4_pact_activations"])
def test_trained_quantization_stores_and_decodes(method, tiny_context) -> None:
    net = mnist_net()
    before = copy.deepcopy(net.state_dict())
    ctx = tiny_context(method.name)
    result = method.compress(net, ctx)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the baseline is untouched
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(load_model(result.stored_file, net)(x), result.model(x))
    bits = method.config.act_bits
    assert all(a == bits for _, a in result.layer_bits.values())
    assert result.metrics["bytes_weight_codes"] < sum(p.numel() for p in net.parameters()) * 4 / 3
    if isinstance(method, PACT):
        assert result.metrics["pact_layers"] == 2  # the first layer sees signed inputs: not PACT's
        assert result.metrics["mean_alpha"] > 0
    elif method.config.deploys_int8:  # 8/8: deployed for real, both accuracies recorded
        assert result.deployables["onnx"].is_file()
        assert abs(result.metrics["deployed_minus_simulated_top1"]) <= 10.0


@needs_shared_data
def test_ptq_through_the_context_records_simulated_and_deployed(tiny_context) -> None:
    net = mnist_net()
    result = PostTrainingQuantization(calibration_batches=2, observer="percentile").compress(net, tiny_context("ptq"))
    for key in ("simulated_top1", "deployed_top1", "deployed_minus_simulated_top1", "bytes_weight_codes", "bytes_total"):
        assert key in result.metrics
    assert result.metrics["bytes_total"] == result.stored_bytes


@needs_shared_data
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_runs_in_16_bits_and_halves_storage(dtype: str, tiny_context) -> None:
    net = mnist_net()
    result = HalfPrecision(dtype=dtype).compress(net, tiny_context(f"half_{dtype}"))
    assert isinstance(result.model, HalfPrecisionModel)
    assert next(result.model.model.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    params32 = sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point())
    assert result.metrics["bytes_weights16"] == params32 // 2
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(load_model(result.stored_file, net)(x), result.model(x))
    assert result.metrics["max_abs_logit_diff_vs_fp32"] < 0.1
    with pytest.raises(MethodConfigError, match="method.dtype"):
        HalfPrecision(dtype="fp8")
