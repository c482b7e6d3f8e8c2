"""What every method writes beside its stored model: JSON records and per-layer policy plots.

Family-neutral on purpose: pruning, quantization and the next families all record a policy
(a number per layer) and show it as bars (STYLE.md: results worth looking at are pictures),
so these live here rather than in one method's module that the others would borrow from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path``; return the path (for a result's artifacts)."""
    path.write_text(json.dumps(payload, indent=2, sort_keys=False))
    return path


def plot_policy(values: Mapping[str, float], ylabel: str, path: Path) -> list[Path]:
    """A bar per layer (the per-layer policy as a picture); [] when matplotlib cannot draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(values) + 1.5), 3.2))
        ax.bar(range(len(values)), list(values.values()))
        ax.set_xticks(range(len(values)), list(values), rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return [path]
    except Exception as err:  # noqa: BLE001 - the JSON policy is the record; the plot is a convenience
        log.warning("policy plot skipped (%s)", err)
        return []
