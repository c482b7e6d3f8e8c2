"""Product quantization of fully connected and convolution weights (Gong et al. 2014).

Gong, Liu, Yang & Bourdev, "Compressing Deep Convolutional Networks using Vector
Quantization" (2014), Sec. 3.3 (Jegou et al.'s product quantization applied to weights),
as summarised by Aswani et al. (Sec. B) and Berthelier et al. (2020, Sec. 2.4):

* a layer's weight, viewed as a matrix ``W`` of ``m`` rows (output units; for a
  convolution the flattened ``in x kh x kw`` filter of each output channel) and ``n``
  columns, is split column-wise into ``s = n / d`` sub-spaces ``W = [W^1 ... W^s]``;
* in each sub-space the ``m`` sub-vectors (rows of ``W^i``, ``d`` values each) are
  clustered by k-means into ``k = 2**bits`` codewords: a codebook per sub-space;
* each row stores one ``bits``-bit code per sub-space (bit-packed); the layer stores
  ``m * s * bits`` bits of codes plus ``s * k * d`` float32 codebook entries, i.e.
  ``k * n`` floats (Gong et al.'s storage count ``32 k n + m s log2 k`` bits).

Gong et al. did not fine-tune; ``finetune.epochs > 0`` optionally trains the codewords
like Deep Compression trains centroids (a codeword's gradient is the sum of the gradients
of the sub-vectors that use it; a ``torch.nn.utils.parametrize`` function of the
codebooks). Departures: k-means++ seeding (seeded) then Lloyd iterations; a layer's
sub-vector length ``d`` must divide its row length (a clear error otherwise), and a
sub-space never gets more codewords than it has sub-vectors (``bits`` too large for a
layer with few rows is an error naming ``bits_per_layer``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, finetune_default, option, select_layers
from methods.quantization.kmeans import dense_bytes
from methods.storage import load_model, save_model, size_metrics
from methods.storage.codebook import pq_entry, reconstruct
from methods.storage.codecs import state_entries


def kmeans_vectors(vectors: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (k-means++ seeding, Lloyd iterations) of ``vectors`` (N, d): (codewords (k, d), codes (N,))."""
    n = vectors.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [vectors[first]]
    dist = ((vectors - centers[0]) ** 2).sum(1)
    for _ in range(1, k):  # k-means++: the next seed with probability proportional to D(x)^2
        probs = dist / dist.sum() if float(dist.sum()) > 0 else torch.full((n,), 1.0 / n)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        centers.append(vectors[nxt])
        dist = torch.minimum(dist, ((vectors - vectors[nxt]) ** 2).sum(1))
    return lloyd(vectors, torch.stack(centers).clone(), iterations)


def lloyd(vectors: torch.Tensor, codewords: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations from ``codewords`` (k, d): (codewords, codes); the squared error never grows, and a
    codeword nobody picks keeps its value (Q-CNN's warm-started refinement relies on both)."""
    n, k = vectors.shape[0], codewords.shape[0]
    codes = torch.cdist(vectors, codewords).argmin(1)
    for _ in range(iterations):
        sums = torch.zeros_like(codewords).index_add_(0, codes, vectors)
        counts = torch.zeros(k, dtype=vectors.dtype).index_add_(0, codes, torch.ones(n, dtype=vectors.dtype))
        codewords = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], codewords)
        new_codes = torch.cdist(vectors, codewords).argmin(1)
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return codewords, codes


@dataclass
class ProductQuantizedLayer:
    """One layer's weight as ``s`` codebooks (s, k, d) and codes (m, s); residual quantization (``rq``)
    stacks ``t`` stages: codebooks (t, s, k, d), codes (m, t, s), the stages' sub-vectors summed."""

    name: str
    shape: tuple[int, ...]
    bits: int
    codebooks: torch.Tensor  # float32 (s, k, d)
    codes: torch.Tensor  # int64 (m, s)

    @property
    def stages(self) -> int:
        return self.codebooks.shape[0] if self.codebooks.dim() == 4 else 1

    def weight(self) -> torch.Tensor:
        return reconstruct(self.codebooks, self.codes).reshape(self.shape)


def subspace_matrix(name: str, weight: torch.Tensor, bits: int, subvector_length: int,
                    key: str) -> torch.Tensor:
    """``weight`` as its (m, n) matrix of rows, after checking that ``subvector_length`` divides ``n``
    and that ``2**bits`` codewords do not outnumber the ``m`` sub-vectors of a sub-space."""
    matrix = weight.detach().float().reshape(weight.shape[0], -1)
    m, n = matrix.shape
    if n % subvector_length:
        raise MethodConfigError(
            f"method.subvector_length: {subvector_length} does not divide the {n} columns of layer {name!r}; "
            f"use a divisor of {n} (subvector_length_per_layer)"
        )
    if 2**bits > m:
        raise MethodConfigError(
            f"{key}: {bits} bits ask for {2**bits} codewords per sub-space but layer {name!r} has only {m} "
            f"sub-vectors per sub-space; use at most {int(math.floor(math.log2(m)))} bits for it"
        )
    return matrix


def product_quantize(name: str, weight: torch.Tensor, bits: int, subvector_length: int, iterations: int,
                     generator: torch.Generator, key: str, stages: int = 1) -> ProductQuantizedLayer:
    """k-means of each sub-space's sub-vectors; with ``stages`` > 1 residual quantization (Gong et al.,
    Sec. 3.4): each further stage clusters what the stages before it left over."""
    residual = subspace_matrix(name, weight, bits, subvector_length, key).clone()
    k, s, d = 2**bits, residual.shape[1] // subvector_length, subvector_length
    codebooks = torch.zeros(stages, s, k, d)
    codes = torch.zeros(residual.shape[0], stages, s, dtype=torch.long)
    for stage in range(stages):
        for i in range(s):
            words, c = kmeans_vectors(residual[:, i * d:(i + 1) * d], k, iterations, generator)
            codebooks[stage, i], codes[:, stage, i] = words, c
            residual[:, i * d:(i + 1) * d] -= words[c]
    if stages == 1:  # plain product quantization: (s, k, d) and (m, s)
        return ProductQuantizedLayer(name, tuple(weight.shape), bits, codebooks[0], codes[:, 0])
    return ProductQuantizedLayer(name, tuple(weight.shape), bits, codebooks, codes)


class _ProductWeights(nn.Module):
    """Parametrization ``weight = reconstruct(codebooks, codes)``: the codebooks are trained."""

    codes: torch.Tensor

    def __init__(self, layer: ProductQuantizedLayer) -> None:
        super().__init__()
        self.register_buffer("codes", layer.codes.clone())
        self.shape = layer.shape
        self._initial = layer.codebooks.clone()

    def forward(self, codebooks: torch.Tensor) -> torch.Tensor:
        return reconstruct(codebooks, self.codes).reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self._initial.clone().to(weight.dtype)


@dataclass
class PQConfig:
    """conf/method/pq.yaml."""

    bits: int = option(8, ge=1, le=8, why="2**bits codewords per sub-space, codes packed at that width")
    bits_per_layer: dict[str, int] = option(factory=dict, ge=1, le=8, why="codeword bits")
    subvector_length: int = option(4, ge=1, why="values per sub-vector")
    subvector_length_per_layer: dict[str, int] = option(factory=dict, ge=1, why="values per sub-vector")
    max_iterations: int = option(50, ge=1)
    finetune: FineTuning = option(factory=finetune_default(0.0))
    layers: LayerSelection = option(factory=LayerSelection)


class ProductQuantization(CompressionMethod):
    """Gong et al. PQ: per layer, ``s`` sub-spaces of ``subvector_length`` columns, ``2**bits`` codewords each."""

    name = "pq"
    Config = PQConfig
    config: PQConfig

    def quantize_layers(self, model: nn.Module, ctx: CompressionContext) -> dict[str, ProductQuantizedLayer]:
        c = self.config
        modules = select_layers(model, (1, *tuple(ctx.input_shape)[1:]), c.layers)
        for key, table in (("bits_per_layer", c.bits_per_layer), ("subvector_length_per_layer", c.subvector_length_per_layer)):
            unknown = sorted(set(table) - set(modules))
            if unknown:
                raise MethodConfigError(f"method.{key} names {unknown}, not layers of the model {sorted(modules)}")
        generator = torch.Generator().manual_seed(ctx.seed)
        return {
            name: self.quantize_layer(
                f"{name}.weight", module.weight, c.bits_per_layer.get(name, c.bits),
                c.subvector_length_per_layer.get(name, c.subvector_length), generator,
                f"method.bits_per_layer.{name}" if name in c.bits_per_layer else "method.bits")
            for name, module in modules.items()
        }

    def quantize_layer(self, name: str, weight: torch.Tensor, bits: int, subvector_length: int,
                       generator: torch.Generator, key: str) -> ProductQuantizedLayer:
        """One layer's quantization (``rq`` adds stages here); errors name ``key``."""
        return product_quantize(name, weight, bits, subvector_length, self.config.max_iterations, generator, key)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        work = copy.deepcopy(model)
        layers = self.quantize_layers(work, ctx)
        modules = dict(work.named_modules())
        for name, layer in layers.items():
            parametrize.register_parametrization(modules[name], "weight", _ProductWeights(layer))
        try:
            if self.config.finetune.epochs > 0:
                ctx.finetune(work, self.config.finetune.epochs, lr=self.config.finetune.lr)
        finally:
            for name, layer in layers.items():
                layer.codebooks = modules[name].get_parameter("parametrizations.weight.original").detach().clone().float()
                parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
        path = Path(ctx.workdir) / f"{self.name}.cbm"
        encoded = {layer.name: pq_entry(layer.name, layer.shape, layer.codebooks, layer.codes, layer.bits)
                   for layer in layers.values()}
        sizes = save_model(path, state_entries(work.state_dict(), encoded), {"method": self.name})
        metrics = size_metrics(sizes)
        metrics["compression_ratio"] = dense_bytes(model) / sizes["total"]
        return CompressionResult(model=load_model(path, model), stored_file=path,
                                 layer_bits={name: (math.ceil(layer.bits * layer.stages / layer.codebooks.shape[-1]), 32)
                                             for name, layer in layers.items()},
                                 metrics=metrics)
