"""Network morphism on derived networks: mutations of an architecture, and a child built from its parent's weights.

Net2Net (Chen, Goodfellow and Shlens, ICLR 2016, Sec. 2.2-2.3) and network morphism (Wei et al., ICML
2016): a change of architecture whose child computes its parent's function, so a search goes on
training instead of starting over. On the MBConv blocks of :mod:`.space` three changes keep the
function exactly (in eval mode):

- ``grow_kernel`` (k3 -> k5 -> k7): the depthwise kernel zero-padded around its centre; the padding
  rule (k // 2) keeps the same taps on the same inputs;
- ``widen`` (expansion 3 -> 6): Net2Net's WiderNet on the hidden channels: child channel j copies
  parent channel g(j) = j mod h (expand conv and BN, depthwise filter and BN), and the projection's
  input weights of every copy are divided by the number of copies, so their sum is the parent's;
- ``deepen`` (zero -> the smallest op): a new block whose projection BN has scale and shift 0, so its
  residual branch adds 0 (the zero-initialised residual of Goyal et al. 2017). ``noise`` > 0 draws
  that scale from N(0, noise) (the symmetry breaking NNI's deeper operator adds); the child is then
  only close to its parent.

The others inherit what fits and say they do not preserve: ``shrink_kernel`` keeps the kernel's
centre, ``narrow`` the first hidden channels, ``remove`` drops the block (zero).
Departure: Net2Net picks g at random; j mod h copies every channel equally often (3 -> 6: twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.config import fail
from methods.nas.space import ZERO, Architecture, MBConv, SearchedNet, SearchSpace, Slot, op_name, parse_op

#: what a block's weights went through; the first five keep the parent's function
PRESERVING = ("copied", "skipped", "kernel_grow", "widen", "deepen")
LOSSY = ("kernel_shrink", "narrow", "remove", "fresh")


def _step(values: Sequence[int], current: int, direction: int) -> int | None:
    """The next larger (``direction`` 1) or smaller (-1) value of ``values`` after ``current``."""
    ordered = sorted(values, reverse=direction < 0)
    later = [v for v in ordered if (v - current) * direction > 0]
    return later[0] if later else None


def _op_step(part: int, direction: int) -> Callable[[str, Slot, SearchSpace], str | None]:
    """A change of an op's kernel (``part`` 0) or expansion (1) to the space's next larger or smaller value."""
    def change(op: str, slot: Slot, space: SearchSpace) -> str | None:
        if op == ZERO:
            return None
        values = list(parse_op(op))
        new = _step((space.kernels, space.expansions)[part], values[part], direction)
        if new is None:
            return None
        values[part] = new
        return op_name(*values)
    return change


def _deepen(op: str, slot: Slot, space: SearchSpace) -> str | None:
    return op_name(min(space.kernels), min(space.expansions)) if op == ZERO else None


def _remove(op: str, slot: Slot, space: SearchSpace) -> str | None:
    return ZERO if op != ZERO and ZERO in slot.candidates else None


@dataclass(frozen=True)
class Mutation:
    """One change of one block's op; ``change`` gives the new op, or None where it does not apply."""

    name: str
    preserving: bool
    change: Callable[[str, Slot, SearchSpace], str | None]


MUTATIONS: dict[str, Mutation] = {m.name: m for m in (
    Mutation("grow_kernel", True, _op_step(0, 1)),
    Mutation("widen", True, _op_step(1, 1)),
    Mutation("deepen", True, _deepen),
    Mutation("shrink_kernel", False, _op_step(0, -1)),
    Mutation("narrow", False, _op_step(1, -1)),
    Mutation("remove", False, _remove),
)}


def applicable(arch: Architecture, names: Sequence[str]) -> dict[str, list[int]]:
    """For each mutation of ``names``, the blocks of ``arch`` it can change (mutations with none left out)."""
    slots = arch.space.slots()
    found = {name: [slot.index for slot, op in zip(slots, arch.ops, strict=True)
                    if MUTATIONS[name].change(op, slot, arch.space) is not None] for name in names}
    return {name: blocks for name, blocks in found.items() if blocks}


def mutate(arch: Architecture, name: str, block: int) -> Architecture:
    """``arch`` with mutation ``name`` applied to searched block ``block``."""
    if name not in MUTATIONS:
        fail("mutation", f"{name!r} is not a mutation; choose one of {list(MUTATIONS)}")
    slot = arch.space.slots()[block]
    new = MUTATIONS[name].change(arch.ops[block], slot, arch.space)
    if new is None:
        fail("mutation", f"{name!r} does not apply to block {block} ({arch.ops[block]!r})")
    return Architecture(arch.space, tuple(new if i == block else op for i, op in enumerate(arch.ops)))


@dataclass(frozen=True)
class Transfer:
    """How one searched block of a child got its weights (``how``: steps from PRESERVING or LOSSY)."""

    block: int
    parent: str
    child: str
    how: tuple[str, ...]
    preserving: bool


def blocks_by_slot(net: SearchedNet) -> dict[int, MBConv]:
    """The built blocks of ``net`` keyed by their slot (skipped slots have none)."""
    built = [index for index, op in enumerate(net.arch.ops) if op != ZERO]
    return dict(zip(built, net.blocks, strict=True))  # type: ignore[arg-type]


def _conv_bn(layer: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """The conv and the BN of a ConvBnReLU6 or of a block's projection."""
    conv, bn = list(layer.children())[:2]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return conv, bn


def _copy_bn(source: nn.BatchNorm2d, target: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[index])
    if source.num_batches_tracked is not None and target.num_batches_tracked is not None:
        target.num_batches_tracked.copy_(source.num_batches_tracked)


def _resize_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """A KxK kernel zero-padded (or cropped) around its centre to ``kernel``."""
    pad = (kernel - weight.shape[-1]) // 2
    if pad >= 0:
        return F.pad(weight, [pad] * 4)
    return weight[..., -pad:pad, -pad:pad]


def _inherit(parent: MBConv, child: MBConv) -> tuple[str, ...]:
    """Copy ``parent`` into ``child`` (kernel padded or cropped, hidden channels replicated or cut)."""
    if (parent.expansion == 1) != (child.expansion == 1):
        return ("fresh",)  # one block has no expand conv: its hidden channels are its inputs, nothing maps
    (dw_p, dw_bn_p), (dw_c, dw_bn_c) = _conv_bn(parent.depthwise), _conv_bn(child.depthwise)
    (pw_p, pw_bn_p), (pw_c, pw_bn_c) = _conv_bn(parent.project), _conv_bn(child.project)
    hidden_p, hidden_c = dw_p.out_channels, dw_c.out_channels
    index = torch.arange(hidden_c, device=dw_p.weight.device) % hidden_p
    copies = torch.bincount(index, minlength=hidden_p)[index].to(pw_p.weight.dtype)
    if parent.expansion != 1:
        (ex_p, ex_bn_p), (ex_c, ex_bn_c) = _conv_bn(parent.expand), _conv_bn(child.expand)
        ex_c.weight.copy_(ex_p.weight[index])
        _copy_bn(ex_bn_p, ex_bn_c, index)
    dw_c.weight.copy_(_resize_kernel(dw_p.weight[index], child.kernel))
    _copy_bn(dw_bn_p, dw_bn_c, index)
    pw_c.weight.copy_(pw_p.weight[:, index] / copies.view(1, -1, 1, 1))
    pw_bn_c.load_state_dict(pw_bn_p.state_dict())
    steps = []
    if child.kernel != parent.kernel:
        steps.append("kernel_grow" if child.kernel > parent.kernel else "kernel_shrink")
    if hidden_c != hidden_p:
        steps.append("widen" if hidden_c > hidden_p else "narrow")
    return tuple(steps) or ("copied",)


def _zero_residual(block: MBConv, noise: float, generator: torch.Generator | None) -> None:
    """The block's branch outputs 0 (or nearly: projection BN scale ~ N(0, noise))."""
    _, bn = _conv_bn(block.project)
    bn.bias.zero_()
    if noise > 0:
        bn.weight.copy_(torch.randn(bn.weight.shape, generator=generator) * noise)
    else:
        bn.weight.zero_()


@torch.no_grad()
def morph(parent: SearchedNet, arch: Architecture, noise: float = 0.0,
          generator: torch.Generator | None = None) -> tuple[SearchedNet, list[Transfer]]:
    """A :class:`SearchedNet` of ``arch`` built from ``parent``'s weights block by block, and how each block got them.

    Stem and head are copied; blocks new to the child start from a fresh initialisation (zero
    residual for ``deepen``), so the child is exactly the parent's function when every block's
    transfer is preserving (eval mode; training-mode BN statistics differ with the batch).
    """
    if arch.space != parent.arch.space:
        fail("morph", "the child's architecture must come from the parent's search space")
    classifier, dropout = parent.head[-1], parent.head[-2]
    first_conv, _ = _conv_bn(parent.stem[0])
    assert isinstance(classifier, nn.Linear) and isinstance(dropout, nn.Dropout)
    child = SearchedNet(arch, classifier.out_features, first_conv.in_channels, dropout.p)
    child.to(classifier.weight.device)
    child.stem.load_state_dict(parent.stem.state_dict())
    child.head.load_state_dict(parent.head.state_dict())
    old, new = blocks_by_slot(parent), blocks_by_slot(child)
    transfers = []
    for block, (parent_op, child_op) in enumerate(zip(parent.arch.ops, arch.ops, strict=True)):
        if parent_op == ZERO and child_op == ZERO:
            how: tuple[str, ...] = ("skipped",)
        elif child_op == ZERO:
            how = ("remove",)
        elif parent_op == ZERO:
            _zero_residual(new[block], noise, generator)
            how = ("deepen",)
        else:
            how = _inherit(old[block], new[block])
        exact = all(step in PRESERVING for step in how) and not ("deepen" in how and noise > 0)
        transfers.append(Transfer(block, parent_op, child_op, how, exact))
    return child, transfers
