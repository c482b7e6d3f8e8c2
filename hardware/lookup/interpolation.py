"""Multilinear interpolation over channel counts, and the grid units a profile measures (CompactNet)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from hardware.lookup.units import Unit

#: default channel grid of a profile: every 8 up to 32, then coarser (CompactNet-style)
DEFAULT_CHANNEL_GRID: tuple[int, ...] = (
    1, 3, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 960, 1024, 1280, 1536, 1920, 2048,
)  # fmt: skip


def _brackets(query: tuple[int, ...], axis_values: list[list[int]]) -> list[tuple[int, int]] | None:
    out = []
    for q, values in zip(query, axis_values, strict=False):
        if q in values:
            out.append((q, q))
            continue
        lower = [v for v in values if v < q]
        upper = [v for v in values if v > q]
        if not lower or not upper:
            return None
        out.append((max(lower), min(upper)))
    return out


def interpolate(points: dict[tuple[int, ...], float], query: tuple[int, ...], grid: Iterable[int] = ()) -> float | None:
    """Multilinear interpolation of ``points`` (channel counts -> ms) at ``query``.

    Exact on table points; between two neighbouring points along an axis the value
    lies between theirs. The bracketing counts are the nearest profiled counts on each
    axis, or else the profile's grid; ``None`` when no complete bracket exists (outside
    the profiled range, or a corner never profiled).
    """
    if query in points:
        return points[query]
    if not points:
        return None
    ndim = len(query)
    candidates = [[sorted({p[i] for p in points}) for i in range(ndim)]]
    grid = sorted(set(grid))
    if grid:
        candidates.append([grid] * ndim)
    for axis_values in candidates:
        brackets = _brackets(query, axis_values)
        if brackets is None:
            continue
        total, complete = 0.0, True
        for corner in itertools.product((0, 1), repeat=ndim):
            weight, point = 1.0, []
            for (low, high), q, side in zip(brackets, query, corner, strict=False):
                if low == high:
                    if side == 1:
                        weight = 0.0
                        break
                    point.append(low)
                    continue
                t = (q - low) / (high - low)
                weight *= t if side else 1.0 - t
                point.append(high if side else low)
            if weight == 0.0:
                continue
            value = points.get(tuple(point))
            if value is None:
                complete = False
                break
            total += weight * value
        if complete:
            return total
    return None


def bracket_units(units: Iterable[Unit], grid: Iterable[int], narrower: bool = False) -> list[Unit]:
    """The grid units that bracket each unit's channel counts (what a profile measures).

    A count on the grid is kept; a count between two grid values is replaced by both;
    a count outside the grid is kept as is (profiled exactly). ``narrower`` adds every grid
    count below each count, so that the table prices every width a pruning search can reach.
    """
    grid = sorted(set(grid))
    out: dict[str, Unit] = {}
    for unit in units:
        if not unit.axes:
            out.setdefault(unit.key, unit)
            continue
        per_axis = []
        for value in unit.axis_values:
            if value in grid or value < grid[0] or value > grid[-1]:
                counts: tuple[int, ...] = (value,)
            else:
                counts = (max(g for g in grid if g < value), min(g for g in grid if g > value))
            per_axis.append(tuple(g for g in grid if g < min(counts)) + counts if narrower else counts)
        for combo in itertools.product(*per_axis):
            grid_unit = unit.with_axes(combo)
            out.setdefault(grid_unit.key, grid_unit)
    return list(out.values())

