"""A study's JSON of figures, resumable: one entry per finished run, written as each run ends.

A rerun with the same settings skips the runs already in the file; changed settings start it
afresh (the figures must all come from one setting). A study whose parts depend on different
settings (``distillation``) names them: ``parts`` maps a part (the first segment of a run's key)
to the settings it depends on, and a change drops that part's runs only. A setting that none of
the parts run now (``running``) depends on keeps its stored value: running one part with the other
parts' flags at their defaults neither drops their runs nor misstates how they were made.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from benchmarks.training import TrainingDivergedError
from hardware.protocol import machine_provenance


class Runs:
    """``path``: settings, the machine, and ``runs`` by key; ``hidden`` keys are not echoed to the console."""

    def __init__(self, path: Path, settings: dict[str, Any], hidden: Collection[str] = (),
                 parts: Mapping[str, Collection[str]] | None = None, collection: str = "runs",
                 diverged_rows: bool = False, running: Collection[str] | None = None) -> None:
        """``collection``: the JSON field holding the runs (a study's renderer reads it by that name);
        ``diverged_rows``: a training that diverges is recorded as ``{"diverged": <the error>}`` instead of
        stopping the study (a comparison then says which arm did not survive its learning rate)."""
        self.path = path
        self.hidden = set(hidden)
        self.collection = collection
        self.diverged_rows = diverged_rows
        old = json.loads(path.read_text()) if path.exists() else {}
        before = old.get("settings", {})
        if parts is not None and running is not None:
            used = {key for part in running for key in parts[part]}
            settings = {key: value if key in used or key not in before else before[key]
                        for key, value in settings.items()}
        if parts is None:
            kept = old.get(collection, {}) if before == settings else {}
        else:
            changed = {part for part, keys in parts.items() if any(before.get(k) != settings.get(k) for k in keys)}
            kept = {key: run for key, run in old.get(collection, {}).items() if key.split("/", 1)[0] not in changed}
        self.data: dict[str, Any] = {"settings": settings, collection: kept, "machine": machine_provenance()}

    def get(self, key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The run ``key``: from the file, else measured now (with its wall time, load and date) and written."""
        runs = self.data[self.collection]
        if key not in runs:
            start = time.perf_counter()
            try:
                row = measure()
            except TrainingDivergedError as err:
                if not self.diverged_rows:
                    raise
                row = {"diverged": str(err)}
            runs[key] = {**row, "seconds": round(time.perf_counter() - start, 1), "load_average": list(os.getloadavg()),
                         "date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC"}
            self.write()
            print(key, json.dumps({k: v for k, v in runs[key].items() if k not in self.hidden}), flush=True)
        return runs[key]

    def write(self) -> None:
        """Write the file, keeping the runs another process of the same settings wrote meanwhile (parts run apart)."""
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        if old.get("settings") == self.data["settings"]:
            self.data[self.collection] = {**old.get(self.collection, {}), **self.data[self.collection]}
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")
