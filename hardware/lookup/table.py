"""The latency table: unit key -> measured ms, with the metadata of how it was measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hardware.lookup.interpolation import interpolate
from hardware.lookup.units import Unit
from hardware.target import HardwareError

TABLE_FORMAT = 1


class LatencyTable:
    """Entries (unit key -> measured ms) with the metadata of how they were measured."""

    def __init__(
        self, metadata: dict[str, Any] | None = None, entries: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.metadata = dict(metadata or {})
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})
        self._families: dict[str, dict[str, dict[tuple[int, ...], float]]] = {}

    # -- files -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise HardwareError(f"latency table {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != TABLE_FORMAT:
            raise HardwareError(f"latency table {path} has format {data.get('format')!r}, expected {TABLE_FORMAT}")
        return cls(data["metadata"], data["entries"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": TABLE_FORMAT, "metadata": self.metadata, "entries": dict(sorted(self.entries.items()))}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        return path

    # -- entries -----------------------------------------------------------------------
    def add(self, unit: Unit, measurement: dict[str, Any]) -> None:
        self.entries[unit.key] = {**measurement, "unit": unit.to_json()}
        self._families = {}

    def __contains__(self, unit: Unit) -> bool:
        return unit.key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.metadata.get("channel_grid", ()))

    def _family_points(self, statistic: str) -> dict[str, dict[tuple[int, ...], float]]:
        if statistic not in self._families:
            families: dict[str, dict[tuple[int, ...], float]] = {}
            for entry in self.entries.values():
                unit = Unit.from_json(entry["unit"])
                families.setdefault(unit.family, {})[unit.axis_values] = float(entry.get(statistic, entry["ms"]))
            self._families[statistic] = families
        return self._families[statistic]

    def lookup(self, unit: Unit, statistic: str = "ms") -> tuple[float | None, str]:
        """(ms, "exact" | "interpolated") or (None, "missing").

        ``statistic``: the entry field to use, "ms" (the median) or "min_ms" (the minimum).
        """
        entry = self.entries.get(unit.key)
        if entry is not None:
            return float(entry.get(statistic, entry["ms"])), "exact"
        if unit.axes:
            points = self._family_points(statistic).get(unit.family, {})
            value = interpolate(points, unit.axis_values, self.grid)
            if value is not None:
                return value, "interpolated"
        return None, "missing"

