"""Sequence calibration of a table: how units timed alone add up when they run in a network."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

from torch import nn

from hardware.lookup.table import LatencyTable
from hardware.target import LatencyReport

#: A latency query: (model, input shape) -> report.
Latency = Callable[[nn.Module, tuple[int, ...]], LatencyReport]


def sequence_calibration(table: LatencyTable) -> tuple[float, float]:
    """(scale, per-unit overhead in ms) of :func:`calibrate`; (1, 0) for an uncalibrated table."""
    fitted = table.metadata.get("calibration", {})
    return float(fitted.get("sequence_scale", 1.0)), float(fitted.get("per_unit_overhead_ms", 0.0))


def calibrate(
    table: LatencyTable,
    predict: Latency,
    measure: Latency,
    batch_size: int = 1,
    n: int = 40,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit how units run in sequence, on the profile's own architectures.

    A unit timed alone in a loop runs with warm branch predictors, instruction caches
    and its own weights in cache; in a network a hundred different units take turns,
    and each pays more: in proportion to its own time (a scale ``a``, caches) and a
    fixed amount per call (``d``, dispatch). ``a`` and ``d`` (both >= 0) minimise
    sum(((a S_i + d U_i) - M_i) / M_i)^2 over ``n`` architectures sampled with the
    *profile's* seed (S_i: sum of entries, U_i: units, M_i: measured), so the
    architectures of ``validate`` (another seed) stay unseen. Stored in the table's
    metadata["calibration"]; prediction = a x sum of entries + d x units. ``predict`` is the
    table target's latency, ``measure`` the measured device's it stands for.
    """
    from hardware import search_space

    meta = table.metadata
    spaces = tuple(meta.get("spaces") or ("mobilenetv2", "resnet"))
    seed = int(seed if seed is not None else next((s.get("seed", 0) for s in meta.get("sources", [])), 0))
    saved = meta.pop("calibration", None)
    rows = []
    try:
        for name, config in search_space.sample_architectures(spaces, int(n), seed):
            model = search_space.build(config)
            shape = search_space.input_shape_of(config, batch_size)
            predicted = predict(model, shape)
            measured = measure(model, shape).latency_ms
            rows.append((name, predicted.provenance["sum_of_entries_ms"], predicted.provenance["units"], measured))
            if progress is not None:
                progress(
                    f"{name}: sum of entries {rows[-1][1]:.3f} ms over {rows[-1][2]} units, measured {measured:.3f} ms"
                )
    except BaseException:
        if saved is not None:
            meta["calibration"] = saved
        raise
    import numpy as np
    from scipy.optimize import nnls

    relative = np.array([[s_ / m, u / m] for _, s_, u, m in rows])  # rows divided by M_i: relative error
    (scale, overhead), _ = nnls(relative, np.ones(len(rows)))
    meta["calibration"] = {
        "sequence_scale": float(scale),
        "per_unit_overhead_ms": float(overhead),
        "architectures": [
            {"name": r[0], "sum_of_entries_ms": r[1], "units": r[2], "measured_ms": r[3]} for r in rows
        ],
        "seed": seed,
        "spaces": list(spaces),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return meta["calibration"]
