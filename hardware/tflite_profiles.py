"""Parser of TF-Lite ``benchmark_model`` per-operator profiles of MobileNetV1 channel plans.

The ``tflite_benchmark_model`` profile format of ``hardware.opcost``: a folder holds the
output of TF-Lite's ``benchmark_model`` for MobileNetV1 variants on one device,
``<prefix>_run<N>.txt`` per run, and a README whose table gives the channel plan of each
prefix. The Pixel-1 profiles published with AMC (``../shared/reference/pixel1-amc-tflite``:
four variants, float, one thread, batch 1, 224x224, three runs each; He et al., "AMC",
ECCV 2018, Sec. 4.3 and Table 3 of Han et al., "Design Automation for Efficient Deep
Learning Computing", 2019) are one such folder; another device's profiles are another.

This module only reads data: it parses the "Run Order" table of each profile (operator
type, average ms, in run order), the whole-model "no stats" average, the channel plans
of the README, and rebuilds the MobileNetV1 layer list of each plan as
:class:`hardware.layers.LayerSpec` records so that a cost model can be fitted on layer
shapes without a torch model. Operators are matched to layers by run order and checked
by type; a mismatch raises an error naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev

from hardware.layers import LayerSpec

#: TF-Lite node type -> LayerSpec.op of the layer it executes.
TFLITE_OP_TO_LAYER_OP = {
    "CONV_2D": "conv",
    "DEPTHWISE_CONV_2D": "dwconv",
    "AVERAGE_POOL_2D": "pool",
    "SQUEEZE": "reshape",
    "RESHAPE": "reshape",
    "SOFTMAX": "softmax",
}
#: Operators of the graph's tail (after the classifier), which differ between exports.
_TAIL_OPS = ("reshape", "softmax")

_NO_STATS = re.compile(r"no stats:\s*([0-9.]+)")
_THREADS = re.compile(r"Num threads:\s*\[(\d+)\]")
_GRAPH = re.compile(r"Graph:\s*\[([^\]]+)\]")
_INPUT_SHAPE = re.compile(r"Input shapes:\s*\[([0-9,]+)\]")
_RUN_FILE = re.compile(r"^(?P<prefix>.+)_run(?P<run>\d+)\.txt$")


@dataclass
class ProfiledOp:
    """One row of a profile's "Run Order" table."""

    node_type: str
    start_ms: float
    first_ms: float
    avg_ms: float
    name: str
    line: int = 0  # line of the file (errors name it)


@dataclass
class TFLiteProfile:
    """One ``benchmark_model`` output file."""

    path: Path
    graph: str
    num_threads: int
    input_shape: tuple[int, ...]
    whole_model_ms: float  # the "no stats" average (timing without per-op profiling)
    ops: list[ProfiledOp]


@dataclass
class ReferenceModel:
    """One MobileNetV1 variant of the reference folder: its plan, layers and runs."""

    prefix: str
    first_conv: int
    blocks: list[tuple[int, int]]  # (out_channels, stride) per depthwise-separable block
    profiles: list[TFLiteProfile] = field(default_factory=list)
    published_ms: float | None = None

    @property
    def name(self) -> str:
        """The profiled network, as validation reports name it."""
        return f"mobilenetv1-{self.prefix}"

    @property
    def measured_ms(self) -> float:
        """Whole-model latency: mean over runs of the "no stats" averages."""
        return mean(p.whole_model_ms for p in self.profiles)

    @property
    def measured_spread_ms(self) -> float:
        return pstdev([p.whole_model_ms for p in self.profiles]) if len(self.profiles) > 1 else 0.0

    def layers(self) -> list[LayerSpec]:
        """The layers of the plan, in run order, including the graph's tail operators."""
        input_size = self.profiles[0].input_shape[1] if self.profiles else 224
        body = mobilenetv1_layers(self.first_conv, self.blocks, input_size=input_size)
        if not self.profiles:
            return body
        tail_ops = self.profiles[0].ops[len(body) :]
        num_classes = body[-1].out_channels
        return body + [_tail_spec(op, num_classes) for op in tail_ops]

    def per_layer_ms(self) -> list[float]:
        """Per-operator average over runs, in run order (one value per layer of ``layers()``)."""
        n = len(self.profiles[0].ops)
        return [mean(p.ops[i].avg_ms for p in self.profiles) for i in range(n)]


def parse_profile(path: str | Path) -> TFLiteProfile:
    """Parse one ``benchmark_model`` output (the first "Run Order" table only)."""
    path = Path(path)
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "Run Order" in line)
    except StopIteration:
        raise ValueError(f"{path}: no 'Run Order' table; is this a TF-Lite benchmark_model profile?") from None
    ops: list[ProfiledOp] = []
    for number, line in enumerate(lines[start + 2 :], start=start + 3):
        if not line.strip() or line.lstrip().startswith("="):
            break
        cols = line.split()
        # node type, start, first, avg ms, %, cdf%, mem KB, times called, [name]
        if len(cols) < 9:
            raise ValueError(f"{path} line {number}: cannot parse profile row {line.strip()!r}")
        if cols[0] not in TFLITE_OP_TO_LAYER_OP:
            raise ValueError(f"{path} line {number}: unknown operator {cols[0]!r}; the reader knows "
                             f"{sorted(TFLITE_OP_TO_LAYER_OP)} (add the new one to TFLITE_OP_TO_LAYER_OP)")
        ops.append(
            ProfiledOp(
                node_type=cols[0],
                start_ms=float(cols[1]),
                first_ms=float(cols[2]),
                avg_ms=float(cols[3]),
                name=cols[-1].strip("[]"),
                line=number,
            )
        )
    no_stats = _NO_STATS.search(text)
    if no_stats is None:
        raise ValueError(f"{path}: no whole-model 'no stats' average")
    threads = _THREADS.search(text)
    graph = _GRAPH.search(text)
    shape = _INPUT_SHAPE.search(text)
    return TFLiteProfile(
        path=path,
        graph=graph.group(1) if graph else "",
        num_threads=int(threads.group(1)) if threads else 1,
        input_shape=tuple(int(v) for v in shape.group(1).split(",")) if shape else (1, 224, 224, 3),
        whole_model_ms=float(no_stats.group(1)) / 1000.0,
        ops=ops,
    )


def parse_channel_plans(readme: str | Path) -> tuple[dict[str, tuple[int, list[tuple[int, int]]]], dict[str, float]]:
    """Channel plans (first conv, blocks) per file prefix, and published whole-model ms.

    Reads the markdown table of the reference README: ``| prefix (note) | 32 | 64, (128,2), ... |``.
    """
    text = Path(readme).read_text()
    plans: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) != 3 or not cols[1].isdigit():
            continue
        prefix = cols[0].split()[0]
        blocks = []
        for token in re.findall(r"\(\s*\d+\s*,\s*\d+\s*\)|\d+", cols[2]):
            nums = [int(v) for v in re.findall(r"\d+", token)]
            blocks.append((nums[0], nums[1] if len(nums) > 1 else 1))
        plans[prefix] = (int(cols[1]), blocks)
    published: dict[str, float] = {}
    pub = re.search(r"Published whole-model figures:(.*?)(?:\n\n|$)", text, re.S)
    if pub:
        figures = [float(v) for v in re.findall(r"([0-9.]+)\s*ms", pub.group(1))]
        # The README lists them in table order.
        for prefix, ms in zip(plans, figures, strict=False):
            published[prefix] = ms
    return plans, published


def load_reference(folder: str | Path) -> list[ReferenceModel]:
    """All variants of the reference folder, with their runs parsed and checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"profile folder {str(folder)!r} does not exist: set hw.reference_dir to the folder holding the "
            "device's TF-Lite profiles (for pixel1: ../shared/reference/pixel1-amc-tflite)"
        )
    readme = folder / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{readme} is missing: it holds the channel plans of the profiled models")
    plans, published = parse_channel_plans(readme)
    if not plans:
        raise ValueError(f"{readme}: no channel-plan table found")
    models = []
    for prefix, (first_conv, blocks) in plans.items():
        numbered = [(m, p) for p in folder.iterdir() if (m := _RUN_FILE.match(p.name)) and m.group("prefix") == prefix]
        runs = [p for m, p in sorted(numbered, key=lambda mp: int(mp[0].group("run")))]
        if not runs:
            raise FileNotFoundError(f"{folder}: no profile files '{prefix}_run<N>.txt' for plan {prefix!r}")
        model = ReferenceModel(prefix, first_conv, blocks, [parse_profile(p) for p in runs], published.get(prefix))
        _check_alignment(model)
        models.append(model)
    return models


def _check_alignment(model: ReferenceModel) -> None:
    layers = model.layers()
    for profile in model.profiles:
        if len(profile.ops) != len(layers):
            raise ValueError(
                f"{profile.path}: {len(profile.ops)} operators, but the channel plan of {model.prefix!r} "
                f"gives {len(layers)} layers"
            )
        for op, layer in zip(profile.ops, layers, strict=True):
            expected = TFLITE_OP_TO_LAYER_OP.get(op.node_type)
            if expected != layer.op or (layer.op in _TAIL_OPS and op.node_type != layer.module_type):
                raise ValueError(
                    f"{profile.path} line {op.line}: operator {op.name} is {op.node_type}, expected the {layer.op} "
                    f"layer {layer.name} of the channel plan {model.prefix!r}"
                )


def _conv_spec(name, op, cin, cout, size, kernel, stride, groups, batch=1) -> tuple[LayerSpec, int]:
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1 if stride > 1 else size
    params = cout * (cin // groups) * kernel * kernel + cout  # folded batch norm -> bias
    macs = batch * out * out * cout * (cin // groups) * kernel * kernel
    spec = LayerSpec(
        name=name,
        op=op,
        module_type="Conv2d",
        input_shape=(batch, cin, size, size),
        output_shape=(batch, cout, out, out),
        in_channels=cin,
        out_channels=cout,
        kernel=(kernel, kernel),
        stride=(stride, stride),
        padding=(pad, pad),
        groups=groups,
        params=params,
        nonzero_params=params,
        macs=macs,
    )
    return spec, out


def mobilenetv1_layers(
    first_conv: int,
    blocks: list[tuple[int, int]],
    input_size: int = 224,
    num_classes: int = 1001,
    batch_size: int = 1,
) -> list[LayerSpec]:
    """The layers TF-Lite executes for a MobileNetV1 channel plan, in run order.

    Batch norm is folded and ReLU6 fused into the convolutions (as in the deployed
    graph), so each depthwise-separable block is two operators. The classifier is a
    global average pool and a 1x1 convolution to ``num_classes``; the tail operators
    (squeeze or reshape, softmax) differ between exports and come from the profile.
    """
    layers = []
    b = batch_size
    spec, size = _conv_spec("Conv2d_0", "conv", 3, first_conv, input_size, 3, 2, 1, b)
    layers.append(spec)
    cin = first_conv
    for i, (cout, stride) in enumerate(blocks, start=1):
        spec, size = _conv_spec(f"Conv2d_{i}_depthwise", "dwconv", cin, cin, size, 3, stride, cin, b)
        layers.append(spec)
        spec, size = _conv_spec(f"Conv2d_{i}_pointwise", "conv", cin, cout, size, 1, 1, 1, b)
        layers.append(spec)
        cin = cout
    layers.append(
        LayerSpec(
            name="AvgPool_1a",
            op="pool",
            module_type="AvgPool2d",
            input_shape=(b, cin, size, size),
            output_shape=(b, cin, 1, 1),
            in_channels=cin,
            out_channels=cin,
            kernel=(size, size),
            stride=(size, size),
        )
    )
    spec, _ = _conv_spec("Conv2d_1c_1x1", "conv", cin, num_classes, 1, 1, 1, 1, b)
    layers.append(spec)
    return layers


def _tail_spec(op: ProfiledOp, num_classes: int) -> LayerSpec:
    kind = TFLITE_OP_TO_LAYER_OP.get(op.node_type)
    if kind not in _TAIL_OPS:
        raise ValueError(f"operator {op.name} ({op.node_type}) after the classifier is not a reshape or softmax")
    return LayerSpec(
        name=op.name.rsplit("/", 1)[-1],
        op=kind,
        module_type=op.node_type,
        input_shape=(1, num_classes, 1, 1) if kind == "reshape" else (1, num_classes),
        output_shape=(1, num_classes),
        in_channels=num_classes,
        out_channels=num_classes,
    )
