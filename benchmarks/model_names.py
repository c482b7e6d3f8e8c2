"""Which model names exist, known without importing timm: a misspelt ``model.name`` answers at once.

timm's registry fills as every model module of timm (and of the zoo, ``benchmarks.models``) is
imported, which takes seconds; the names it then holds depend only on timm's version and on the
zoo's code. So the preflight of a run saves them once per (timm version, zoo source) in the cache
folder and reads them back on the next run (issue 11: a typo answers in under 3 s).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from benchmarks.atomic import written_atomically

#: the zoo's source: a change to it may add or rename models, so it keys the cache
ZOO_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ModelNames:
    """Every architecture timm has registered (the zoo's included) and the zoo's own."""

    registered: tuple[str, ...]
    zoo: tuple[str, ...]

    def check(self, name: object) -> None:
        """Refuse a name that is neither ours nor timm's, naming the close matches."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"model.name must be a non-empty model name, got {name!r}")
        if name.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(f"model.name={name!r}: hub/remote models are not supported (CompressBench runs offline); "
                             "use a registered architecture name and model.pretrained=<path>")
        if name.split(".", 1)[0] in self.registered:  # timm's ``architecture.tag`` names
            return
        close = difflib.get_close_matches(name, self.registered, n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown model.name={name!r}: not one of CompressBench's models ({', '.join(self.zoo)}) "
                         f"nor a timm model.{hint} List them with timm.list_models('<pattern>').")

    def save(self, cache_dir: Path) -> None:
        path = cache_file(cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as partial:  # concurrent runs' preflights never read half a file
            partial.write_text(json.dumps({"registered": self.registered, "zoo": self.zoo}), encoding="utf-8")

    @classmethod
    def cached(cls, cache_dir: Path) -> ModelNames | None:
        """The names saved for this timm and this zoo, or None (never saved, or unreadable)."""
        try:
            data = json.loads(cache_file(cache_dir).read_text(encoding="utf-8"))
            return cls(tuple(data["registered"]), tuple(data["zoo"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def cache_file(cache_dir: Path) -> Path:
    zoo = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(ZOO_DIR.glob("*.py")))).hexdigest()[:16]
    return cache_dir / f"model_names-timm{version('timm')}-zoo{zoo}.json"
