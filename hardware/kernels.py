"""The kernels a runtime executes for a traced model: its layers after the runtime's fusions.

A phone runtime does not run a network layer by layer: TF-Lite and ONNX Runtime fold
batch norm into the convolution before it and fuse the activation after it, so
conv+BN+ReLU is one kernel, and nn-Meter (Zhang et al., MobiSys 2021) showed that
latency is predicted best per such kernel. :func:`detect_kernels` reads the one layer
description (``hardware.layers.trace_model``, its execution sequence) and applies the
fusion rules:

- ``conv`` / ``dwconv`` / ``linear`` absorb a following batch norm of the same shape and
  an activation the runtime fuses (``FUSIBLE_ACTIVATIONS`` of the runtime);
- ``add`` absorbs a following fusible activation (TF-Lite's ADD with fused ReLU);
- squeeze-excitation (a global mean, 1x1 convolutions on the pooled vector, a gate,
  and the broadcast multiply) is one ``se`` kernel;
- pooling (``pool``; ``gpool`` when global), ``concat``, a channel shuffle's copy
  (``transpose``), broadcast ``mul``, and a batch norm or an activation that nothing absorbs
  (``bn``, ``act``) are kernels of their own.

Each kernel carries the configuration its cost depends on (channels, input size,
kernel, stride, groups, fused activation) and the layer names it executes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hardware.layers import FUNCTIONAL, AtenCall, LayerSpec, ModelTrace, trace_model

#: Activations each runtime fuses into the kernel before them; None: every activation.
#: TF-Lite: the fused_activation_function of CONV_2D / DEPTHWISE_CONV_2D / ADD (RELU, RELU6,
#: RELU_N1_TO_1, TANH); ONNX Runtime's ConvActivationFusion (Relu, Clip, Sigmoid, Tanh,
#: LeakyRelu, HardSigmoid); "pytorch": eager PyTorch runs them in sequence, and a kernel
#: measured there includes them, so every activation counts as fused.
FUSIBLE_ACTIVATIONS: dict[str, frozenset[str] | None] = {
    "tflite": frozenset({"ReLU", "ReLU6", "Tanh", "Identity"}),
    "onnxruntime": frozenset({"ReLU", "ReLU6", "Sigmoid", "Tanh", "LeakyReLU", "Hardsigmoid", "Identity"}),
    "pytorch": None,
}
KERNEL_TYPES = ("conv", "dwconv", "linear", "se", "add", "mul", "pool", "gpool", "concat", "transpose", "bn", "act")
#: The ATen calls each functional op of the layer description runs as (it is placed where they ran).
_ATEN_OF_FUNCTIONAL = {
    "add": ("aten::add.Tensor", "aten::add_.Tensor"),
    "mul": ("aten::mul.Tensor", "aten::mul_.Tensor"),
    "pool": ("aten::mean.dim",),
    "concat": ("aten::cat", "aten::cat.default"),
    "transpose": ("aten::clone", "aten::clone.default"),
}


@dataclass
class Kernel:
    """One kernel: its type, the configuration its latency depends on, and the layers it runs."""

    type: str
    config: dict[str, Any]
    layers: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The kernel configuration as one string: a lookup table's key."""
        return json.dumps({"type": self.type, **self.config}, sort_keys=True)


def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    return (int(shape[2]), int(shape[3])) if len(shape) == 4 else (1, 1)


def _rows(shape: tuple[int, ...]) -> int:
    """Rows of a matrix product over the last axis (batch x leading dims)."""
    return math.prod(int(s) for s in shape[:-1]) if shape else 1


def _compute_kernel(layer: LayerSpec) -> Kernel:
    if layer.op == "linear":
        config: dict[str, Any] = {"cin": layer.in_channels, "cout": layer.out_channels, "rows": _rows(layer.input_shape)}
    else:
        h, w = _spatial(layer.input_shape)
        ho, wo = _spatial(layer.output_shape)
        config = {
            "cin": layer.in_channels, "cout": layer.out_channels, "h": h, "w": w, "ho": ho, "wo": wo,
            "k": layer.kernel[0], "s": layer.stride[0], "groups": layer.groups, "batch": int(layer.input_shape[0]),
        }
    return Kernel(layer.op, {**config, "act": ""}, [layer.name])


def _map_kernel(kind: str, shape: tuple[int, ...], names: list[str], **extra: Any) -> Kernel:
    h, w = _spatial(shape)
    return Kernel(kind, {"c": int(shape[1]) if len(shape) > 1 else 1, "h": h, "w": w, "batch": int(shape[0]), **extra}, names)


def _steps(trace: ModelTrace) -> list[LayerSpec]:
    """The leaf layers and costly functional ops, in execution order.

    Functional ops (add, mul, mean, concat, transpose) are in ``trace.layers`` with their
    names; they are placed where their ATen call ran in ``trace.sequence``.
    """
    functional = [layer for layer in trace.layers if layer.module_type == FUNCTIONAL]
    steps: list[LayerSpec] = []
    nxt = 0
    for step in trace.sequence:
        if isinstance(step, LayerSpec):
            steps.append(step)
        elif isinstance(step, AtenCall) and nxt < len(functional) \
                and step.op in _ATEN_OF_FUNCTIONAL[functional[nxt].op]:
            steps.append(functional[nxt])
            nxt += 1
    return steps


def _is_global_pool(layer: LayerSpec) -> bool:
    """A pool to one value per channel (a global average pool, or the mean of squeeze-excitation); an
    adaptive one is global even on a 1x1 map (a small input's last stage), where it has no window to price."""
    if layer.op != "pool":
        return False
    return len(layer.output_shape) == 2 or (_spatial(layer.output_shape) == (1, 1) and (
        _spatial(layer.input_shape) != (1, 1) or layer.module_type.startswith("Adaptive")))


class _Fuser:
    """Walks the steps once, emitting kernels (see the module docstring for the rules)."""

    def __init__(self, steps: list[LayerSpec], fusible: frozenset[str] | None) -> None:
        self.steps, self.fusible, self.i = steps, fusible, 0
        self.kernels: list[Kernel] = []

    def peek(self, offset: int = 0) -> LayerSpec | None:
        j = self.i + offset
        return self.steps[j] if j < len(self.steps) else None

    def fuses(self, step: Any, shape: tuple[int, ...]) -> bool:
        return (
            isinstance(step, LayerSpec) and step.op == "act" and tuple(step.input_shape) == tuple(shape)
            and (self.fusible is None or step.module_type in self.fusible)
        )

    def absorb_act(self, kernel: Kernel, shape: tuple[int, ...]) -> None:
        step = self.peek()
        if self.fuses(step, shape):
            assert isinstance(step, LayerSpec)
            kernel.config["act"] = step.module_type
            kernel.layers.append(step.name)
            self.i += 1

    def run(self) -> list[Kernel]:
        while self.i < len(self.steps):
            step = self.steps[self.i]
            self.i += 1
            if step.op in ("conv", "dwconv", "linear"):
                self.compute(step)
            elif _is_global_pool(step):
                if not self.squeeze_excite(step):
                    self.kernels.append(_map_kernel("gpool", step.input_shape, [step.name]))
            elif step.op == "add":
                kernel = _map_kernel("add", step.output_shape, [step.name], act="")
                self.absorb_act(kernel, step.output_shape)
                self.kernels.append(kernel)
            elif step.op == "pool":
                self.kernels.append(
                    _map_kernel("pool", step.input_shape, [step.name], k=step.kernel[0], s=step.stride[0],
                                pool=step.module_type)
                )
            elif step.op == "bn":
                kernel = _map_kernel("bn", step.input_shape, [step.name], act="")
                self.absorb_act(kernel, step.output_shape)
                self.kernels.append(kernel)
            elif step.op in ("act", "mul"):
                extra = {"act": step.module_type} if step.op == "act" else {}
                self.kernels.append(_map_kernel(step.op, step.output_shape, [step.name], **extra))
            elif step.op == "concat" and len(step.output_shape) == 4:
                self.kernels.append(_map_kernel("concat", step.output_shape, [step.name],
                                                inputs=len(step.extra["operand_shapes"])))
            elif step.op == "transpose" and len(step.output_shape) >= 4:  # a channel shuffle's (b, g, c/g, h, w)
                shape = step.output_shape
                self.kernels.append(_map_kernel("transpose", (shape[0], step.out_channels, *shape[-2:]), [step.name]))
        return self.kernels

    def compute(self, layer: LayerSpec) -> None:
        kernel = _compute_kernel(layer)
        bn = self.peek()
        if isinstance(bn, LayerSpec) and bn.op == "bn" and tuple(bn.input_shape) == tuple(layer.output_shape):
            kernel.layers.append(bn.name)
            self.i += 1
        self.absorb_act(kernel, layer.output_shape)
        self.kernels.append(kernel)


    def squeeze_excite(self, pool: LayerSpec) -> bool:
        """Fuse pool, 1x1 layers on the pooled vector, gate and broadcast multiply into one ``se`` kernel."""
        inner: list[LayerSpec] = []
        while isinstance(step := self.peek(len(inner)), LayerSpec) and step.op in ("conv", "act", "bn") \
                and _spatial(step.input_shape) == (1, 1):
            inner.append(step)
        mul = self.peek(len(inner))
        mids = [step.out_channels for step in inner if step.op == "conv"]
        if not (isinstance(mul, LayerSpec) and mul.op == "mul" and mids
                and tuple(mul.output_shape) == tuple(pool.input_shape)):
            return False
        self.i += len(inner) + 1
        gate = inner[-1].module_type if inner[-1].op == "act" else ""
        names = [pool.name, *(step.name for step in inner), mul.name]
        self.kernels.append(_map_kernel("se", pool.input_shape, names, mid=min(mids), gate=gate))
        return True


def detect_kernels(trace: ModelTrace, runtime: str = "tflite") -> list[Kernel]:
    """The kernels ``runtime`` (a key of FUSIBLE_ACTIVATIONS) executes for the traced model, in order."""
    if runtime not in FUSIBLE_ACTIVATIONS:
        raise ValueError(f"runtime {runtime!r} is unknown; use one of {sorted(FUSIBLE_ACTIVATIONS)}")
    return _Fuser(_steps(trace), FUSIBLE_ACTIVATIONS[runtime]).run()


def model_kernels(model: nn.Module, input_shape: tuple[int, ...], runtime: str = "tflite") -> list[Kernel]:
    """Trace ``model`` on ``input_shape`` and detect its kernels."""
    return detect_kernels(trace_model(model, input_shape), runtime)
