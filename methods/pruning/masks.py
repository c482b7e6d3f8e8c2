"""Unstructured weight masks: magnitude thresholds by sparsity, and masks kept during training.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural
Networks", NIPS 2015 (Aswani survey, Sec. II.F; Berthelier et al. 2020, Sec. 2.3 and
Fig. 3): connections whose weight magnitude falls below a threshold are removed and the
network is retrained with them held at zero. Here the threshold is the one that reaches a
requested *sparsity*, per layer or one threshold for all layers together ("global").

Zhu & Gupta's gradual pruning (AGP) uses the same masks, recomputed every few steps
(Aswani survey, Sec. II.K: "for every layer, a binary mask variable is added ... of the same
size and shape as the weights"). :class:`MaskHook` keeps pruned weights at zero while
the model is fine-tuned: their gradients are zeroed before each optimizer step and the mask is
re-applied after it (momentum or weight decay would otherwise revive them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from methods.base import MethodConfigError
from methods.hooks import TrainingHook, TrainingState


def weight_of(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


SCOPES = ("layer", "global")


def check_sparsity(sparsity: float, key: str = "method.sparsity") -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise MethodConfigError(f"{key} must be in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")
    return float(sparsity)


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float],
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero the smallest-magnitude weights (:func:`saliency_masks` of ``|w|``)."""
    return saliency_masks({name: w.detach().abs() for name, w in weights.items()}, sparsity, scope)


def saliency_masks(scores: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float],
                   scope: str = "layer") -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero the weights of lowest score (magnitude, OBD's or OBS's saliency).

    ``scope="layer"``: each layer loses ``sparsity`` (or ``sparsity[name]``) of its own weights;
    ``scope="global"``: one threshold over all layers together removes ``sparsity`` of all of
    them (layers then end up with different sparsities). Exactly round(s x n) weights are
    removed (ties broken by position), so the requested sparsity is met, not approximated.
    """
    if scope not in SCOPES:
        raise MethodConfigError(f"method.scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global":
        if isinstance(sparsity, Mapping):
            raise MethodConfigError("method.scope=global takes one sparsity, not per-layer sparsities")
        s = check_sparsity(sparsity)
        flat = torch.cat([w.detach().flatten().float().cpu() for w in scores.values()])
        keep = _keep_largest(flat, flat.numel() - int(round(s * flat.numel())))
        masks, start = {}, 0
        for name, w in scores.items():
            masks[name] = keep[start:start + w.numel()].reshape(w.shape).to(w.device)
            start += w.numel()
        return masks
    masks = {}
    for name, w in scores.items():
        s = check_sparsity(sparsity[name] if isinstance(sparsity, Mapping) else sparsity,
                           f"method.layer_sparsity.{name}" if isinstance(sparsity, Mapping) else "method.sparsity")
        flat = w.detach().flatten().float().cpu()
        masks[name] = _keep_largest(flat, flat.numel() - int(round(s * flat.numel()))).reshape(w.shape).to(w.device)
    return masks


def _keep_largest(values: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    if count > 0:
        # stable sort: among equal magnitudes the earlier position is removed first
        order = torch.sort(values, stable=True).indices
        keep[order[values.numel() - count:]] = True
    return keep


class WeightMasks:
    """Keep-masks of the weights of some conv/linear layers, applied in place."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.layers = dict(layers)
        self.masks: dict[str, torch.Tensor] = {n: torch.ones_like(weight_of(m), dtype=torch.bool)
                                               for n, m in self.layers.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: weight_of(m) for n, m in self.layers.items()}

    def update(self, sparsity: float | Mapping[str, float], scope: str = "layer",
               scores: Mapping[str, torch.Tensor] | None = None) -> None:
        """Recompute the masks from ``scores`` (default: the current weight magnitudes), then apply them."""
        self.masks = saliency_masks(scores, sparsity, scope) if scores is not None else \
            magnitude_masks(self.weights(), sparsity, scope)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, module in self.layers.items():
            weight, mask = weight_of(module), self.masks[name]
            if mask.device != weight.device:
                mask = self.masks[name] = mask.to(weight.device)
            weight.mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for name, module in self.layers.items():
            grad = weight_of(module).grad
            if grad is not None:
                grad.mul_(self.masks[name].to(grad.device))

    def layer_sparsity(self) -> dict[str, float]:
        """Measured fraction of zero weights per layer (from the weights, not the masks)."""
        return {n: 1.0 - int(weight_of(m).count_nonzero()) / weight_of(m).numel() for n, m in self.layers.items()}

    def sparsity(self) -> float:
        """Measured fraction of zero weights over all masked layers together."""
        total = sum(weight_of(m).numel() for m in self.layers.values())
        nonzero = sum(int(weight_of(m).count_nonzero()) for m in self.layers.values())
        return 1.0 - nonzero / total if total else 0.0


class MaskHook(TrainingHook):
    """Holds pruned weights at zero during fine-tuning (Han et al. 2015's retraining)."""

    def __init__(self, masks: WeightMasks) -> None:
        self.masks = masks

    def on_train_start(self, state: TrainingState) -> None:
        self.masks.apply()

    def on_before_optimizer_step(self, state: TrainingState) -> None:
        self.masks.mask_gradients()

    def on_train_batch_end(self, state: TrainingState) -> None:
        self.masks.apply()

    def on_train_end(self, state: TrainingState) -> None:
        self.masks.apply()
