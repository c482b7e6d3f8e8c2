"""The model zoo: timm registration, architectures' numbers, checkpoints, export."""
from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from torch import nn

from benchmarks.models import (
    CheckpointMismatchError,
    PretrainedDownloadError,
    build_model,
    load_pretrained,
    model_code_version,
    zoo_model_names,
)
from benchmarks.models.mobilenetv1 import CHANNEL_PLANS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AKAMASTER_DIR = SHARED_DATA / "weights" / "akamaster-resnet-cifar10"
SAMPLES_DIR = SHARED_DATA / "samples" / "lossless-test-samples"
CONF_MODEL_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

#: issue 16's efficient architectures at ImageNet size; each has a ``<name>_cifar`` variant for 32x32 inputs
EFFICIENT_IMAGENET = (
    "squeezenet1_0", "squeezenet1_1", "shufflenet_v1", "shufflenet_v2", "mobilenetv3_small", "mobilenetv3_large",
)
EXPECTED_MODELS = {
    "lenet_300_100", "mlp", "lenet5",
    "resnet20_cifar", "resnet32_cifar", "resnet44_cifar", "resnet56_cifar", "resnet110_cifar",
    "mobilenetv1", "mobilenetv1_075", "mobilenetv1_amc_0_5flops", "mobilenetv1_amc_0_5time",
    "mobilenetv2_cifar", "searched", "proxyless_supernet",
    *EFFICIENT_IMAGENET,
    *(f"{name}_cifar" for name in EFFICIENT_IMAGENET),
}
#: factory arguments a model's yaml sets (the others set none)
CONFIG_KWARGS = {
    "shufflenet_v1": {"groups": 3, "width_mult": 1.0}, "shufflenet_v1_cifar": {"groups": 3, "width_mult": 1.0},
    "shufflenet_v2": {"width_mult": 1.0}, "shufflenet_v2_cifar": {"width_mult": 1.0},
    "searched": {"arch": "${model.arch}", "drop_rate": 0.0},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_registers_every_model_in_timm():
    assert set(zoo_model_names()) == EXPECTED_MODELS
    assert set(timm.list_models("resnet*_cifar")) >= {"resnet20_cifar", "resnet110_cifar"}


# The ImageNet-size efficient nets are counted (test_parameter_counts), not run at 224 px, but for the cheapest;
# `searched` needs an architecture file (tests/test_nas_proxyless.py builds it from one).
@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS - set(EFFICIENT_IMAGENET) - {"searched"} | {"mobilenetv3_small"}))
def test_every_model_builds_through_timm_and_runs_at_its_input_size(name):
    num_classes = 7
    model = timm.create_model(name, num_classes=num_classes).eval()
    channels, height, width = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        logits = model(torch.randn(2, channels, height, width))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["lenet5", "lenet_300_100", "resnet20_cifar", "mobilenetv1"])
def test_in_chans_changes_the_first_layer(name):
    model = timm.create_model(name, in_chans=2, num_classes=3).eval()
    _, height, width = model.pretrained_cfg["input_size"]
    assert model.pretrained_cfg["input_size"][0] == 2
    with torch.no_grad():
        assert model(torch.randn(1, 2, height, width)).shape == (1, 3)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("lenet_300_100", 266_610),   # Han et al. 2015, Table 1: 784*300+300 + 300*100+100 + 100*10+10
        ("lenet5", 431_080),          # 520 + 25,050 + 400,500 + 5,010
        ("mlp", 2_395_210),           # Hinton et al. 2015's 1200-1200 teacher: 784*1200+1200 + 1200*1200+1200 + 12010
        ("resnet20_cifar", 269_722),  # He et al. 2016: 0.27M
        ("resnet110_cifar", 1_727_962),  # 1.7M
        ("mobilenetv1", 4_231_976),   # Howard et al. 2017 Table 8: 4.2M at 1000 classes
        ("squeezenet1_0", 1_248_424),  # Iandola et al. 2016, Table 1: 1,248,424
        ("squeezenet1_1", 1_235_496),  # SqueezeNet v1.1 (forresti/SqueezeNet): 1.24M
        ("shufflenet_v2", 2_278_604),  # Ma et al. 2018, Table 5: 2.3M at 1.0x
        ("mobilenetv3_large", 5_483_032),  # Howard et al. 2019, Table 3: 5.4M
        ("mobilenetv3_small", 2_542_856),  # Howard et al. 2019, Table 3: 2.5M
        ("shufflenet_v1", 1_865_728),  # Zhang et al. 2018 gives FLOPs only; ~1.9M for 1x, g=3 (authors' code)
    ],
)
def test_parameter_counts(name, expected):
    kwargs = {"num_classes": 1000} if name == "mobilenetv1" else {}
    assert n_params(timm.create_model(name, **kwargs)) == expected


def test_mlp_dropout_acts_in_training_only_and_bad_widths_or_rates_are_refused():
    model = timm.create_model("mlp", hidden_features=[800, 800], dropout=0.5, input_dropout=0.2)
    assert n_params(model) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="two hidden layers"):
        timm.create_model("mlp", hidden_features=[800])
    with pytest.raises(ValueError, match=r"dropout=1.0: a dropout probability lies in \[0, 1\)"):
        timm.create_model("mlp", dropout=1.0)


def test_mobilenetv1_amc_plan_sets_every_layer_width_and_stride():
    model = timm.create_model("mobilenetv1_amc_0_5time")
    plan = CHANNEL_PLANS["amc_0.5time"]
    assert plan == (16, 48, 88, 80, 192, 168, 336, 360, 360, 352, 352, 368, 768, 680)
    assert model.stem.conv.out_channels == plan[0]
    depthwise = [block.depthwise.conv for block in model.blocks]
    pointwise = [block.pointwise.conv for block in model.blocks]
    assert [conv.out_channels for conv in pointwise] == list(plan[1:])
    assert all(conv.groups == conv.in_channels == conv.out_channels for conv in depthwise)
    assert all(conv.kernel_size == (1, 1) and conv.groups == 1 for conv in pointwise)
    strided_blocks = [i + 1 for i, conv in enumerate(depthwise) if conv.stride == (2, 2)]
    assert strided_blocks == [2, 4, 6, 12]
    assert model.classifier.in_features == 680


def test_mobilenetv1_width_multiplier_and_cifar_stem():
    model = timm.create_model("mobilenetv1", width_mult=0.75, num_classes=10, cifar_stem=True).eval()
    assert model.channel_plan == CHANNEL_PLANS["0.75"]
    assert model.stem.conv.stride == (1, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    custom = timm.create_model("mobilenetv1", channel_plan=[8] * 14, num_classes=5)
    assert {block.pointwise.conv.out_channels for block in custom.blocks} == {8}
    with pytest.raises(ValueError, match="channel_plan needs 14"):
        timm.create_model("mobilenetv1", channel_plan=[8] * 13)


def test_mobilenetv2_cifar_keeps_resolution_where_documented():
    model = timm.create_model("mobilenetv2_cifar").eval()
    assert model.stem.conv.stride == (1, 1)
    features = model.head(model.blocks(model.stem(torch.randn(1, 3, 32, 32))))
    assert features.shape[-2:] == (4, 4)  # total stride 8 instead of ImageNet's 32
    half = timm.create_model("mobilenetv2_cifar", width_mult=0.5)
    assert n_params(half) < n_params(model) / 2


def test_pretrained_true_refuses_to_download():
    with pytest.raises(PretrainedDownloadError, match="model.pretrained"):
        timm.create_model("resnet20_cifar", pretrained=True)
    with pytest.raises(ValueError, match="model.pretrained"):
        build_model("resnet20_cifar", num_classes=10, in_chans=3, pretrained=True)


def test_misspelt_factory_argument_is_not_swallowed():
    with pytest.raises(TypeError, match="widht_mult"):
        timm.create_model("mobilenetv1", widht_mult=0.5)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match="resnet21_cifar") as error:
        build_model("resnet21_cifar", num_classes=10, in_chans=3)
    assert "resnet20_cifar" in str(error.value)


def test_build_model_accepts_any_timm_model():
    model = build_model("mobilenetv3_small_050", num_classes=4, in_chans=1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 4)


def test_checkpoint_roundtrip_with_wrappers_and_data_parallel_prefix(tmp_path):
    source = timm.create_model("lenet5")
    target = timm.create_model("lenet5")
    path = tmp_path / "lenet5.pth"
    wrapped = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, path)
    load_pretrained(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    built = build_model("lenet5", num_classes=10, in_chans=1, pretrained=str(path))
    assert torch.equal(built.fc2.weight, source.fc2.weight)


def test_checkpoint_of_wrong_model_names_the_keys(tmp_path):
    path = tmp_path / "lenet5.pth"
    torch.save({"state_dict": timm.create_model("lenet5").state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_pretrained(timm.create_model("lenet_300_100"), path)
    message = str(error.value)
    assert "missing keys (2): fc3.weight, fc3.bias" in message
    assert "unexpected keys (4): conv1.weight, conv1.bias, conv2.weight, conv2.bias" in message
    assert "shape mismatches (4)" in message and "fc1.weight checkpoint [500, 800] vs model [300, 784]" in message
    assert "likely fix" in message
    assert error.value.missing_keys == ["fc3.weight", "fc3.bias"]


def test_checkpoint_with_other_class_count_reports_shapes(tmp_path):
    path = tmp_path / "resnet20.pth"
    torch.save(timm.create_model("resnet20_cifar", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"linear.weight checkpoint \[10, 64\] vs model \[100, 64\]"):
        load_pretrained(timm.create_model("resnet20_cifar", num_classes=100), path)


def test_missing_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        load_pretrained(timm.create_model("lenet5"), tmp_path / "absent.pth")


def test_model_code_version_tracks_the_defining_module():
    ours = model_code_version("resnet20_cifar")
    assert len(ours) == 12 and int(ours, 16) >= 0
    assert ours == model_code_version("resnet56_cifar")  # same module, same code
    assert ours != model_code_version("lenet5")
    assert model_code_version("mobilenetv3_small_100") == model_code_version("mobilenetv3_large_100")
    assert model_code_version("mobilenetv3_small_100") != model_code_version("resnet18")


def test_resnet_cifar_copies_pickles_and_traces():
    model = timm.create_model("resnet20_cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(copy.deepcopy(model)(x), expected)
        assert torch.allclose(pickle.loads(pickle.dumps(model))(x), expected)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), expected, atol=1e-6)


def test_resnet_cifar_prunes_structurally_when_residual_stream_is_kept():
    tp = pytest.importorskip("torch_pruning")
    model = timm.create_model("resnet20_cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    kept = model.residual_stream_convs()
    assert len(kept) == 1 + 9
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
        ignored_layers=[*kept, model.linear],
    )
    pruner.step()
    assert model.layer2[0].conv1.out_channels == 16 and model.layer2[0].conv2.out_channels == 32
    with torch.no_grad():
        assert model(x).shape == (1, 10)


@pytest.mark.parametrize(
    "name, kwargs, input_size",
    [("resnet20_cifar", {}, 32), ("mobilenetv1", {"width_mult": 0.25, "num_classes": 10}, 64),
     *((f"{name}_cifar", {}, 32) for name in EFFICIENT_IMAGENET if name != "mobilenetv3_large")],
)
def test_onnx_export_matches_pytorch(tmp_path, name, kwargs, input_size):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, input_size, input_size)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(x).numpy(), rtol=1e-3, atol=1e-4)


def test_every_model_has_a_config():
    import yaml

    for name in EXPECTED_MODELS:
        config = yaml.safe_load((CONF_MODEL_DIR / f"{name}.yaml").read_text())
        if name == "searched":  # its architecture file is a key of its own (model.arch=<file>)
            assert config.pop("arch") is None
        assert config == {"name": name, "kwargs": CONFIG_KWARGS.get(name, {}), "pretrained": None}
    for depth in (20, 32, 44, 56):
        config = yaml.safe_load((CONF_MODEL_DIR / f"resnet{depth}_cifar_pretrained.yaml").read_text())
        assert config["name"] == f"resnet{depth}_cifar"
        file_name = config["pretrained"].rsplit("/", 1)[-1]
        assert config["pretrained"].startswith("${paths.source_data_dir}/weights/akamaster-resnet-cifar10/")
        if AKAMASTER_DIR.is_dir():
            assert (AKAMASTER_DIR / file_name).is_file()


def _cifar10_samples() -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    paths = sorted(SAMPLES_DIR.glob("cifar10_*.png"))
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0) for p in paths]
    batch = torch.stack(images).permute(0, 3, 1, 2)
    labels = torch.tensor([int(p.stem.split("_")[2]) for p in paths])
    return (batch - IMAGENET_MEAN) / IMAGENET_STD, labels


@pytest.mark.skipif(not AKAMASTER_DIR.is_dir() or not SAMPLES_DIR.is_dir(), reason="shared data absent")
def test_akamaster_checkpoint_loads_strictly_and_classifies_cifar10():
    depth = 20  # 20/20 here; ResNet-32/44/56 score 19/20/20
    model = build_model("resnet20_cifar", num_classes=10, in_chans=3, pretrained=AKAMASTER_DIR / "resnet20-12fca82f.th")
    images, labels = _cifar10_samples()
    assert images.shape == (20, 3, 32, 32)
    with torch.no_grad():
        correct = (model.eval()(images).argmax(1) == labels).sum().item()
    assert correct >= 17, f"resnet{depth}_cifar: {correct}/20 correct"


@pytest.mark.skipif(not AKAMASTER_DIR.is_dir(), reason="shared data absent")
def test_akamaster_weights_do_not_fit_a_deeper_resnet():
    with pytest.raises(CheckpointMismatchError, match="missing keys") as error:
        build_model("resnet32_cifar", num_classes=10, in_chans=3, pretrained=AKAMASTER_DIR / "resnet20-12fca82f.th")
    assert "layer1.3.conv1.weight" in str(error.value)


CIFAR_EFFICIENT = [f"{name}_cifar" for name in EFFICIENT_IMAGENET]


def _smallest_conv_map(model: nn.Module, x: torch.Tensor) -> int:
    """The smallest side of any conv output larger than 1x1 (pooled squeeze-excitation convs excluded)."""
    sides: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return min(side for side in sides if side > 1)


@pytest.mark.parametrize("name", CIFAR_EFFICIENT)
def test_cifar_variants_keep_4x4_maps_give_10_logits_and_train(name):
    from hardware.layers import describe_layers

    torch.manual_seed(0)
    model = timm.create_model(name)
    x = torch.randn(2, 3, 32, 32)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert _smallest_conv_map(model, x) == 4  # total stride 8; the ImageNet strides (32) would leave 1x1
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert model(x[:1]).shape == (1, 10)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert first_conv.weight.grad.abs().sum() > 0
    described = {layer.name for layer in describe_layers(model, (1, 3, 32, 32))}
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs <= described  # the one layer tracer sees every conv of torchvision's and timm's containers


@pytest.mark.parametrize("name", [*CIFAR_EFFICIENT, "mobilenetv2_cifar", "resnet20_cifar"])
def test_cifar_variants_state_the_statistics_cifar10_jpeg_normalises_with(name):
    """timm's resolve_data_config reads them: a model must not claim statistics its data never had."""
    dataset = yaml.safe_load((CONF_MODEL_DIR.parent / "dataset" / "cifar10_jpeg.yaml").read_text())
    cfg = timm.create_model(name).pretrained_cfg
    assert list(cfg["mean"]) == dataset["mean"] and list(cfg["std"]) == dataset["std"]


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenet_v1", "shufflenet_v2"])
def test_in_chans_rebuilds_the_stem_of_imagenet_and_cifar_variants(name):
    for variant, size in ((name, 64), (f"{name}_cifar", 32)):
        model = timm.create_model(variant, in_chans=1, num_classes=3).eval()
        assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 1
        with torch.no_grad():
            assert model(torch.randn(1, 1, size, size)).shape == (1, 3)


def test_shufflenet_v1_groups_and_widths_follow_table_1():
    from benchmarks.models.shufflenet_v1 import STAGE_CHANNELS, ChannelShuffle

    assert torch.equal(ChannelShuffle(3)(torch.arange(6.0).view(1, 6, 1, 1)).flatten(), torch.tensor([0, 2, 4, 1, 3, 5.0]))
    assert STAGE_CHANNELS[8] == (384, 768, 1536) and STAGE_CHANNELS[1] == (144, 288, 576)
    for groups in (1, 2, 4, 8):
        model = timm.create_model("shufflenet_v1", groups=groups)
        unit = model.stage3[1]
        assert unit.branch[0].groups == groups and unit.branch[6].groups == groups
        assert model.stage2[0].branch[0].groups == 1  # stage 2's first pointwise conv is not grouped
        assert model.classifier.in_features == STAGE_CHANNELS[groups][-1]
    half = timm.create_model("shufflenet_v1", groups=3, width_mult=0.5)
    assert half.stage_channels == (120, 240, 480)
    with pytest.raises(ValueError, match="groups=5.*model.kwargs.groups"):
        timm.create_model("shufflenet_v1", groups=5)


def test_shufflenet_v2_widths_have_the_papers_sizes():
    counts = {width: n_params(timm.create_model("shufflenet_v2", width_mult=width)) for width in (0.5, 1.5, 2.0)}
    assert {width: round(count / 1e6, 1) for width, count in counts.items()} == {0.5: 1.4, 1.5: 3.5, 2.0: 7.4}
    with pytest.raises(ValueError, match="width_mult=0.75.*model.kwargs.width_mult"):
        timm.create_model("shufflenet_v2", width_mult=0.75)
