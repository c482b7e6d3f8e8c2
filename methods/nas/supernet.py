"""The over-parameterised network of ProxylessNAS: every searched block holds all its candidates.

Cai et al. (ICLR 2019), Sec. 3.1-3.2. Each block is a :class:`MixedOp` with architecture
parameters ``alpha`` (initialised from N(0, 1e-3), as the authors' ``mix_op.py``) and path
probabilities p = softmax(alpha). It runs in one of three modes:

- ``sample`` (weight steps): one path drawn from p runs; only its weights get gradients (the
  binarized forward: memory of one path, not of N);
- ``two`` (architecture steps; the paper's two-path sampling): two paths drawn from p without
  replacement, one of them active with their renormalised probabilities p'; the output is
  ``sum_j g_j o_j`` with binary gates g whose gradient reaches alpha as
  dL/dalpha_i = sum_j dL/dg_j p'_j (delta_ij - p'_i) (Sec. 3.2.1). It is written as a
  straight-through gate ``g = onehot + p' - stop_grad(p')``, which has exactly that gradient, so
  autograd computes it (no custom Function: NNI notes the authors' one breaks under DDP). The
  inactive path runs without a graph: only its dL/dg_j = <o_j, dL/dout> is needed;
- ``fixed``: one given path (derivation, one-shot evaluation of a sampled architecture).

After each architecture step :meth:`SuperNet.rebalance` shifts the two sampled alphas so the
other paths keep their probabilities (the reference code's ``set_arch_param_grad`` /
``rescale_updated_arch_param``). ``zero`` contributes nothing (its block is skipped); when it is
the active path its alpha gets no gradient from that step, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from methods.hooks import TrainingHook, TrainingState
from methods.nas.space import ZERO, Architecture, Head, SearchSpace, Slot, build_op, stem
from methods.nn_init import init_conv_linear

MODES = ("sample", "two", "fixed")


class MixedOp(nn.Module):
    """All candidates of one block, their alphas, and which of them run."""

    def __init__(self, slot: Slot) -> None:
        super().__init__()
        self.names = slot.candidates
        # the shortcut is the block's (added outside), so a candidate is its conv branch alone and zero is 0
        self.candidates = nn.ModuleList(build_op(op, slot, shortcut=False) for op in slot.candidates)
        self.alpha = nn.Parameter(torch.empty(len(slot.candidates)).normal_(0, 1e-3))
        self.mode, self.active = "sample", 0
        self.pair: tuple[int, ...] = (0,)

    def probabilities(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Weight step: one path drawn from p."""
        p = self.probabilities().detach()
        self.mode, self.active = "sample", int(torch.multinomial(p, 1, generator=generator))
        self.pair = (self.active,)

    def sample_two(self, generator: torch.Generator | None = None) -> None:
        """Architecture step: two paths drawn from p without replacement, one of them active by p'."""
        p = self.probabilities().detach()
        if len(p) == 1:
            self.mode, self.active, self.pair = "two", 0, (0,)
            return
        pair = torch.multinomial(p, 2, replacement=False, generator=generator).tolist()
        renormalised = p[pair] / p[pair].sum()
        self.mode, self.pair = "two", (int(pair[0]), int(pair[1]))
        self.active = self.pair[int(torch.multinomial(renormalised, 1, generator=generator))]

    def fix(self, index: int) -> None:
        self.mode, self.active, self.pair = "fixed", index, (index,)

    def _run(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.names[index] == ZERO else self.candidates[index](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block's conv-branch output (None when the active path is ``zero``: the block is skipped)."""
        if self.mode != "two" or len(self.pair) == 1 or self.names[self.active] == ZERO:
            return self._run(self.active, x)
        probs = F.softmax(self.alpha[list(self.pair)], dim=0)
        onehot = torch.tensor([float(i == self.active) for i in self.pair], device=x.device)
        gates = onehot + probs - probs.detach()
        out: torch.Tensor | None = None
        for gate, index in zip(gates, self.pair, strict=True):
            if self.names[index] == ZERO:
                continue  # its output is 0, so dL/dg is 0
            if index == self.active:
                branch = self._run(index, x)
            else:
                with torch.no_grad():  # only dL/dg = <o, dL/dout> is needed from the inactive path
                    branch = self._run(index, x)
            assert branch is not None
            out = gate * branch if out is None else out + gate * branch
        return out


class SearchBlock(nn.Module):
    """A mixed op plus the block's identity shortcut where the shape is kept."""

    def __init__(self, slot: Slot) -> None:
        super().__init__()
        self.slot = slot
        self.mixed = MixedOp(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mixed(x)
        if out is None:  # zero: the block is skipped
            return x
        return x + out if self.slot.keeps_shape else out


class SuperNet(nn.Module):
    """Stem, one :class:`SearchBlock` per slot of ``space``, head; alphas are the architecture parameters."""

    def __init__(self, space: SearchSpace, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.space = space
        self.stem = stem(space, in_chans)
        self.blocks = nn.ModuleList(SearchBlock(slot) for slot in space.slots())
        self.head = Head(space.widths[-1], space.head_channels, num_classes, drop_rate)
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def mixed_ops(self) -> list[MixedOp]:
        return [cast(SearchBlock, block).mixed for block in self.blocks]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [op.alpha for op in self.mixed_ops()]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def probabilities(self) -> list[list[float]]:
        return [op.probabilities().tolist() for op in self.mixed_ops()]

    def sample(self, generator: torch.Generator | None = None) -> None:
        for op in self.mixed_ops():
            op.sample(generator)

    def sample_two(self, generator: torch.Generator | None = None) -> None:
        for op in self.mixed_ops():
            op.sample_two(generator)

    def fix(self, arch: Architecture) -> None:
        """Run ``arch``'s path in every block (its ops must come from this space)."""
        for op, name in zip(self.mixed_ops(), arch.ops, strict=True):
            op.fix(op.names.index(name))

    @torch.no_grad()
    def rebalance(self, before: list[torch.Tensor]) -> None:
        """After an architecture step: shift the sampled alphas so the unsampled paths keep their probabilities."""
        for op, old in zip(self.mixed_ops(), before, strict=True):
            if len(op.pair) < 2:
                continue
            pair = list(op.pair)
            offset = torch.logsumexp(op.alpha[pair], 0) - torch.logsumexp(old[pair], 0)
            op.alpha[pair] -= offset

    def derive(self) -> Architecture:
        """The argmax of p in every block (Sec. 3.2: the derived architecture)."""
        return Architecture(self.space, tuple(op.names[int(op.alpha.argmax())] for op in self.mixed_ops()))


class SampledPaths(TrainingHook):
    """Before every weight step of ``supernet`` (in the one training loop), one path per block drawn from p
    (uniform while the alphas are equal): the binarized weight step every supernet search trains with."""

    def __init__(self, supernet: SuperNet, generator: torch.Generator) -> None:
        self.supernet, self.generator = supernet, generator

    def on_train_batch_start(self, state: TrainingState) -> None:
        self.supernet.sample(self.generator)
