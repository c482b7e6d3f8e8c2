"""Baselines trained once and reused, keyed by a content hash of what determines them.

The key covers the model (name, factory arguments, the source of its code, the
pretrained file's digest), the data (dataset config and the checksum of its files),
the training recipe (less ``recipe.distill*``, which only fine-tunings read), the trainer
settings that change training, the seed and the source of the training loop. Any change retrains; nothing else does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks import training
from benchmarks.atomic import written_atomically
from benchmarks.models import model_code_version
from benchmarks.schema import RecipeConfig, TrainerConfig
from methods.baseline import load_dense, save_dense
from methods.storage import StorageError

log = logging.getLogger(__name__)

#: Dataset keys that do not change what a model learns (where data lives, loader workers).
_DATA_KEYS_IGNORED = {"data_dir", "source_dir", "num_workers", "eval_batch_size", "download", "_target_"}
#: Trainer keys that do not change training.
_TRAINER_KEYS_IGNORED = {"progress_bar"}
#: Recipe keys that only shape the methods' fine-tuning (the baseline's own training never distils).
_RECIPE_KEYS_IGNORED = {"distill", "distill_T", "distill_alpha"}


@dataclass
class BaselineModel:
    model: nn.Module
    origin: str  # "trained", "cache" or "weights"
    key: str
    file: Path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def baseline_key(
    model_cfg: dict[str, Any],
    dataset_cfg: dict[str, Any],
    data_checksum: str,
    recipe: RecipeConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
) -> str:
    pretrained = model_cfg.get("pretrained")
    content = {
        "model": {k: model_cfg.get(k) for k in ("name", "kwargs")},
        "model_code": model_code_version(model_cfg["name"]),
        "pretrained": file_digest(Path(pretrained)) if pretrained else None,
        "dataset": {k: v for k, v in sorted(dataset_cfg.items()) if k not in _DATA_KEYS_IGNORED},
        "data_checksum": data_checksum,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in _RECIPE_KEYS_IGNORED},
        "trainer": {k: v for k, v in asdict(trainer_cfg).items() if k not in _TRAINER_KEYS_IGNORED},
        "seed": seed,
        "training_code": hashlib.sha256(inspect.getsource(training).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]


def obtain_baseline(
    model: nn.Module,
    key: str,
    cache_dir: Path,
    *,
    use_cache: bool,
    fresh_origin: str,
    train: Any,
) -> BaselineModel:
    """Load the cached baseline for ``key``, or use the weights as they are, or train.

    ``train(model) -> model`` is called only when nothing can be reused; ``fresh_origin``
    says what it does ("trained", or "weights" when the recipe has no epochs). The
    state dict is written to ``cache_dir/<key>.cbm`` (the storage container every method
    writes) in every case, so that the stored size of the baseline is a real file's size.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = cache_dir / f"{key}.cbm"
    if use_cache and file.exists():
        try:
            cached = load_dense(model, file)
        except (RuntimeError, OSError, StorageError) as err:
            log.warning("[baseline] cache file %s unusable (%s): training again", file, err)
        else:
            log.info("[baseline] loaded from cache %s", file)
            return BaselineModel(cached, "cache", key, file)
    start = time.perf_counter()
    trained = train(model)
    origin = fresh_origin
    with written_atomically(file) as partial:  # an interrupted run never leaves half a cache entry
        save_dense(trained, partial)
    if origin != "trained":
        log.info("[baseline] no training (recipe.epochs=0): %s used as they are", origin)
    else:
        log.info("[baseline] trained in %.0f s, cached as %s", time.perf_counter() - start, file)
    return BaselineModel(trained, origin, key, file)
