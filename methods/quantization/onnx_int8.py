"""Deploy a fake-quantized model as a real int8 ONNX model, and evaluate it in ONNX Runtime.

The simulated model (:mod:`.fakequant`) computes in float on quantized values; the deployed
model computes in integers. This module builds the second from the first so that both
accuracies can be recorded (issue 5, "simulated and deployed accuracy"):

1. the fake-quant model is turned back into a plain float model whose weights are the
   dequantized stored integers (:func:`dequantized_float_model`) and exported to ONNX;
2. ONNX Runtime's static quantizer (``onnxruntime.quantization.quantize_static``, QDQ format:
   QuantizeLinear/DequantizeLinear pairs that the CPU provider fuses into ``QLinearConv``,
   ``QLinearMatMul``, ``QLinearAdd``...) writes the int8 model. Our own parameters are imposed
   through ``TensorQuantOverrides``: each weight keeps exactly our integers, scales and
   zero-points, and each conv/linear input keeps our calibrated activation scale. The tensors we
   do not simulate (outputs of conv layers before residual additions, the additions themselves,
   pooling) are calibrated by ONNX Runtime on the same calibration batches, as an int8 runtime
   must quantize them too. That is where simulated and deployed accuracy can differ.
3. :func:`onnx_accuracy` runs a model in ONNX Runtime over a dataloader.

Only 8-bit weights and activations have an integer kernel in ONNX Runtime's CPU provider;
other bit-widths are refused here with that reason (their models stay simulated).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.quantization.fakequant import ActQuantizer, QuantConv2d, conv2d_like, quant_layers
from methods.quantization.uniform import QuantizationError

log = logging.getLogger(__name__)

#: ONNX Runtime's calibration methods by our observer names (MSE has no ORT counterpart: min-max).
ORT_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "mse": "MinMax"}


def dequantized_float_model(model: nn.Module) -> nn.Module:
    """A plain float copy of a fake-quant model: quant layers become nn.Conv2d / nn.Linear whose
    weights are the dequantized integers (what the stored file holds)."""
    plain = copy.deepcopy(model).eval()
    for name, layer in quant_layers(plain).items():
        with torch.no_grad():
            weight = layer.weight_quantizer(layer.weight).detach().clone()
        if isinstance(layer, QuantConv2d):
            new: nn.Module = conv2d_like(nn.Conv2d, layer)
        else:
            new = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        new.weight = nn.Parameter(weight)
        if layer.bias is not None:
            new.bias = nn.Parameter(layer.bias.detach().clone())
        plain.set_submodule(name, new)
    return plain


def export_float_onnx(model: nn.Module, sample: torch.Tensor, path: Path, opset: int = 17) -> Path:
    """Export a float model with a dynamic batch dimension (input ``input``, output ``output``)."""
    model = model.cpu().eval()
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample.cpu(),), str(path), input_names=["input"], output_names=["output"],
                          opset_version=opset, dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          dynamo=False)
    return path


def _quant_type(signed: bool) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if signed else QuantType.QUInt8


def tensor_overrides(model: nn.Module, onnx_path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """TensorQuantOverrides imposing our weight integers and activation scales on the ONNX graph.

    Conv and Gemm/MatMul nodes are matched to our layers through their weight initializers,
    which the exporter names ``<module>.weight``. Returns (overrides, layers that matched).
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    initializers = {init.name for init in graph.initializer}
    layers = quant_layers(model)
    overrides: dict[str, list[dict[str, Any]]] = {}
    matched = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight_name = node.input[1]
        name = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else None
        if name not in layers or weight_name not in initializers:
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            continue  # weight stored transposed: its channel axis is not ours
        layer = layers[name]
        wq = layer.weight_quantizer
        wtype = _quant_type(wq.scheme.signed)
        wdtype = np.int8 if wq.scheme.signed else np.uint8
        if wq.scheme.per_channel:
            overrides[weight_name] = [
                {"quant_type": wtype, "scale": np.float32(s), "zero_point": wdtype(z), "axis": wq.scheme.ch_axis}
                for s, z in zip(wq.scale.tolist(), wq.zero_point.tolist(), strict=True)
            ]
        else:
            overrides[weight_name] = [{"quant_type": wtype, "scale": np.float32(wq.scale[0]),
                                       "zero_point": wdtype(wq.zero_point[0])}]
        aq = layer.input_quantizer
        if isinstance(aq, ActQuantizer):
            adtype = np.int8 if aq.scheme.signed else np.uint8
            overrides[node.input[0]] = [{"quant_type": _quant_type(aq.scheme.signed),
                                         "scale": np.array(float(aq.scale), dtype=np.float32),
                                         "zero_point": np.array(int(aq.zero_point), dtype=adtype)}]
        matched.append(name)
    return overrides, matched


class _BatchReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of input batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {"input": x}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI dot-product instructions (None: not x86 or unknown).

    Without VNNI, ONNX Runtime's (MLAS) u8 x s8 kernels multiply-add pairs of products into
    saturating int16 (``vpmaddubsw``): two products of a 0..255 activation and a +-127 weight
    overflow, and the int8 model's outputs are wrong. ONNX Runtime's documented remedy is
    ``reduce_range``: 7-bit weights, for which ``2 * 255 * 64 < 2**15``.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None or "sse2" not in flags:
        return None
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_saturates(weight_qmax: int, act_levels: int) -> bool:
    """Whether u8 x s8 pair sums may overflow int16 on this CPU (see :func:`cpu_has_vnni`)."""
    return cpu_has_vnni() is False and 2 * act_levels * weight_qmax > 2**15 - 1


def check_int8(model: nn.Module) -> None:
    """Refuse, with the reason, models ONNX Runtime cannot run with 8-bit integer kernels.

    Codes of fewer than 8 bits fit int8 and run exactly (no faster); activations must be 1..8 bits.
    A model whose 8-bit codes would saturate this CPU's kernels is only warned about: its deployed
    accuracy shows the damage (set ``reduce_range`` to avoid it).
    """
    for name, layer in quant_layers(model).items():
        act = layer.act_scheme
        if layer.weight_bits > 8 or act is None or act.bits > 8:
            raise QuantizationError(
                f"layer {name!r} is {layer.weight_bits}-bit weights / {layer.act_bits}-bit activations: ONNX Runtime's "
                "CPU provider has integer kernels for 8 bits only; set bits <= 8 and act_bits <= 8 to deploy"
            )
        wq = layer.weight_quantizer.scheme.qrange()
        aq = act.qrange()
        if int8_saturates(max(abs(wq[0]), abs(wq[1])), aq[1] - aq[0]):
            log.warning("layer %r: 8-bit weights x 8-bit activations saturate int16 on this CPU (no VNNI); "
                        "use reduce_range to deploy exactly", name)


def export_int8(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    out_path: Path,
    calibrate_method: str = "minmax",
    opset: int = 17,
) -> Path:
    """Write the int8 QDQ ONNX model of a (decoded, frozen) 8-bit fake-quant model.

    ``calibration``: input batches for the tensors we do not calibrate ourselves.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    check_int8(model)
    batches = [x.detach().cpu().float().numpy() for x in calibration]
    if not batches:
        raise QuantizationError("export_int8 needs at least one calibration batch")
    out_path = Path(out_path)
    float_path = out_path.with_name(out_path.stem + "_fp32.onnx")
    export_float_onnx(dequantized_float_model(model), torch.from_numpy(batches[0][:1]), float_path, opset)
    overrides, matched = tensor_overrides(model, float_path)
    missing = sorted(set(quant_layers(model)) - set(matched))
    if missing:
        log.warning("int8 export: no ONNX node matched layers %s; ONNX Runtime calibrates them itself", missing)
    layers = list(quant_layers(model).values())
    per_channel = any(layer.weight_quantizer.scheme.per_channel for layer in layers)
    act_signed = any(isinstance(q := layer.input_quantizer, ActQuantizer) and q.scheme.signed for layer in layers)
    quantize_static(
        str(float_path), str(out_path), _BatchReader(batches),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=_quant_type(act_signed),
        weight_type=_quant_type(True),
        calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION.get(calibrate_method, "MinMax")),
        extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return out_path


def ort_session(onnx_path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_accuracy(onnx_path: Path, loader: Iterable[Any], max_batches: int | None = None,
                  threads: int | None = None) -> dict[str, float]:
    """Top-1 (percent), mean cross-entropy and sample count of an ONNX classifier over ``loader``."""
    session = ort_session(onnx_path, threads)
    input_name = session.get_inputs()[0].name
    seen = correct = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = torch.from_numpy(session.run(None, {input_name: x.numpy().astype(np.float32)})[0])
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    if seen == 0:
        raise QuantizationError("onnx_accuracy: the loader gave no samples")
    return {"top1": 100.0 * correct / seen, "loss": loss_sum / seen, "samples": seen}


def onnx_ops(onnx_path: Path, optimized: bool = True) -> dict[str, int]:
    """Operator counts of the model ONNX Runtime actually runs (after its graph fusions when
    ``optimized``): shows whether QDQ became QLinearConv & co. or stayed float."""
    import tempfile

    import onnx
    import onnxruntime as ort

    path = Path(onnx_path)
    if optimized:
        tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
        tmp.close()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = tmp.name
        options.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        path = Path(tmp.name)
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if optimized:
        path.unlink(missing_ok=True)
    return counts
