"""What every search method does with its result: record the search, train the derived net, store it.

The derived network is trained from scratch with the run's recipe (``ctx.finetune``) and stored
as the ``searched`` architecture: its own tensors plus the architecture file's contents, so it
loads without the template (the run's hand-designed model, which a search does not change). The
records are the derived architecture (``arch.json``, what ``model=searched model.arch=<file>``
builds), the cost table the search saw (``cost_table.json``), the architecture parameters over
time (``arch_history.json``) and a picture of the final probabilities (``arch_probabilities.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionResult
from methods.config import FineTuning
from methods.nas.costs import CostTable
from methods.nas.space import Architecture, SearchedNet, describe
from methods.reporting import save_figure, write_json
from methods.search.resource import make_resource
from methods.storage import StoredState, load_model, load_state_into, register_architecture, save_model, size_metrics
from methods.storage.codecs import dense_entries

SEARCHED_ARCHITECTURE = "searched"


@register_architecture(SEARCHED_ARCHITECTURE)
def _searched(template: nn.Module, state: StoredState) -> nn.Module:
    """The derived network rebuilt from the architecture in the file (not from the template)."""
    meta = state.meta
    net = SearchedNet(Architecture.from_dict(meta["arch"]), meta["num_classes"], meta["in_chans"], meta["drop_rate"])
    return load_state_into(net, state).eval()


def plot_probabilities(history: list[dict[str, Any]], names: list[tuple[str, ...]], path: Path) -> list[Path]:
    """A heat map of the final path probabilities: one row per block, one column per op."""
    ops = sorted({op for block in names for op in block}, key=lambda op: (op == "zero", op))
    final = history[-1]["probabilities"]
    grid = [[block_p[block.index(op)] if op in block else float("nan") for op in ops]
            for block, block_p in zip(names, final, strict=True)]

    def draw(ax: Any) -> None:
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(ops)), ops)
        ax.set_yticks(range(len(grid)), [f"block {i}" for i in range(len(grid))], fontsize=7)
        ax.set_title("final path probabilities (argmax = derived op)", fontsize=9)
        ax.figure.colorbar(image, ax=ax)

    return save_figure(path, (1.0 + 0.8 * len(ops), 1.0 + 0.3 * len(grid)), draw, what="architecture")


def record_search(workdir: Path, arch: Architecture, table: CostTable, history: list[dict[str, Any]] | None = None,
                  names: list[tuple[str, ...]] | None = None) -> list[Path]:
    """Write the derived architecture, the cost table, and (gradient searches) the probabilities over time."""
    artifacts = [arch.save(workdir / "arch.json"), table.save(workdir / "cost_table.json"),
                 write_json(workdir / "arch_blocks.json", list(describe(arch)))]
    if history:
        artifacts.append(write_json(workdir / "arch_history.json", history))
        blocks = names or [slot.candidates for slot in arch.space.slots()]
        artifacts += plot_probabilities(history, blocks, workdir / "arch_probabilities.png")
    return artifacts


def table_check(table: CostTable, arch: Architecture, net: nn.Module, ctx: CompressionContext) -> dict[str, float]:
    """The derived net priced whole by the target (or counted), against the sum of its candidates in the table.

    They agree where the target is deterministic and additive over blocks (tables, analytical
    models, MACs); a measured target differs by its noise and by what the whole network shares.
    """
    size = table.source["input_size"]
    shape = (int(table.source["batch_size"]), int(ctx.input_shape[1]), size, size)
    whole = make_resource(table.kind, ctx.target, shape, key="method.cost")(net.eval())
    summed = table.of(arch)
    return {"derived_cost": summed, "derived_target_cost": whole,
            "cost_table_error_pct": 100.0 * (summed - whole) / whole if whole else 0.0}


def store_searched(arch: Architecture, template: nn.Module, ctx: CompressionContext, finetune: FineTuning,
                   drop_rate: float, table: CostTable, metrics: dict[str, float],
                   artifacts: list[Path], net: SearchedNet | None = None) -> CompressionResult:
    """Train ``arch`` from scratch on the run's recipe (or go on training ``net``, a network of ``arch`` a search
    trained), store it, and return it decoded from its file."""
    num_classes, in_chans = int(ctx.datamodule.num_classes), int(ctx.input_shape[1])
    if net is None:
        torch.manual_seed(ctx.seed)  # the same initial weights for the same seed
        net = SearchedNet(arch, num_classes, in_chans, drop_rate)
    ctx.finetune(net, finetune.epochs, lr=finetune.lr)
    path = ctx.workdir / "searched.cbm"
    meta = {"arch": arch.to_dict(), "num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    sizes = save_model(path, dense_entries(net.state_dict()), meta, architecture=SEARCHED_ARCHITECTURE)
    described = list(describe(arch))
    shape = {"derived_blocks": float(sum(row["op"] != "zero" for row in described)),
             "derived_params": float(sum(p.numel() for p in net.parameters())),
             **table_check(table, arch, net, ctx)}
    return CompressionResult(model=load_model(path, template), stored_file=path,
                             metrics={**metrics, **shape, **size_metrics(sizes)}, artifacts=artifacts)
