"""No compression: the reference every other method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.storage import load_model, save_model
from methods.storage.codecs import dense_entries


def save_dense(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Store a model's state dict as it is (fp32), in the one container: the size every ratio is relative to."""
    return save_model(path, dense_entries(model.state_dict()))


def load_dense(template: nn.Module, path: str | Path) -> nn.Module:
    """Decode a file written by :func:`save_dense` into a copy of ``template``."""
    return load_model(path, template)


@dataclass
class BaselineConfig:
    """conf/method/baseline.yaml: nothing to set (a key given is refused, not ignored)."""


class Baseline(CompressionMethod):
    """The trained model as it is, its fp32 state dict in the storage container."""

    name = "baseline"
    Config = BaselineConfig
    config: BaselineConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        path = ctx.workdir / "model.cbm"
        save_dense(model, path)
        return CompressionResult(model=load_dense(model, path), stored_file=path)
