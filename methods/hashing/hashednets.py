"""HashedNets: Chen, Wilson, Tyree, Weinberger & Chen, "Compressing Neural Networks with the Hashing
Trick", ICML 2015 (Berthelier et al. 2020, Sec. 2.2).

Each compressed layer keeps a virtual weight matrix V of its usual shape, but stores only K =
``compression`` x |V| real weights w (its buckets): V_ij = xi(i, j) w[h(i, j)] (Sec. 4), with h
a hash of (layer, row, column) into the K buckets and xi a second hash onto {-1, +1} (the sign
factor of Weinberger et al.'s feature hashing, which makes the inner products unbiased). Training
is ordinary back-propagation: dL/dw_k = sum over (i, j) with h(i, j) = k of xi(i, j) dL/dV_ij
(Sec. 4.3), which is what autograd computes through the gather.

* The hash: MurmurHash3's 32-bit finaliser (an integer mixer) of the position i x cols + j,
  keyed per layer by the CRC-32 of its name and by ``seed``; bucket and sign use different keys.
  Index and sign tensors are computed once per layer (buffers, not stored), so a forward pass is a
  gather and a multiply. Departure: the paper uses xxHash on (i, j); any well-mixing hash serves.
* A hashed layer is a subclass of ``nn.Linear`` / ``nn.Conv2d`` (:class:`HashedLinear`,
  :class:`HashedConv2d`) whose ``weight`` is computed from its ``buckets`` parameter, so tracing, MAC
  counts and export see the usual layer, and the model pickles (MLflow logs it). Convolutions hash their [out, in x kh x kw] weight alike (the paper hashes fully connected
  layers; Chen et al. 2016 hash convolutions in the frequency domain instead).
* ``init: scratch`` trains from random buckets (U(-1/sqrt(fan_in), +)) and re-initialised other
  parameters, as the paper; ``init: baseline`` starts from the trained baseline projected onto the
  buckets (each bucket the mean of its signed weights: the least-squares fit), then fine-tunes.
  ``recipe.distill=kd`` gives the paper's HashNet_DK (dark knowledge from the baseline).
* Biases are not hashed (the paper's count of real weights is of the matrices). The file stores
  the buckets, the biases and any other tensor raw, and the seed and bucket counts in its header:
  the ``hashednets`` architecture rebuilds the hashed layers from them.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, fail, finetune_default, option, select_layers
from methods.reporting import write_json
from methods.storage import StoredState, load_model, load_state_into, register_architecture, save_model
from methods.storage.codecs import raw_entry

_MASK32 = 0xFFFFFFFF
INITS = ("baseline", "scratch")


def _mul32(h: Any, c: int) -> Any:
    """(h x c) mod 2^32 for h < 2^32 without int64 overflow: by 16-bit halves (tensors or ints)."""
    return ((h & 0xFFFF) * c + ((((h >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def fmix32(h: Any) -> Any:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2^32) that mixes every input bit into every output bit."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash_positions(numel: int, buckets: int, layer: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """h and xi of positions 0..numel-1 of layer ``layer``: bucket indices (int64) and signs (+-1.0)."""
    if numel >= 2**32:
        raise ValueError(f"layer {layer!r}: {numel} weights exceed the 32-bit hash's positions")
    key = fmix32(zlib.crc32(layer.encode()) ^ fmix32(seed))
    positions = torch.arange(numel, dtype=torch.int64)
    index = fmix32(positions ^ key) % buckets
    sign = 1.0 - 2.0 * (fmix32(positions ^ fmix32(key ^ 0x9E3779B9)) >> 31).float()
    return index, sign


def project(weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor, buckets: int) -> torch.Tensor:
    """The buckets that fit ``weight`` best (least squares): each the mean of its signed weights."""
    flat = index.flatten()
    sums = torch.zeros(buckets, dtype=weight.dtype).index_add_(0, flat, (weight * sign).flatten())
    return sums / torch.bincount(flat, minlength=buckets).clamp_min(1).to(weight.dtype)


class _Hashed:
    """A layer whose ``weight`` is drawn from ``buckets`` (a parameter) through ``index`` and ``sign`` (buffers)."""

    buckets: nn.Parameter
    index: torch.Tensor
    sign: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:
        return self.buckets[self.index] * self.sign


class HashedLinear(_Hashed, nn.Linear):  # type: ignore[override]  # weight: computed, read-only
    """``nn.Linear`` with a hashed weight (tracers, MAC counts and export see a linear layer)."""


class HashedConv2d(_Hashed, nn.Conv2d):  # type: ignore[override]
    """``nn.Conv2d`` with a hashed weight."""


HASHED: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: HashedLinear, nn.Conv2d: HashedConv2d}


def hash_layer(module: nn.Module, buckets: int, name: str, seed: int) -> None:
    """Turn ``module`` (in place) into its hashed class, its buckets the projection of its weight."""
    if type(module) not in HASHED:
        raise MethodConfigError(f"method.layers: layer {name!r} is a {type(module).__name__}; HashedNets hashes plain "
                                f"{' and '.join(c.__name__ for c in HASHED)} layers: leave it out with "
                                "method.layers.exclude")
    weight = cast(torch.Tensor, module.weight).detach()
    index, sign = hash_positions(weight.numel(), buckets, name, seed)
    index, sign = index.reshape(weight.shape), sign.reshape(weight.shape).to(weight.dtype)
    del module.weight
    module.__class__ = HASHED[type(module)]
    module.register_buffer("index", index, persistent=False)
    module.register_buffer("sign", sign, persistent=False)
    module.register_parameter("buckets", nn.Parameter(project(weight, index, sign, buckets)))


def hash_layers(model: nn.Module, buckets: Mapping[str, int], seed: int) -> nn.Module:
    """Hash the named layers of ``model`` (in place), each into its number of buckets."""
    modules = dict(model.named_modules())
    for name, count in buckets.items():
        hash_layer(modules[name], count, name, seed)
    return model


def bucket_counts(layers: Mapping[str, nn.Module], compression: float) -> dict[str, int]:
    """K = round(compression x |V|) real weights per layer (at least one)."""
    return {name: max(1, round(compression * cast(torch.Tensor, m.weight).numel())) for name, m in layers.items()}


@register_architecture("hashednets")
def _hashed_model(template: nn.Module, state: StoredState) -> nn.Module:
    """The template with the header's layers hashed (its seed, its bucket counts), the buckets loaded."""
    model = hash_layers(copy.deepcopy(template).cpu(), state.meta["buckets"], int(state.meta["seed"]))
    return load_state_into(model, state)


def _scratch(model: nn.Module, layers: Mapping[str, nn.Module], seed: int) -> None:
    """Random parameters, as the paper trains: every layer reset, buckets U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and not isinstance(module, _Hashed):
                reset()
        with torch.no_grad():
            for module in layers.values():
                bound = cast(torch.Tensor, module.weight)[0].numel() ** -0.5
                cast(_Hashed, module).buckets.uniform_(-bound, bound)
                if isinstance(module.bias, torch.Tensor):
                    module.bias.uniform_(-bound, bound)


@dataclass
class HashedNetsConfig:
    """conf/method/hashednets.yaml."""

    compression: float = option(1 / 8, gt=0, le=1, why="real weights / virtual weights of each hashed layer "
                                                        "(the paper's 1/8 ... 1/64)")
    seed: int = option(0, ge=0, lt=2**32, why="the hash's seed, stored with the model")
    init: str = option("baseline", choices=INITS)
    finetune: FineTuning = option(factory=finetune_default(2.0))
    layers: LayerSelection = option(factory=LayerSelection)

    def check(self, key: str) -> None:
        if self.init == "scratch" and self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", f"must be > 0 with {key}.init=scratch (it is the whole training), "
                                           f"got {self.finetune.epochs}")


class HashedNets(CompressionMethod):
    """Chen et al. 2015: each layer's weights drawn from compression x |V| buckets by a hash; trained end to end."""

    name = "hashednets"
    Config = HashedNetsConfig
    config: HashedNetsConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline, model = model, copy.deepcopy(model).cpu()
        c = self.config
        layers = select_layers(model, tuple(ctx.input_shape), c.layers)
        buckets = bucket_counts(layers, c.compression)
        hash_layers(model, buckets, c.seed)
        if c.init == "scratch":
            _scratch(model, layers, ctx.seed)
        metrics = {"top1_baseline": ctx.evaluate(baseline, "val")["top1"],
                   "top1_before_finetune": ctx.evaluate(model, "val")["top1"]}
        if c.finetune.epochs > 0:
            ctx.finetune(model, c.finetune.epochs, lr=c.finetune.lr)

        stored = ctx.workdir / "model.hashednets.cbm"
        entries = [raw_entry(name, tensor, "weights" if name.endswith(".buckets") else "other")
                   for name, tensor in model.state_dict().items()]
        sizes = save_model(stored, entries, meta={"method": self.name, "seed": c.seed, "buckets": buckets},
                           architecture="hashednets")
        decoded = load_model(stored, baseline)
        virtual = sum(m.weight.numel() for m in layers.values())
        dense_bytes = sum(t.numel() * t.element_size() for t in baseline.state_dict().values())
        metrics.update({
            "top1_after_finetune": ctx.evaluate(decoded, "val")["top1"],
            "virtual_weights": float(virtual), "real_weights": float(sum(buckets.values())),
            "weight_compression": sum(buckets.values()) / virtual,
            "params_before": float(sum(p.numel() for p in baseline.parameters())),
            "params_after": float(sum(p.numel() for p in decoded.parameters())),
            "stored_bytes": float(sizes["total"]), "dense_bytes": float(dense_bytes),
            "compression_ratio": dense_bytes / sizes["total"],
        })
        policy = {"method": self.name, "seed": c.seed, "compression": c.compression, "init": c.init,
                  "layers": {n: {"virtual": layers[n].weight.numel(), "buckets": k} for n, k in buckets.items()}}
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics,
                                 artifacts=[write_json(ctx.workdir / "policy.json", policy)])
