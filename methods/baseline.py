"""No compression: the reference every other method is compared with."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult


def save_dense(model: nn.Module, path) -> None:
    """Store a model as its fp32 state dict: the size every ratio is relative to."""
    torch.save(model.state_dict(), path)


def load_dense(template: nn.Module, path) -> nn.Module:
    """Decode a file written by :func:`save_dense` into a copy of ``template``."""
    model = copy.deepcopy(template)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


@dataclass
class BaselineConfig:
    """conf/method/baseline.yaml: nothing to set (a key given is refused, not ignored)."""


class Baseline(CompressionMethod):
    """The trained model as it is, stored as an fp32 state dict."""

    name = "baseline"
    Config = BaselineConfig
    config: BaselineConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        path = ctx.workdir / "model.pt"
        save_dense(model, path)
        return CompressionResult(model=load_dense(model, path), stored_file=path)
