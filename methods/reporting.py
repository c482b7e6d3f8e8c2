"""What every method writes beside its stored model: JSON records and per-layer policy plots.

Family-neutral on purpose: pruning, quantization and the next families all record a policy
(a number per layer) and show it as bars (STYLE.md: results worth looking at are pictures),
so these live here rather than in one method's module that the others would borrow from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path``; return the path (for a result's artifacts)."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=False))
    return path


def save_figure(path: Path, size: tuple[float, float], draw: Callable[[Any], None], what: str = "policy") -> list[Path]:
    """``draw(ax)`` on one figure of ``size`` inches saved to ``path``; [] when matplotlib cannot draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return [path]
    except Exception as err:  # noqa: BLE001 - the JSON record is the record; the plot is a convenience
        log.warning("%s plot skipped (%s)", what, err)
        return []


def plot_policy(values: Mapping[str, float], ylabel: str, path: Path) -> list[Path]:
    """A bar per layer (the per-layer policy as a picture); [] when matplotlib cannot draw."""

    def draw(ax: Any) -> None:
        ax.bar(range(len(values)), list(values.values()))
        ax.set_xticks(range(len(values)), list(values), rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)

    return save_figure(path, (max(4.0, 0.28 * len(values) + 1.5), 3.2), draw)


#: bar colours of the layer kinds a mixed-precision chart tells apart (HAQ's Figs. 3-5)
KIND_COLOURS = {"depthwise": "#d62728", "pointwise": "#1f77b4", "conv": "#2ca02c", "linear": "#9467bd"}


def draw_layer_bits(ax: Any, bits: Mapping[str, tuple[int, int]], kinds: Mapping[str, str], title: str = "") -> None:
    """On ``ax``: weight bits up and activation bits down (hatched) per layer, coloured by kind; 32 = float, not drawn."""
    names = list(bits)
    colours = [KIND_COLOURS.get(kinds.get(n, ""), "#7f7f7f") for n in names]
    weights = [w if w < 32 else 0 for w, _ in bits.values()]
    acts = [-a if a < 32 else 0 for _, a in bits.values()]
    ax.bar(range(len(names)), weights, color=colours)
    if any(acts):
        ax.bar(range(len(names)), acts, color=colours, hatch="//", alpha=0.55)
    ax.axhline(0, color="black", lw=0.6)
    ax.yaxis.set_major_formatter(lambda value, _pos: f"{abs(value):g}")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("bits: weights (up), activations (down)" if any(acts) else "weight bits")
    handles = [ax.bar(0, 0, color=c, label=k) for k, c in KIND_COLOURS.items() if k in set(kinds.values())]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)


def plot_layer_bits(bits: Mapping[str, tuple[int, int]], kinds: Mapping[str, str], path: Path,
                    title: str = "") -> list[Path]:
    """A mixed-precision policy as a picture (:func:`draw_layer_bits`); [] when matplotlib cannot draw."""
    return save_figure(path, (max(5.0, 0.3 * len(bits) + 2), 3.6), lambda ax: draw_layer_bits(ax, bits, kinds, title),
                       "bit-width")
