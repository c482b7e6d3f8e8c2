"""Load a pretrained checkpoint into a model, strictly, with errors that say what to fix.

Accepted files (read with ``torch.load(..., weights_only=True)``, so no code runs):
a plain state dict, or a dict holding it under ``state_dict`` or ``model`` (the layouts of
akamaster/pytorch_resnet_cifar10, IntelLabs/distiller and most training scripts). A
``module.`` prefix left by ``nn.DataParallel``/DDP is stripped.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_WRAPPER_KEYS = ("state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
_SHOWN_PER_KIND = 5
_BN_COUNTER_SUFFIX = "num_batches_tracked"


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model's parameters and buffers."""

    def __init__(
        self,
        path: str,
        missing_keys: list[str],
        unexpected_keys: list[str],
        shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.path = path
        self.missing_keys = missing_keys
        self.unexpected_keys = unexpected_keys
        self.shape_mismatches = shape_mismatches
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"checkpoint {self.path} does not match the model (model.pretrained):"]
        if self.missing_keys:
            lines.append(f"  missing keys ({len(self.missing_keys)}): {_first(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"  unexpected keys ({len(self.unexpected_keys)}): {_first(self.unexpected_keys)}")
        if self.shape_mismatches:
            shown = [
                f"{key} checkpoint {list(saved)} vs model {list(expected)}"
                for key, saved, expected in self.shape_mismatches[:_SHOWN_PER_KIND]
            ]
            more = len(self.shape_mismatches) - len(shown)
            lines.append(
                f"  shape mismatches ({len(self.shape_mismatches)}): " + "; ".join(shown) + (f"; ... {more} more" if more else "")
            )
        lines.append("  likely fix: " + self._likely_fix())
        return "\n".join(lines)

    def _likely_fix(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return (
                "same architecture, different sizes: make model.kwargs (e.g. width_mult, channel_plan) and the "
                "number of classes / input channels match those the checkpoint was trained with"
            )
        return (
            "the checkpoint was saved from a different architecture: set model.name (and model.kwargs) to the "
            "model it was trained as, or point model.pretrained at a checkpoint of this model, or set "
            "model.pretrained=null to train from scratch"
        )


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_PER_KIND])
    more = len(keys) - _SHOWN_PER_KIND
    return shown + (f", ... {more} more" if more > 0 else "")


def extract_state_dict(checkpoint: object, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint and strip a ``module.`` prefix."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict of tensors")
    state_dict: Mapping = checkpoint
    for key in _WRAPPER_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            state_dict = checkpoint[key]
            break
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint {path} holds no tensors (top-level keys: {list(checkpoint)[:10]}); expected a state dict "
            f"or a dict with one under {' or '.join(repr(k) for k in _WRAPPER_KEYS)}"
        )
    if all(key.startswith(_DATA_PARALLEL_PREFIX) for key in tensors):
        tensors = {key[len(_DATA_PARALLEL_PREFIX):]: value for key, value in tensors.items()}
    return tensors


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` strictly (every key, every shape).

    Raises ``FileNotFoundError`` naming ``model.pretrained`` if the file is absent and
    :class:`CheckpointMismatchError` (missing/unexpected keys, shape mismatches, likely fix)
    if it does not fit.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained points to {str(path)!r}, which is not a file: fix the path "
            f"(e.g. model.pretrained=/path/to/checkpoint.th) or set model.pretrained=null"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = extract_state_dict(checkpoint, str(path))
    expected = model.state_dict()
    # BatchNorm fills a missing ``num_batches_tracked`` itself (checkpoints from torch < 0.4.1 lack it).
    missing = [key for key in expected if key not in state_dict and not key.endswith(_BN_COUNTER_SUFFIX)]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        (key, tuple(value.shape), tuple(expected[key].shape))
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(str(path), missing, unexpected, mismatched)
    model.load_state_dict(state_dict, strict=True)
