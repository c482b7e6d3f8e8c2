"""Sampling kernel configurations and measuring them on this CPU: ``python -m hardware profile --kernels``.

nn-Meter's recipe on PyTorch eager: sample each kernel type across channels, resolutions,
kernel sizes, strides, groups and expansion ratios, build the kernel as modules
(:func:`kernel_module`, which the tracer and ``hardware.kernels`` read back as the same
kernel), and time it with the project's protocol (one thread, the thread-CPU clock on a
shared machine). The result is a kernel table (``TABLE_FORMAT``): the fit data of the
local CPU's kernel predictors and their exact cache.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardware.kernels import Kernel
from hardware.protocol import TimingProtocol, machine_provenance, protocol_dict, time_callable
from hardware.target import HardwareError

TABLE_FORMAT = "compressbench-kernel-table/1"
_SIZES = (7, 14, 28, 56, 112)
_CHANNELS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 960)
_ACTS = ("", "ReLU", "ReLU6", "Hardswish", "SiLU")
#: How often each kernel type is drawn (convolutions dominate a CNN's latency).
TYPE_WEIGHTS = {"conv": 8, "dwconv": 4, "linear": 1, "se": 1, "add": 1, "mul": 1, "act": 1, "pool": 1, "gpool": 1,
                "concat": 1, "bn": 1}
_MAX_MACS = 150e6  # keeps one configuration's timing short
#: Input sizes each sampled network is timed at (its classifier pools globally): the in-network cost grows with them.
NETWORK_SIZES = (64, 128, 192)


def _conv_config(rng: random.Random, depthwise: bool) -> dict[str, Any]:
    size, k, s = rng.choice(_SIZES), rng.choice((1, 3, 3, 5, 7) if not depthwise else (3, 3, 5, 7)), rng.choice((1, 1, 2))
    cin = rng.choice(_CHANNELS)
    if depthwise:
        cout = groups = cin
    else:
        cout = rng.choice(_CHANNELS) if rng.random() < 0.5 else min(cin * rng.choice((3, 4, 6)), 960)  # expansion
        groups = rng.choice((1, 1, 1, 1, 2, 4, 8)) if k > 1 else 1
        while cin % groups or cout % groups or groups >= cin:  # groups == cin would be a depthwise kernel
            groups //= 2
    ho = (size + 2 * (k // 2) - k) // s + 1
    return {"cin": cin, "cout": cout, "h": size, "w": size, "ho": ho, "wo": ho, "k": k, "s": s, "groups": groups,
            "batch": 1, "act": rng.choice(_ACTS)}


def _macs(kernel: Kernel) -> float:
    c = kernel.config
    if kernel.type in ("conv", "dwconv"):
        return c["ho"] * c["wo"] * c["cout"] * c["cin"] // c["groups"] * c["k"] ** 2
    return 0.0


def sample_kernel(rng: random.Random) -> Kernel:
    """One random kernel configuration (runtime ``pytorch``: activations fused into the kernel)."""
    kind = rng.choices(list(TYPE_WEIGHTS), weights=list(TYPE_WEIGHTS.values()))[0]
    if kind in ("conv", "dwconv"):
        return Kernel(kind, _conv_config(rng, kind == "dwconv"))
    if kind == "linear":
        return Kernel(kind, {"cin": rng.choice(_CHANNELS + (1280, 2048)), "cout": rng.choice((10, 100, 1000, 1280)),
                             "rows": 1, "act": rng.choice(("", "ReLU"))})
    shape = {"c": rng.choice(_CHANNELS), "h": (size := rng.choice(_SIZES)), "w": size, "batch": 1}
    options: dict[str, dict[str, Any]] = {
        "add": {"act": rng.choice(("", "ReLU"))},
        "act": {"act": rng.choice(_ACTS[1:] + ("Sigmoid", "GELU"))},
        "bn": {"act": rng.choice(("", "ReLU"))},
        "pool": {"k": (k := rng.choice((2, 3))), "s": 2, "pool": rng.choice(("MaxPool2d", "AvgPool2d")) if k == 2
                 else "MaxPool2d"},
        "se": {"mid": max(8, shape["c"] // 4), "gate": rng.choice(("Sigmoid", "Hardsigmoid"))},
        "concat": {"inputs": (inputs := rng.choice((2, 4)))},
    }
    extra = options.get(kind, {})
    if kind == "concat":
        shape["c"] -= shape["c"] % inputs
    return Kernel(kind, {**shape, **extra})


def sample_kernels(n: int, seed: int = 0) -> list[Kernel]:
    """``n`` distinct kernel configurations of at most _MAX_MACS each."""
    rng, found = random.Random(seed), dict[str, Kernel]()
    while len(found) < n:
        kernel = sample_kernel(rng)
        if _macs(kernel) <= _MAX_MACS:
            found.setdefault(kernel.key, kernel)
    return list(found.values())


def _act(name: str) -> nn.Module:
    return getattr(nn, name)() if name else nn.Identity()


class _Binary(nn.Module):
    """An elementwise op of two tensors (add, broadcast multiply), optionally followed by an activation."""

    def __init__(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], act: str = "") -> None:
        super().__init__()
        self.op, self.act = op, _act(act) if act else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.op(x, y)
        return self.act(out) if self.act is not None else out


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int, mid: int, gate: str) -> None:
        super().__init__()
        self.reduce, self.act, self.expand, self.gate = nn.Conv2d(c, mid, 1), nn.ReLU(), nn.Conv2d(mid, c, 1), _act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class _Concat(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, 1)


class _Transpose(nn.Module):
    """A channel shuffle's copy: (b, g, c/g, h, w) -> (b, c/g, g, h, w), made contiguous (two groups; the cost is
    the data moved, the same for any group count)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        groups = 2 if c % 2 == 0 else 1
        return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()


def kernel_module(kernel: Kernel) -> tuple[nn.Module, list[torch.Tensor]]:
    """Modules doing the kernel's work, and its inputs."""
    c = kernel.config
    if kernel.type in ("conv", "dwconv"):
        layers = [nn.Conv2d(c["cin"], c["cout"], c["k"], c["s"], c["k"] // 2, groups=c["groups"], bias=False),
                  nn.BatchNorm2d(c["cout"])] + ([_act(c["act"])] if c["act"] else [])
        return nn.Sequential(*layers).eval(), [torch.randn(c["batch"], c["cin"], c["h"], c["w"])]
    if kernel.type == "linear":
        layers = [nn.Linear(c["cin"], c["cout"])] + ([_act(c["act"])] if c["act"] else [])
        return nn.Sequential(*layers).eval(), [torch.randn(c["rows"], c["cin"])]
    x = torch.randn(c["batch"], c["c"], c["h"], c["w"])
    builders: dict[str, Callable[[], tuple[nn.Module, list[torch.Tensor]]]] = {
        "add": lambda: (_Binary(torch.add, c["act"]), [x, torch.randn_like(x)]),
        "mul": lambda: (_Binary(torch.mul), [x, torch.randn(c["batch"], c["c"], 1, 1)]),
        "act": lambda: (_act(c["act"]), [x]),
        "bn": lambda: (nn.Sequential(nn.BatchNorm2d(c["c"]), *([_act(c["act"])] if c["act"] else [])).eval(), [x]),
        "pool": lambda: (getattr(nn, c["pool"])(c["k"], c["s"]), [x]),
        "gpool": lambda: (nn.AdaptiveAvgPool2d(1), [x]),
        "se": lambda: (_SqueezeExcite(c["c"], c["mid"], c["gate"]).eval(), [x]),
        "concat": lambda: (_Concat(), list(torch.randn(c["batch"], c["c"], c["h"], c["w"]).chunk(c["inputs"], 1))),
        "transpose": lambda: (_Transpose(), [x]),
    }
    if kernel.type not in builders:
        raise HardwareError(f"cannot build a kernel of type {kernel.type!r}; types: {sorted(builders)} and conv/dwconv/linear")
    return builders[kernel.type]()


def measure_kernels(kernels: list[Kernel], protocol: TimingProtocol, progress: bool = True) -> list[dict[str, Any]]:
    """Time every kernel with one intra-op thread; one entry (type, config, ms, min_ms, iqr_ms) each."""
    from tqdm import tqdm

    from hardware.measured import torch_threads

    entries = []
    with torch_threads(1), torch.no_grad():
        for kernel in tqdm(kernels, desc="kernels", unit="kernel", disable=not progress):
            module, inputs = kernel_module(kernel)
            timing = time_callable(functools.partial(module, *inputs), protocol)
            entries.append({"type": kernel.type, "config": kernel.config, "ms": timing.median_ms,
                            "min_ms": timing.min_ms, "iqr_ms": timing.iqr_ms})
    return entries


def measure_networks(count: int, seed: int, protocol: TimingProtocol, progress: bool = True) -> list[dict[str, Any]]:
    """Time ``count`` whole networks sampled from the profiling search spaces (MobileNetV2- and ResNet-like),
    one thread: what kernels cost inside a network beyond their cost alone is fitted on these
    (``hardware.kernelcost.composition``), never on the networks a validation predicts."""
    from tqdm import tqdm

    from hardware import search_space
    from hardware.kernels import model_kernels
    from hardware.measured import torch_threads

    entries = []
    with torch_threads(1), torch.no_grad():
        architectures = search_space.sample_architectures(("mobilenetv2", "resnet"), count, seed)
        for name, config in tqdm(architectures, desc="networks", unit="network", disable=not progress):
            model = search_space.build(config)
            for size in NETWORK_SIZES:
                shape = (1, 3, size, size)
                entries.append({"name": f"{name}-s{seed}@{size}", "config": config, "input_size": size,
                                "kernels": network_kernels(model_kernels(model, shape, "pytorch")),
                                "ms": time_callable(functools.partial(model, torch.randn(shape)), protocol).median_ms})
    return entries


def network_kernels(kernels: list[Kernel]) -> list[dict[str, Any]]:
    """A measured network's kernels as the table stores them (traced once, when measured: not on every load)."""
    return [{"type": k.type, "config": k.config} for k in kernels]


def table_metadata(protocol: TimingProtocol, seed: int, kernels: int, networks: int) -> dict[str, Any]:
    """How one profiling call measured: machine, protocol, seed, torch, date, and how many kernels and networks."""
    return {"device": machine_provenance()["cpu"], "machine": machine_provenance(), "threads": 1, "runtime": "pytorch",
            "protocol": protocol_dict(protocol), "seed": seed, "torch": torch.__version__,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "kernels": kernels, "networks": networks}


def extended_metadata(old: dict[str, Any] | None, call: dict[str, Any]) -> dict[str, Any]:
    """A table's metadata after one more profiling call: the first call's, with each later one under ``extensions``
    (a call that extends a table must not restate how the measurements already in it were made)."""
    if old is None:
        return call
    return {**old, "extensions": [*old.get("extensions", []), call]}


def save_table(path: Path, entries: list[dict[str, Any]], protocol: TimingProtocol, seed: int,
               networks: list[dict[str, Any]] | None = None) -> Path:
    """Write (or extend: entries of the same configuration, networks of the same name are replaced) a kernel table."""
    table = load_table(path) if path.is_file() else {}
    merged = {Kernel(e["type"], e["config"]).key: e for e in table.get("entries", []) + entries}
    nets = {n["name"]: n for n in table.get("networks", []) + list(networks or [])}
    call = table_metadata(protocol, seed, len(entries), len(networks or []))
    data = {"format": TABLE_FORMAT, "metadata": extended_metadata(table.get("metadata"), call),
            "entries": list(merged.values()), "networks": list(nets.values())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def table_networks(path: Path) -> list[tuple[list[Kernel], float]]:
    """A kernel table's whole networks as (their kernels as measured, in eager PyTorch; measured ms)."""
    return [([Kernel(k["type"], dict(k["config"])) for k in n["kernels"]], float(n["ms"]))
            for n in load_table(path).get("networks", [])]


def load_table(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != TABLE_FORMAT:
        raise HardwareError(f"{path} has format {data.get('format')!r}, expected {TABLE_FORMAT} "
                            "(written by `python -m hardware profile --kernels`)")
    return data
