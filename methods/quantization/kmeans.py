"""Weight sharing by k-means clustering of each layer's weights, with centroid fine-tuning.

Gong et al., "Compressing Deep Convolutional Networks using Vector Quantization" (2014),
Sec. 3.1 (scalar quantization with k-means), and Han, Mao & Dally, "Deep Compression"
(ICLR 2016), Sec. 3 (weight sharing), as summarised by Berthelier et al. (2020, Sec. 2.4)
and Aswani et al. (Sec. B):

* the weights of each layer are clustered into ``k = 2**b`` clusters (``b`` = ``bits``,
  per layer through ``bits_per_layer``) by 1-D k-means (Lloyd iterations to convergence);
  each weight is replaced by its centroid, so a layer stores ``b``-bit cluster indices
  (bit-packed, :mod:`methods.storage.bits`) plus a ``k``-entry float32 codebook:
  compression ``n*32 / (n*b + k*32)`` (Deep Compression, Eq. 1);
* centroid initialization (Deep Compression Sec. 3.1, Fig. 4): ``linear`` (evenly spaced
  between the layer's min and max weight, their best), ``density`` (evenly spaced on the
  cumulative distribution of the weights) or ``random`` (Forgy: k weights drawn at random);
* fine-tuning (Deep Compression Sec. 3.3, Fig. 3): the weights of a cluster share one
  value, so the gradient of a centroid is the *sum* of the gradients of the weights of its
  cluster; the centroids, not the weights, are trained. Here the weight is a
  ``torch.nn.utils.parametrize`` function of the centroids (``weight = codebook[codes]``),
  so autograd produces exactly that summed gradient and the run's recipe (its optimizer)
  updates the centroids.

Pruned layers: when a layer has zero weights (a pruned model, as in Deep Compression), code
0 is reserved for the exact value 0 and the nonzero weights are clustered into
``2**b - 1`` centroids, so pruned connections stay pruned through fine-tuning. With
``layout: sparse`` (what ``deep_compression`` uses) only the nonzero weights get codes and
their positions are stored as relative indices (:mod:`methods.storage.codebook`).

Departures: the paper clusters with Caffe's own k-means; we run Lloyd iterations on the
sorted 1-D values (assignments by nearest-centroid midpoints, empty clusters keep their
previous centroid). A layer with fewer distinct (nonzero) values than clusters gets one
cluster per distinct value. Biases are kept in float32 as in the paper's code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, finetune_default, option, select_layers
from methods.storage import TensorEntry, load_model, save_model, size_metrics
from methods.storage.codebook import codebook_entry
from methods.storage.codecs import state_entries

INITS = ("linear", "density", "random")


# ------------------------------------------------------------------------------ clustering
def init_centroids(values: torch.Tensor, k: int, init: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` initial centroids for the 1-D ``values`` (Deep Compression, Sec. 3.1)."""
    values = values.detach().float().flatten()
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k)
    if init == "density":  # evenly spaced on the y axis of the CDF, read back on the x axis
        quantiles = torch.linspace(0.0, 1.0, k + 2)[1:-1] if k > 1 else torch.tensor([0.5])
        ordered = values.sort().values
        return ordered[(quantiles * (len(ordered) - 1)).round().long()]
    if init == "random":  # Forgy: k distinct weights drawn at random
        return values[torch.randperm(len(values), generator=generator)[:k]].sort().values
    raise MethodConfigError(f"kmeans.init must be one of {INITS}, got {init!r}")


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (``centroids`` sorted ascending)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def kmeans_1d(values: torch.Tensor, k: int, init: str = "linear", max_iterations: int = 300,
              generator: torch.Generator | None = None,
              importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars: (sorted centroids (k,), assignment of each value).

    In one dimension a cluster is a contiguous run of the sorted values, so each Lloyd
    iteration is a search of the k-1 midpoints in the sorted values and a difference of
    prefix sums (float64). ``k`` is capped at the number of distinct values.
    ``importance`` (one non-negative weight per value, e.g. a diagonal Hessian) minimises
    ``sum h_i (w_i - c)^2`` instead (Choi et al. 2017): the nearest centroid is unchanged
    and each centroid becomes its cluster's importance-weighted mean.
    """
    values = values.detach().float().flatten()
    ordered, order = values.double().sort()
    if int((ordered[1:] != ordered[:-1]).sum()) + 1 <= k:
        distinct = torch.unique(values)
        return distinct, torch.bucketize(values, distinct)
    mass = torch.ones_like(ordered) if importance is None else importance.detach().double().flatten()[order]
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), (mass * ordered).cumsum(0)])
    mass_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), mass.cumsum(0)])
    centroids = init_centroids(values, k, init, generator).double().sort().values
    edges = None
    for _ in range(max_iterations):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        inner = torch.searchsorted(ordered, midpoints, right=True)  # values <= midpoint go below
        new_edges = torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), len(ordered))])
        if edges is not None and torch.equal(new_edges, edges):
            break
        edges = new_edges
        counts = mass_prefix[edges[1:]] - mass_prefix[edges[:-1]]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centroids = torch.where(counts > 0, sums / torch.where(counts > 0, counts, 1.0), centroids).sort().values
    centroids = centroids.float()
    return centroids, assign(values, centroids)


# ------------------------------------------------------------------------------ one shared layer
@dataclass
class SharedLayer:
    """A layer's weight after weight sharing: codebook and one code per stored weight.

    ``zero_code``: code 0 means the exact value 0 (pruned weights) and is not stored in
    ``centroids``; the codebook is then ``[0, *centroids]``.
    """

    name: str  # state-dict key of the weight (``fc1.weight``)
    shape: tuple[int, ...]
    bits: int
    centroids: torch.Tensor  # float32 (k,), trainable values
    codes: torch.Tensor  # int64, one per weight, into the full codebook
    zero_code: bool

    @property
    def codebook(self) -> torch.Tensor:
        if self.zero_code:
            return torch.cat([torch.zeros(1, dtype=self.centroids.dtype), self.centroids])
        return self.centroids

    def weight(self) -> torch.Tensor:
        return self.codebook.detach()[self.codes].reshape(self.shape)


def share_layer(name: str, weight: torch.Tensor, bits: int, init: str, max_iterations: int,
                generator: torch.Generator | None, key: str = "method.bits") -> SharedLayer:
    """Cluster one weight tensor into ``2**bits`` shared values."""
    flat = weight.detach().float().flatten()
    k = 2**bits
    if k > flat.numel():
        raise MethodConfigError(
            f"{key}: {bits} bits ask for {k} clusters but layer {name!r} has only {flat.numel()} weights; "
            f"use at most {int(np.floor(np.log2(flat.numel())))} bits for it (bits_per_layer)"
        )
    centroids, codes, zero_code = share_values(
        flat, k, lambda values, clusters, _mask: kmeans_1d(values, clusters, init, max_iterations, generator))
    return SharedLayer(name, tuple(weight.shape), bits, centroids, codes, zero_code)


#: ``cluster(values, k, mask)``: (centroids, codes) of the values kept by ``mask`` (the nonzero ones)
Clusterer = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def share_values(flat: torch.Tensor, k: int, cluster: Clusterer) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(centroids, codes, zero_code) of the 1-D ``flat`` with ``k`` codes: when some values are exactly 0
    (pruned), code 0 is reserved for 0 and ``cluster`` gets only the nonzero values and ``k - 1`` clusters."""
    nonzero = flat != 0
    zero_code = bool((~nonzero).any())
    if not zero_code:
        centroids, codes = cluster(flat, k, nonzero)
        return centroids.float(), codes.long(), False
    codes = torch.zeros(flat.numel(), dtype=torch.long)
    centroids = torch.zeros(0)
    if nonzero.any():
        centroids, nz_codes = cluster(flat[nonzero], k - 1, nonzero)
        codes[nonzero] = nz_codes.long() + 1
    return centroids.float(), codes, True


class _ScaleGradient(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * scale, None


class SharedWeights(nn.Module):
    """Parametrization ``weight = codebook[codes]`` whose trainable tensor is the centroids.

    Autograd then gives each centroid the sum of the gradients of its cluster's weights
    (Deep Compression, Sec. 3.3); ``average`` divides it by the cluster's size, the mean gradient
    Choi et al. (2017) fine-tune with (a sum over a network-wide cluster diverges).
    """

    codes: torch.Tensor
    scale: torch.Tensor

    def __init__(self, layer: SharedLayer, average: bool = False) -> None:
        super().__init__()
        self.register_buffer("codes", layer.codes.reshape(layer.shape).clone())
        self.zero_code = layer.zero_code
        self._initial = layer.centroids.clone()
        self.average = average
        sizes = torch.bincount(layer.codes.flatten(), minlength=len(layer.codebook))[int(layer.zero_code):]
        self.register_buffer("scale", 1.0 / sizes.clamp(min=1).float())

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        if self.average:
            centroids = _ScaleGradient.apply(centroids, self.scale.to(centroids.dtype))
        if self.zero_code:
            centroids = torch.cat([centroids.new_zeros(1), centroids])
        return centroids[self.codes]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self._initial.clone().to(weight.dtype)


def attach_shared(module: nn.Module, layer: SharedLayer, average: bool = False) -> None:
    """Make ``module.weight`` a function of ``layer``'s centroids (trainable; ``average``: mean gradients)."""
    parametrize.register_parametrization(module, "weight", SharedWeights(layer, average))


def detach_shared(module: nn.Module, layer: SharedLayer) -> None:
    """Read the trained centroids back into ``layer`` and make the weight a plain tensor again."""
    layer.centroids = module.get_parameter("parametrizations.weight.original").detach().clone().float()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


# ------------------------------------------------------------------------------ storage
def shared_entry(layer: SharedLayer, layout: str = "dense", coding: str = "packed",
                 index_bits: int | None = None) -> TensorEntry:
    """A shared layer as stored (:func:`methods.storage.codebook.codebook_entry`): its codebook and its
    codes, bit-packed at ``layer.bits`` or Huffman-coded; ``layout: sparse`` codes only the nonzero
    weights and stores their positions as ``index_bits``-bit relative indices (Deep Compression, Fig. 2)."""
    return codebook_entry(layer.name, layer.shape, layer.centroids, layer.codes, layer.bits, layer.zero_code,
                          layout, coding, index_bits)


def dense_entry(layer: SharedLayer, coding: str = "packed") -> TensorEntry:
    """A shared layer stored densely: one code per weight, plus the codebook."""
    return shared_entry(layer, "dense", coding)


def codebook_bits(model: nn.Module, layers: Mapping[str, SharedLayer]) -> dict[str, tuple[int, int]]:
    """``layer_bits`` for the report: (weight bits, 32) for each shared layer's module."""
    return {layer.name.rsplit(".", 1)[0]: (layer.bits, 32) for layer in layers.values()}


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model as an fp32 state dict's tensors (the reference of every ratio)."""
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


# ------------------------------------------------------------------------------ the method
_BITS_WHY = "2**bits clusters, indices packed at that width"


@dataclass
class SharingConfig:
    """conf/method/kmeans.yaml: the knobs of weight sharing (also huffman's, and deep_compression's ``sharing``)."""

    bits: int = option(5, ge=1, le=8, why=_BITS_WHY)
    bits_per_layer: dict[str, int] = option(factory=dict, ge=1, le=8, why=_BITS_WHY)
    init: str = option("linear", choices=INITS)
    max_iterations: int = option(300, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)

    def bits_for(self, module_name: str) -> int:
        return self.bits_per_layer.get(module_name, self.bits)


def share_weights(model: nn.Module, config: SharingConfig, ctx: CompressionContext,
                  key: str = "method") -> dict[str, SharedLayer]:
    """Cluster the selected layers of ``model`` in place, fine-tune the centroids with ``ctx.finetune``
    when ``config.finetune.epochs`` > 0, and return the shared layers by module name; errors name ``key.<field>``."""
    modules = select_layers(model, (1, *tuple(ctx.input_shape)[1:]), config.layers, f"{key}.layers")
    unknown = sorted(set(config.bits_per_layer) - set(modules))
    if unknown:
        raise MethodConfigError(f"{key}.bits_per_layer names {unknown}, not layers of the model; "
                                f"its layers are {sorted(modules)}")
    generator = torch.Generator().manual_seed(ctx.seed)
    layers = {}
    for module_name, module in modules.items():
        layers[module_name] = share_layer(f"{module_name}.weight", module.weight, config.bits_for(module_name),
                                          config.init, config.max_iterations, generator,
                                          key=f"{key}.bits_per_layer.{module_name}"
                                          if module_name in config.bits_per_layer else f"{key}.bits")
    finetune_shared(model, modules, layers, config.finetune, ctx)
    return layers


def finetune_shared(model: nn.Module, modules: Mapping[str, nn.Module], layers: Mapping[str, SharedLayer],
                    finetune: FineTuning, ctx: CompressionContext, average: bool = False) -> None:
    """Train the centroids of ``layers`` (by module name) in ``model`` with ``ctx.finetune`` when
    ``finetune.epochs`` > 0 (Deep Compression, Sec. 3.3; ``average``: with each cluster's mean gradient,
    Choi et al.'s); the layers get the trained centroids back."""
    for module_name, module in modules.items():
        attach_shared(module, layers[module_name], average)
    try:
        if finetune.epochs > 0:
            ctx.finetune(model, finetune.epochs, lr=finetune.lr)
    finally:
        for module_name, module in modules.items():
            detach_shared(module, layers[module_name])


class KMeansQuantization(CompressionMethod):
    """Per-layer k-means weight sharing (2**bits centroids), centroids fine-tuned, codes bit-packed."""

    name = "kmeans"
    Config = SharingConfig
    config: SharingConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        shared_model = copy.deepcopy(model)
        layers = share_weights(shared_model, self.config, ctx)
        encoded = {layer.name: dense_entry(layer) for layer in layers.values()}
        path = Path(ctx.workdir) / "kmeans.cbm"
        sizes = save_model(path, state_entries(shared_model.state_dict(), encoded),
                           {"method": self.name, "bits": {k: v.bits for k, v in layers.items()}})
        decoded = load_model(path, model)
        metrics = size_metrics(sizes)
        metrics["compression_ratio"] = dense_bytes(model) / sizes["total"]
        return CompressionResult(model=decoded, stored_file=path, layer_bits=codebook_bits(model, layers),
                                 metrics=metrics)
