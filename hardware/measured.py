"""Measured hardware targets: latency timed on this machine, with its provenance.

Three runtimes (ISSUE 3, "Measured on this machine"):

- ``LocalCPU``: PyTorch eager in eval mode under ``torch.no_grad``; the intra-op thread
  count is a config value (one by default: with another job on a 2-core machine every core
  made calls 114-177x slower, results/speedup_pairing.md; ``threads: null`` = every core this
  process may use) and is recorded. An optional per-layer breakdown times each described layer with forward
  hooks.
- ``OnnxRuntimeCPU``: the deployment path. The model is exported with
  ``torch.onnx.export`` (or the ONNX file a method wrote, such as an int8 QDQ model, is run
  as is) and executed by an ONNX Runtime session with a fixed number of intra-op threads.
- ``CUDA``: CUDA events around each call; constructing it on a machine without a GPU
  raises ``HardwareError``.

All three share ``hardware.protocol`` (warm-up, repeats until a minimum time, median,
IQR, coefficient of variation, "machine too noisy" note) and time in interleaved rounds
(``hardware.speedup``): models compared with each other are timed together, round by round,
so that their speedup is paired. Memory figures come from the one layer description
(``hardware.layers``), not from the runtime's allocator.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardware.layers import LayerSpec, leaf_op, memory_footprint
from hardware.protocol import (
    NOISE_THRESHOLD,
    TimingProtocol,
    TimingResult,
    machine_provenance,
    protocol_dict,
    time_callable,
)
from hardware.speedup import interleaved
from hardware.target import HardwareError, HardwareTarget, LatencyReport


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``threads`` PyTorch intra-op threads, then restore the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself if it already lives on ``device``, else a copy moved there."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device == device for t in tensors):
        return model
    return copy.deepcopy(model).to(device)


class MeasuredTarget(HardwareTarget):
    """A target whose latency is timed on this machine with ``hardware.protocol``."""

    source = "measured"
    runtime = "unknown"

    def __init__(
        self,
        name: str,
        calibration: str = "measured",
        batch_size: int = 1,
        threads: int | None = 1,
        warmup: int = 10,
        repeats: int = 50,
        min_time_s: float = 0.5,
        max_time_s: float = 30.0,
        clock: str = "wall",
        rounds: int = 20,
        coverage: float = 0.5,
        resolution: float = 0.05,
        noise_threshold: float = NOISE_THRESHOLD,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("source", None)
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"hw.threads must be >= 1 or null (all cores), got {threads}")
        self.threads = int(threads) if threads is not None else available_cores()
        if clock == "thread_cpu" and self.threads != 1:
            raise ValueError(
                f"hw.clock=thread_cpu times the calling thread only: it needs hw.threads=1, got {self.threads}"
            )
        self.protocol = TimingProtocol(
            warmup=int(warmup),
            repeats=int(repeats),
            min_time_s=float(min_time_s),
            max_time_s=float(max_time_s),
            clock=clock,
            rounds=int(rounds),
            coverage=float(coverage),
            resolution=float(resolution),
            noise_threshold=float(noise_threshold),
        )

    # -- what subclasses provide -------------------------------------------------------
    def prepared(
        self, model: nn.Module, input_shape: tuple[int, ...], deployable: Path | None = None
    ) -> contextlib.AbstractContextManager[tuple[Callable[[], Any], dict[str, Any]]]:
        """A context holding one forward pass of ``input_shape`` ready to call (of ``deployable``, the file
        of the format this target executes, when the method wrote one), and its runtime provenance."""
        raise NotImplementedError

    def time_one_ms(self) -> Callable[[Callable[[], Any]], float] | None:
        """How one call is timed; None: the protocol's clock."""
        return None

    def runtime_provenance(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "torch": torch.__version__}

    # -- the HardwareTarget interface --------------------------------------------------
    def latency(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None = None,
                deployables: Mapping[str, Path] | None = None) -> LatencyReport:
        return self.latencies({"model": model}, input_shape, {"model": layers}, {"model": deployables})["model"]

    def latencies(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...],
                  layers: Mapping[str, list[LayerSpec] | None] | None = None,
                  deployables: Mapping[str, Mapping[str, Path] | None] | None = None) -> dict[str, LatencyReport]:
        """Time ``models`` together in interleaved rounds (``hardware.speedup.interleaved``): paired figures.

        A single model (``latency``) is timed by the protocol in one go: its report has no rounds.
        """
        input_shape = tuple(int(s) for s in input_shape)
        layers, deployables = layers or {}, deployables or {}
        files = {name: self.deployable(deployables.get(name)) for name in models}
        with contextlib.ExitStack() as stack:
            ready = {name: stack.enter_context(self.prepared(model, input_shape, files[name]))
                     for name, model in models.items()}
            calls = {name: call for name, (call, _) in ready.items()}
            timed: dict[str, tuple[TimingResult, list[float]]]
            if len(calls) == 1:  # nothing to pair with: the protocol in one go, no rounds
                timed = {name: (time_callable(call, self.protocol, self.time_one_ms()), []) for name, call in calls.items()}
            else:
                timed = interleaved(calls, self.protocol, self.time_one_ms())
        return {name: self._report(model, input_shape, layers.get(name), files[name], *timed[name], ready[name][1])
                for name, model in models.items()}

    def _report(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None,
                deployable: Path | None, timing: TimingResult, rounds_ms: list[float],
                runtime_info: dict[str, Any]) -> LatencyReport:
        layers = self.layers_of(_on_device(model, torch.device("cpu")), input_shape, layers)
        provenance = {
            **machine_provenance(),
            "device": self.device_name(),
            "threads": self.threads,
            **self.runtime_provenance(),
            **runtime_info,
            **timing.provenance(),
            "rounds": len(rounds_ms),
            "protocol": protocol_dict(self.protocol),
            "input_shape": list(input_shape),
            "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        return LatencyReport(
            hw=self.name,
            latency_ms=timing.median_ms,
            source=self.source,
            calibration=self.calibration,
            spread_ms=timing.iqr_ms,
            memory=memory_footprint(layers),
            per_layer_ms=self._per_layer(model, input_shape, deployable),
            provenance=provenance,
            notes=timing.notes() + _unused_bits_note(layers, deployable),
            rounds_ms=rounds_ms,
            noisy=timing.noisy,
        )

    def _per_layer(self, model: nn.Module, input_shape: tuple[int, ...], deployable: Path | None) -> dict[str, float]:
        """Per-layer breakdown in ms; targets that cannot attribute time to layers return {}."""
        return {}

    def device_name(self) -> str:
        return machine_provenance()["cpu"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads, "runtime": self.runtime, **protocol_dict(self.protocol)}


def _unused_bits_note(layers: list[LayerSpec], deployable: Path | None) -> list[str]:
    """A note when the caller described low-bit layers that the timed PyTorch model cannot run at their width."""
    if deployable is not None or not any(layer.weight_bits < 32 or layer.act_bits < 32 for layer in layers):
        return []
    return ["per-layer bit-widths below 32 are not used: the PyTorch model runs in float (its low-bit values "
            "dequantized), so the timing is that of the float kernels"]


class LocalCPU(MeasuredTarget):
    """PyTorch eager on this machine's CPU."""

    runtime = "pytorch-eager"

    def __init__(
        self, name: str = "local_cpu", per_layer: bool = False, per_layer_repeats: int = 20, **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.per_layer = bool(per_layer)
        self.per_layer_repeats = int(per_layer_repeats)

    def runtime_provenance(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "torch": torch.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "interop_threads": torch.get_num_interop_threads(),
        }

    @contextlib.contextmanager
    def prepared(
        self, model: nn.Module, input_shape: tuple[int, ...], deployable: Path | None = None
    ) -> Iterator[tuple[Callable[[], Any], dict[str, Any]]]:
        cpu_model = _on_device(model, torch.device("cpu"))
        x = torch.randn(input_shape)
        with torch_threads(self.threads), _eval_mode(cpu_model), torch.no_grad():
            yield (lambda: cpu_model(x)), {}

    def _per_layer(self, model, input_shape, deployable=None):
        if not self.per_layer:
            return {}
        cpu_model = _on_device(model, torch.device("cpu"))
        with torch_threads(self.threads), _eval_mode(cpu_model), torch.no_grad():
            return per_layer_times(cpu_model, torch.randn(input_shape), self.per_layer_repeats)


def per_layer_times(model: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median wall time of each described layer over ``repeats`` forward passes (forward hooks).

    Hook overhead (a few microseconds per layer) is included; the end-to-end latency
    of the report comes from hook-free runs, so this is a breakdown, not a sum.
    """
    started: dict[str, int] = {}
    samples: dict[str, list[float]] = {}
    handles = []

    def pre(name: str) -> Callable:
        def _pre(_module: nn.Module, _inputs: Any) -> None:
            started[name] = time.perf_counter_ns()

        return _pre

    def post(name: str) -> Callable:
        def _post(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            samples.setdefault(name, []).append((time.perf_counter_ns() - started[name]) / 1e6)

        return _post

    for name, module in model.named_modules():
        if leaf_op(module) is not None:
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
    try:
        for _ in range(warmup):
            model(x)
        samples.clear()
        for _ in range(repeats):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values) for name, values in samples.items()}


# -- ONNX Runtime ------------------------------------------------------------------------
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, exporter: str = "torchscript", opset: int = 17
) -> Path:
    """Export ``model`` (on CPU, eval mode) for one batch of ``input_shape`` to ``path``.

    ``exporter``: "torchscript" (fast, the default) or "dynamo" (torch.export-based);
    if the TorchScript exporter fails the dynamo exporter is tried. The exporters'
    progress messages go to stderr so that CLI output on stdout stays machine-readable.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"hw.exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    cpu_model = _on_device(model, torch.device("cpu"))
    x = torch.randn(input_shape)
    order = [exporter] if exporter == "dynamo" else ["torchscript", "dynamo"]
    errors = []
    for kind in order:
        try:
            with (
                _eval_mode(cpu_model),
                torch.no_grad(),
                contextlib.redirect_stdout(sys.stderr),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    cpu_model,
                    (x,),
                    str(path),
                    input_names=["input"],
                    output_names=["output"],
                    opset_version=opset,
                    dynamo=(kind == "dynamo"),
                )
            return path
        except Exception as error:  # noqa: BLE001 - report both exporters' failures
            errors.append(f"{kind}: {type(error).__name__}: {error}")
    raise HardwareError("torch.onnx.export failed for this model; " + " | ".join(errors))


class OnnxRuntimeCPU(MeasuredTarget):
    """ONNX Runtime's CPU execution provider on this machine."""

    runtime = "onnxruntime"
    executes = "onnx"

    def __init__(
        self,
        name: str = "onnxruntime_cpu",
        graph_optimization: str = "all",
        exporter: str = "torchscript",
        opset: int = 17,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        levels = ("disable", "basic", "extended", "all")
        if graph_optimization not in levels:
            raise ValueError(f"hw.graph_optimization must be one of {levels}, got {graph_optimization!r}")
        self.graph_optimization = graph_optimization
        self.exporter = exporter
        self.opset = int(opset)

    def runtime_provenance(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": self.runtime,
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "execution_provider": "CPUExecutionProvider",
            "graph_optimization": self.graph_optimization,
        }

    def session(self, onnx_path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        options.log_severity_level = 3
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])

    @contextlib.contextmanager
    def prepared(
        self, model: nn.Module, input_shape: tuple[int, ...], deployable: Path | None = None
    ) -> Iterator[tuple[Callable[[], Any], dict[str, Any]]]:
        import numpy as np

        with tempfile.TemporaryDirectory(prefix="hw_onnx_") as tmp:
            if deployable is not None:
                onnx_path = Path(deployable)
                if not onnx_path.is_file():
                    raise HardwareError(f"hw {self.name!r}: the deployable onnx file {onnx_path} does not exist")
                info: dict[str, Any] = {"deployable": str(onnx_path), "exported": False}
            else:
                onnx_path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", self.exporter, self.opset)
                info = {"exported": True, "exporter": self.exporter, "opset": self.opset}
            session = self.session(onnx_path)
            inputs = session.get_inputs()
            if len(inputs) != 1:
                raise HardwareError(
                    f"hw {self.name!r}: the ONNX model has {len(inputs)} inputs; one image input is expected"
                )
            dtype = _ORT_DTYPES.get(inputs[0].type)
            if dtype is None:
                raise HardwareError(f"hw {self.name!r}: unsupported ONNX input type {inputs[0].type}")
            rng = np.random.default_rng(0)
            feed = {inputs[0].name: rng.standard_normal(input_shape).astype(dtype)}
            yield (lambda: session.run(None, feed)), info


# -- CUDA --------------------------------------------------------------------------------
class CUDA(MeasuredTarget):
    """An NVIDIA GPU timed with CUDA events (refused, with the reason, when none is present)."""

    runtime = "pytorch-cuda"

    def __init__(self, name: str = "cuda", device: int = 0, cudnn_benchmark: bool = True, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (CPU-only build)"
            raise HardwareError(
                f"hw {name!r} needs an NVIDIA GPU, but torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}, CUDA build {build}). Use +hw=local_cpu or +hw=onnxruntime_cpu to "
                "measure on this CPU, or an emulated GPU such as +hw=v100 / +hw=titanxp (see `python -m hardware list`)."
            )
        if not 0 <= int(device) < torch.cuda.device_count():
            raise HardwareError(f"hw.device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        self.device = torch.device("cuda", int(device))
        self.cudnn_benchmark = bool(cudnn_benchmark)

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def runtime_provenance(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": self.cudnn_benchmark,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(self.device))),
        }

    def time_one_ms(self) -> Callable[[Callable[[], Any]], float]:
        def one_call_ms(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return one_call_ms

    @contextlib.contextmanager
    def prepared(
        self, model: nn.Module, input_shape: tuple[int, ...], deployable: Path | None = None
    ) -> Iterator[tuple[Callable[[], Any], dict[str, Any]]]:
        gpu_model = _on_device(model, self.device)
        x = torch.randn(input_shape, device=self.device)
        old_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            with torch.cuda.device(self.device), _eval_mode(gpu_model), torch.no_grad():
                yield (lambda: gpu_model(x)), {}
        finally:
            torch.backends.cudnn.benchmark = old_benchmark
