"""Deep Compression: pruning, trained quantization (weight sharing) and Huffman coding.

Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding" (ICLR 2016), Fig. 1, the three-stage pipeline
(Berthelier et al. 2020, Sec. 2.4; Aswani et al., Sec. F):

1. *Pruning* (Sec. 2; Han et al. NeurIPS 2015): the magnitude method of the pruning
   family (:class:`methods.pruning.magnitude.MagnitudePruning`, per-layer sparsity,
   iterative pruning with masked retraining) is run as it is, and its own sparse file
   (CSR / relative index, fp32 values) is the size of this stage.
2. *Trained quantization* (Sec. 3): per-layer k-means weight sharing of the surviving
   weights (:mod:`methods.quantization.kmeans`, ``2**b - 1`` centroids plus the exact
   zero of pruned weights), centroids fine-tuned with the summed gradient of their
   cluster. Stored sparse as in the paper (Sec. 2, Fig. 2): ``b``-bit codes of the nonzero
   weights and ``index_bits``-bit relative indices with filler zeros, both bit-packed, plus
   the codebook.
3. *Huffman coding* (Sec. 4): the same codes and relative indices, each stream
   Huffman-coded with its table (:mod:`methods.quantization.huffman`); lossless, so the
   model is the one of stage 2 (checked).

Every stage writes its file; each stage's size and the size of each part of it (codes,
indices, codebooks, Huffman tables, float biases, header) are recorded, with the accuracy
after the stage. The returned model is decoded from the stage-3 file.

Paper settings (Table 2, 3): LeNet-300-100 keeps 8% / 9% / 26% of fc1 / fc2 / fc3, 6-bit
codes, 5-bit indices (40x); LeNet-5 keeps 66% / 12% / 8% / 19% of conv1 / conv2 / fc1 /
fc2, 8-bit conv and 5-bit fc codes, 5-bit indices (39x): ``conf/experiment/deep_compression_*``.
Departure: the paper stores conv indices in 8 bits for AlexNet/VGG; for the LeNets it
reports 5-bit indices everywhere, which is our default (``index_bits``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import option
from methods.pruning.magnitude import MagnitudeConfig, MagnitudePruning
from methods.quantization.kmeans import (
    SharedLayer,
    SharingConfig,
    codebook_bits,
    dense_bytes,
    share_weights,
    shared_entry,
)
from methods.storage import load_model, read_entries, save_model, size_metrics
from methods.storage.codecs import state_entries


def write_shared_model(path: Path, model: nn.Module, layers: Mapping[str, SharedLayer], coding: str,
                       index_bits: Mapping[str, int], meta: dict[str, Any]) -> dict[str, float]:
    """Write ``model`` with its shared layers stored sparsely (codes + relative indices); its ``size_*_bytes``."""
    encoded = {layer.name: shared_entry(layer, "sparse", coding, index_bits[module])
               for module, layer in layers.items()}
    return size_metrics(save_model(path, state_entries(model.state_dict(), encoded), meta))


@dataclasses.dataclass
class DeepCompressionConfig:
    """conf/method/deep_compression.yaml: each stage's keys are its own method's (magnitude, kmeans)."""

    pruning: MagnitudeConfig = option(factory=MagnitudeConfig)
    sharing: SharingConfig = option(factory=SharingConfig)
    index_bits: int = option(5, ge=1, le=8, why="relative indices of the sparse layout; the paper: 5 for the LeNets")
    index_bits_per_layer: dict[str, int] = option(factory=dict, ge=1, le=8, why="relative-index bits")


class DeepCompression(CompressionMethod):
    """Prune + retrain, k-means sharing + centroid fine-tuning, Huffman coding; each stage's size recorded."""

    name = "deep_compression"
    Config = DeepCompressionConfig
    config: DeepCompressionConfig

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(name, **options)
        self.pruning = MagnitudePruning(f"{self.name}.pruning", **dataclasses.asdict(self.config.pruning))

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        workdir = Path(ctx.workdir)
        metrics: dict[str, float] = {"size_dense_bytes": float(dense_bytes(model))}
        stages: list[dict[str, Any]] = [{"stage": "dense", "bytes": dense_bytes(model), **ctx.evaluate(model, "val")}]

        # 1. pruning with retraining: the pruning method, its own file
        prune_ctx = dataclasses.replace(ctx, workdir=workdir / "1_pruning")
        prune_ctx.workdir.mkdir(parents=True, exist_ok=True)
        pruned = self.pruning.compress(model, prune_ctx)
        metrics.update({f"pruning/{k}": float(v) for k, v in pruned.metrics.items()})
        stages.append({"stage": "pruning", "bytes": pruned.stored_bytes, **ctx.evaluate(pruned.model, "val")})

        # 2. weight sharing of the surviving weights, centroids fine-tuned
        shared = copy.deepcopy(pruned.model)
        layers = share_weights(shared, self.config.sharing, ctx, "method.sharing")
        unknown = sorted(set(self.config.index_bits_per_layer) - set(layers))
        if unknown:
            raise MethodConfigError(f"method.index_bits_per_layer names {unknown}, not shared layers {sorted(layers)}")
        index_bits = {m: self.config.index_bits_per_layer.get(m, self.config.index_bits) for m in layers}
        meta = {"method": self.name}  # bits and index bits are in each tensor's fields
        quantized_path = workdir / "2_quantized.cbm"
        quantized_sizes = write_shared_model(quantized_path, shared, layers, "packed", index_bits, meta)
        quantized = load_model(quantized_path, model)
        stages.append({"stage": "quantization", "bytes": int(quantized_sizes["size_total_bytes"]),
                       **ctx.evaluate(quantized, "val")})

        # 3. Huffman coding of codes and relative indices (lossless)
        final_path = workdir / "3_huffman.cbm"
        final_sizes = write_shared_model(final_path, shared, layers, "huffman", index_bits, meta)
        final = load_model(final_path, model)
        for key, tensor in quantized.state_dict().items():
            if not torch.equal(tensor, final.state_dict()[key]):
                raise AssertionError(f"Huffman coding changed {key}: the stage-3 file does not decode to stage 2")
        stages.append({"stage": "huffman", "bytes": int(final_sizes["size_total_bytes"]), **ctx.evaluate(final, "val")})

        for stage, sizes in (("quantized", quantized_sizes), ("huffman", final_sizes)):
            metrics.update({f"{stage}/{k}": float(v) for k, v in sizes.items()})
        metrics["size_pruned_bytes"] = float(pruned.stored_bytes)
        metrics["size_quantized_bytes"] = float(quantized_sizes["size_total_bytes"])
        metrics["size_huffman_bytes"] = float(final_sizes["size_total_bytes"])
        for stage in ("pruned", "quantized", "huffman"):
            metrics[f"compression_ratio_{stage}"] = metrics["size_dense_bytes"] / metrics[f"size_{stage}_bytes"]
        metrics["compression_ratio"] = metrics["compression_ratio_huffman"]
        metrics.update(self._per_layer(final_path, layers))
        for entry in stages:
            metrics[f"{entry['stage']}/top1_val"] = float(entry["top1"])
        report = workdir / "stages.json"
        report.write_text(json.dumps({"stages": stages, "index_bits": index_bits,
                                      "bits": {m: layer.bits for m, layer in layers.items()},
                                      "metrics": metrics}, indent=2))
        return CompressionResult(model=final, stored_file=final_path, layer_bits=codebook_bits(model, layers),
                                 metrics=metrics, artifacts=[report, *pruned.artifacts])

    @staticmethod
    def _per_layer(path: Path, layers: Mapping[str, SharedLayer]) -> dict[str, float]:
        """Average stored bits per nonzero weight of each layer's codes and indices (Table 2's columns)."""
        _header, entries = read_entries(path)
        out: dict[str, float] = {}
        for entry in entries:
            module = entry.name.rsplit(".", 1)[0]
            if entry.codec != "codebook" or module not in layers:
                continue
            nonzero = max(int((layers[module].codes != 0).sum()), 1)
            out[f"layer/{module}/kept"] = nonzero / layers[module].codes.numel()
            out[f"layer/{module}/bits_per_weight"] = 8 * entry.nbytes("codes") / nonzero
            if "index" in entry.parts:
                out[f"layer/{module}/bits_per_index"] = 8 * entry.nbytes("index") / nonzero
        return out
