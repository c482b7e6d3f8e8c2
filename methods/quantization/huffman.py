"""Huffman coding of quantized weights and of sparse index differences (Deep Compression).

Han, Mao & Dally, "Deep Compression" (ICLR 2016), Sec. 4: after pruning and weight sharing,
the codebook indices and the relative indices of the sparse matrix are far from uniformly
distributed (their Fig. 5), so a Huffman code stores them in fewer bits than fixed-length
codes; the paper reports 20-30% saved. The canonical Huffman coder itself is
:mod:`methods.storage.huffman`, the stored streams :mod:`methods.storage.codebook`'s.

The ``HuffmanCoding`` method applies Deep Compression's last stage on its own: it shares
the weights of each layer with k-means (:mod:`methods.quantization.kmeans`, with or
without fine-tuning) and stores the codebook indices, and for a pruned model the sparse
relative indices, as Huffman bit streams. ``deep_compression`` runs the whole pipeline.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, finetune_default, option
from methods.quantization.kmeans import (
    SharedLayer,
    SharingConfig,
    codebook_bits,
    dense_bytes,
    share_weights,
    shared_entry,
)
from methods.storage import load_model, save_model, size_metrics
from methods.storage.codecs import state_entries


# ------------------------------------------------------------------------------ the method
@dataclass
class HuffmanConfig(SharingConfig):
    """conf/method/huffman.yaml: weight sharing (no fine-tuning by default) and the relative-index width."""

    finetune: FineTuning = option(factory=finetune_default(0.0))
    index_bits: int = option(5, ge=1, le=8, why="relative indices of the sparse layout")


class HuffmanCoding(CompressionMethod):
    """k-means weight sharing whose codes, and for pruned layers relative indices, are Huffman-coded.

    Deep Compression's third stage on its own: the model's layers are shared into
    ``2**bits`` values (:mod:`methods.quantization.kmeans`; no fine-tuning unless
    ``finetune.epochs`` > 0); a layer with zeros (a pruned baseline) is stored sparsely,
    its relative indices of ``index_bits`` bits Huffman-coded too. The file with
    fixed-length codes is written next to it, so the saving of the Huffman stage is
    measured, not estimated (``size_fixed_length_bytes``).
    """

    name = "huffman"
    Config = HuffmanConfig
    config: HuffmanConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        shared = copy.deepcopy(model)
        layers = share_weights(shared, self.config, ctx)
        return huffman_result(self.name, model, shared, layers, Path(ctx.workdir), self.config.index_bits)


def huffman_result(method: str, model: nn.Module, shared: nn.Module, layers: Mapping[str, SharedLayer], workdir: Path,
                   index_bits: int) -> CompressionResult:
    """``shared`` written twice, codes bit-packed and Huffman-coded (layers with zeros sparsely, with
    ``index_bits``-bit relative indices): the Huffman file is the result, the packed one its measured
    reference (``size_fixed_length_bytes``); ``model`` is the decoding template."""
    files = {}
    for coding in ("packed", "huffman"):
        encoded = {layer.name: shared_entry(layer, "sparse" if layer.zero_code else "dense", coding, index_bits)
                   for layer in layers.values()}
        path = workdir / f"{method}_{coding}.cbm"
        files[coding] = (path, save_model(path, state_entries(shared.state_dict(), encoded),
                                          {"method": method, "coding": coding}))
    path, sizes = files["huffman"]
    metrics = size_metrics(sizes)
    metrics["size_fixed_length_bytes"] = float(files["packed"][1]["total"])
    metrics["huffman_saving"] = 1.0 - sizes["total"] / files["packed"][1]["total"]
    metrics["compression_ratio"] = dense_bytes(model) / sizes["total"]
    metrics["bits_per_weight"] = 8 * sizes.get("weights", 0) / max(sum(layer.codes.numel() for layer in layers.values()), 1)
    return CompressionResult(model=load_model(path, model), stored_file=path, layer_bits=codebook_bits(model, layers),
                             metrics=metrics, artifacts=[files["packed"][0]])
