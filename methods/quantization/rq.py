"""Residual quantization of fully connected and convolution weights (Gong et al. 2014).

Gong, Liu, Yang & Bourdev, "Compressing Deep Convolutional Networks using Vector
Quantization" (2014), Sec. 3.4, as summarised by Aswani et al. (Sec. B: residual quantization
"explores the redundancies of global structure between weight vectors"):

* the rows of a layer's weight matrix (as in :mod:`methods.quantization.pq`) are clustered by
  k-means into ``2**bits`` codewords; the residuals (row minus its codeword) are clustered again,
  and so on for ``stages`` stages; a row is the sum of its ``stages`` codewords;
* a layer stores ``stages`` codebooks and ``stages`` packed codes per row: ``stages`` times the
  storage of a one-stage quantizer of the same ``bits`` (Gong et al.'s ``32 k n t + m t log2 k``).

Beside Gong et al.'s whole-row vectors (``subvector_length`` = the row length, per layer through
``subvector_length_per_layer``), the residual stages may run in each of ``s`` sub-spaces as PQ's
do (``subvector_length`` smaller than a row), which makes one-stage RQ exactly PQ. Stored with
PQ's codec (a ``stages`` field) and, like PQ, optionally fine-tuned (Gong et al. do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.config import option
from methods.quantization.pq import PQConfig, ProductQuantization, ProductQuantizedLayer, product_quantize


@dataclass
class RQConfig(PQConfig):
    """conf/method/rq.yaml: PQ's keys and the number of residual stages."""

    stages: int = option(2, ge=1, why="residual k-means stages; each adds a codebook and a code per sub-vector")


class ResidualQuantization(ProductQuantization):
    """Gong et al. RQ: ``stages`` k-means stages of the residuals of each sub-space, codes bit-packed."""

    name = "rq"
    Config = RQConfig
    config: RQConfig

    def quantize_layer(self, name: str, weight: torch.Tensor, bits: int, subvector_length: int,
                       generator: torch.Generator, key: str) -> ProductQuantizedLayer:
        return product_quantize(name, weight, bits, subvector_length, self.config.max_iterations, generator, key,
                                stages=self.config.stages)
