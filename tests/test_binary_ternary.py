"""Binary and ternary weights (issue 15): BinaryConnect, BWN, XNOR-Net, TWN, TTQ, LAB, and their bit-packed files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.context import make_context
from hardware.layers import describe_layers
from hardware.measured import LocalCPU
from methods import create_method
from methods.base import MethodConfigError
from methods.quantization.binary import sign_ste, weight_quantizer
from methods.quantization.quantizers import create_quantizer
from methods.quantization.uniform import QuantizationError, QuantScheme
from methods.storage import load_model, read_entries, read_state, save_model
from methods.storage.codebook import codebook_entry
from methods.storage.codecs import sign_entry
from tests.test_quantization_codebook import blob_task

METHODS = ("binaryconnect", "bwn", "xnor", "twn", "ttq", "lab")


class SmallNet(nn.Module):
    """Two convolutions and two linear layers: a first, two middle and a last layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.conv1(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    data, recipe, trainer, model, factory = blob_task(SmallNet, tmp_path_factory)
    return data, recipe, trainer, model.eval(), factory


def _compress(task, name: str, **overrides):
    data, recipe, trainer, model, factory = task
    ctx = make_context(data, LocalCPU(), recipe, trainer, 0, factory.mktemp(name))
    return create_method(name, finetune={"epochs": 0.5, "lr": overrides.pop("lr", 0.01)}, **overrides).compress(model, ctx)


@pytest.fixture(scope="module")
def results(task):
    return {name: _compress(task, name) for name in METHODS}


# ------------------------------------------------------------------------------ the file
@pytest.mark.parametrize("axis", [None, 0])
def test_sign_codec_round_trips_exactly(tmp_path, axis) -> None:
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(13, 3, 3, 3, generator=g)  # 351 signs: not a whole number of bytes
    scale = torch.rand(13, generator=g) if axis == 0 else torch.tensor(0.37)
    expected = torch.where(weight >= 0, 1.0, -1.0) * (scale.reshape(-1, 1, 1, 1) if axis == 0 else scale)
    entry = sign_entry("w", weight >= 0, scale, axis)
    assert len(entry.data("signs")) == (weight.numel() + 7) // 8  # one bit per weight
    save_model(tmp_path / "m.cbm", [entry])
    assert torch.equal(read_state(tmp_path / "m.cbm").tensors["w"], expected)


def test_ternary_codebook_round_trips_exactly(tmp_path) -> None:
    codes = torch.randint(0, 3, (7, 11), generator=torch.Generator().manual_seed(2))
    centroids = torch.tensor([-0.25, 0.625])
    entry = codebook_entry("w", (7, 11), centroids, codes, 2, zero_code=True)
    assert len(entry.data("codes")) == (77 * 2 + 7) // 8  # two bits per weight
    save_model(tmp_path / "m.cbm", [entry])
    expected = torch.tensor([0.0, -0.25, 0.625])[codes]
    assert torch.equal(read_state(tmp_path / "m.cbm").tensors["w"], expected)


@pytest.mark.parametrize("name", METHODS)
def test_stored_file_decodes_to_the_evaluated_model(task, results, name) -> None:
    result = results[name]
    again = load_model(result.stored_file, task[3])
    x = torch.randn(32, 1, 8, 8)
    torch.testing.assert_close(again(x), result.model(x), rtol=0, atol=0)
    # every quantized weight is stored bit-packed (1 or 2 bits plus its scales), the rest as it is
    _header, entries = read_entries(result.stored_file)
    codecs = {e.name: e.codec for e in entries}
    for layer, (w_bits, _a_bits) in result.layer_bits.items():
        assert codecs[f"{layer}.weight"] == ("sign" if w_bits == 1 else "codebook")
    # 32x for 1 bit, 16x for 2 bits, less the scales (per channel for bwn, xnor) on these small layers
    assert result.metrics["quantized_layer_compression"] > (10 if name in ("twn", "ttq") else 20)


@pytest.mark.parametrize("name", METHODS)
def test_quantized_layers_take_two_or_three_values(results, name) -> None:
    result = results[name]
    expected = 3 if name in ("twn", "ttq") else 2
    modules = dict(result.model.named_modules())
    for layer in result.layer_bits:
        weight = modules[layer].weight.detach()
        per_channel = weight.reshape(weight.shape[0], -1)
        if name in ("bwn", "xnor"):  # one +-alpha pair per output channel
            assert all(len(torch.unique(row.abs())) == 1 for row in per_channel)
            assert len(torch.unique(torch.sign(weight))) == 2
        else:
            assert len(torch.unique(weight)) == expected, layer



def test_stochastic_binaryconnect_draws_its_signs_while_training(task, results) -> None:
    stochastic = _compress(task, "binaryconnect", stochastic=True).model
    deterministic = results["binaryconnect"].model
    assert not torch.equal(stochastic.fc1.weight, deterministic.fc1.weight)

def test_xnor_keeps_first_and_last_layers_float_and_binarizes_inputs(results) -> None:
    result = results["xnor"]
    assert result.layer_bits == {"conv2": (1, 1), "fc1": (1, 1)}
    model = result.model
    assert len(torch.unique(model.conv1.weight)) > 3 and len(torch.unique(model.fc2.weight)) > 3
    seen = {}
    model.fc1.input_quantizer.register_forward_hook(lambda _m, _i, out: seen.setdefault("fc1", out))
    model(torch.randn(4, 1, 8, 8))
    assert set(torch.unique(seen["fc1"]).tolist()) <= {-1.0, 1.0}


# ------------------------------------------------------------------------------ the quantizers
def test_xnor_scales_are_the_mean_absolute_weights() -> None:
    latent = torch.randn(6, 4, 3, 3)
    quantized = weight_quantizer("bwn", 1)(latent)
    alpha = latent.abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(quantized.abs().amax(dim=(1, 2, 3)), alpha)
    torch.testing.assert_close(quantized, alpha.reshape(-1, 1, 1, 1) * torch.where(latent >= 0, 1.0, -1.0))


def test_twn_threshold_and_scale() -> None:
    latent = torch.tensor([[-1.0, -0.1, 0.05, 0.2, 2.0, 0.0]])
    quantized = weight_quantizer("twn", 2, threshold=0.7)(latent)
    delta = 0.7 * latent.abs().mean()  # 0.39: only -1 and 2 lie beyond it
    assert float(delta) == pytest.approx(0.7 * 3.35 / 6)
    torch.testing.assert_close(quantized, torch.tensor([[-1.5, 0, 0, 0, 1.5, 0]]))


def test_ttq_gradients_are_the_papers() -> None:
    latent = torch.tensor([-1.0, -0.01, 0.02, 0.8], requires_grad=True)
    q = weight_quantizer("ttq", 2, initial=latent, threshold=0.05)
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    q(latent).backward(grad)
    wp, wn = float(q.positive.detach()), float(q.negative.detach())
    assert (wp, wn) == (pytest.approx(0.8), pytest.approx(1.0))
    torch.testing.assert_close(latent.grad, torch.tensor([1.0 * wn, 2.0, 3.0, 4.0 * wp]))
    assert float(q.positive.grad) == 4.0 and float(q.negative.grad) == -1.0


def test_ste_passes_gradients_only_inside_the_clip_range() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x, 1.0)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]
    # BinaryConnect clips at its H, the same rule
    h = 0.25
    latent = torch.tensor([-0.3, -0.2, 0.1, 0.26], requires_grad=True)
    weight_quantizer("binaryconnect", 1, h=h)(latent).sum().backward()
    assert latent.grad.tolist() == [0, h, h, 0]


def test_lab_scale_is_curvature_weighted_and_gradient_preconditioned() -> None:
    q = weight_quantizer("lab", 1, shape=(4,), beta2=0.5)
    latent = nn.Parameter(torch.tensor([0.5, -0.1, 0.2, -0.4]))
    assert float(q.scale(latent)) == pytest.approx(0.3)  # no curvature yet: the mean |w|
    latent.grad = torch.tensor([2.0, 1.0, 1.0, 1.0])
    q.before_step(latent)
    d = torch.tensor([2.0, 1.0, 1.0, 1.0])  # sqrt(bias-corrected v) = |g| after one step
    torch.testing.assert_close(latent.grad, torch.ones(4), atol=1e-6, rtol=0)
    assert float(q.scale(latent)) == pytest.approx(float((d * latent.detach().abs()).sum() / d.sum()), rel=1e-6)


# ------------------------------------------------------------------------------ impossible requests
@pytest.mark.parametrize(("name", "bits"), [("bwn", 2), ("twn", 1), ("ttq", 3), ("lab", 8)])
def test_a_width_the_quantizer_cannot_take_is_refused(name, bits) -> None:
    with pytest.raises(QuantizationError, match=rf"{bits} bits is not a width the '{name}' weight quantizer takes"):
        create_quantizer(name, "weight", QuantScheme(bits=bits, symmetric=False), initial=torch.ones(2))


@pytest.mark.parametrize(("name", "key", "value"), [("twn", "threshold", 1.2), ("ttq", "threshold", 0.0),
                                                    ("ttq", "finetune", {"epochs": 0}), ("lab", "beta2", 1.0)])
def test_impossible_settings_name_their_key(name, key, value) -> None:
    with pytest.raises(MethodConfigError, match=rf"method\.{key}"):
        create_method(name, **{key: value})


def test_a_layer_pattern_matching_nothing_is_refused(task) -> None:
    with pytest.raises(MethodConfigError, match=r"method\.layers\.exclude"):
        _compress(task, "bwn", layers={"exclude": ["nope*"]})



# ------------------------------------------------------------------------------ the targets and 1-2 bits
def test_bitfusion_runs_binary_layers_at_its_bit_serial_rate_and_says_how(results, task) -> None:
    from hardware import registry

    bitfusion = registry.instantiate("bitfusion")
    model, shape = results["bwn"].model, (1, 1, 8, 8)
    float_report = bitfusion.latency(model, shape, describe_layers(model, shape))
    binary_report = bitfusion.latency(model, shape, describe_layers(model, shape, results["bwn"].layer_bits))
    assert binary_report.latency_ms < float_report.latency_ms
    assert any("1 run as 2-bit" in note for note in binary_report.notes)
    assert not any("1 run as 2-bit" in note for note in float_report.notes)



def test_a_fixed_precision_target_says_it_runs_binary_layers_wider(results) -> None:
    from hardware import registry

    model, shape = results["xnor"].model, (1, 1, 8, 8)
    report = registry.instantiate("titanxp").latency(model, shape, describe_layers(model, shape, results["xnor"].layer_bits))
    assert any("bit-widths [1] run at the device's supported precisions [8, 32]" in note for note in report.notes)

def test_a_measured_target_says_it_cannot_use_the_low_precision(results) -> None:
    model, shape = results["xnor"].model, (1, 1, 8, 8)
    cpu = LocalCPU(warmup=1, repeats=3, min_time_s=0)
    low = cpu.latency(model, shape, describe_layers(model, shape, results["xnor"].layer_bits))
    assert any("bit-widths below 32 are not used" in note for note in low.notes)
    assert not any("bit-widths below 32" in note for note in cpu.latency(model, shape).notes)
