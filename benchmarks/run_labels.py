"""A run's name and kind: what makes the MLflow runs table readable and the leaderboard comparable.

The name (``lenet5-amc-pixel1-s42``: model, method, hardware, seed; ``-t<n>`` for sweep trial n)
is ``logger.run_name`` when set. The kind says what a run was for, so the leaderboard compares
like with like: ``run_kind`` when set, else derived from the config (the ``tiny`` preset is a
smoke test, a sweep's trial a ``sweep_trial``, anything else a ``user`` run); the DVC matrix sets
``quick`` or ``full`` (benchmarks/matrix.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.schema import ConfigError

RUN_KINDS = ("smoke", "quick", "full", "user", "sweep_trial")
#: the kind of the child runs a search's candidates become (never a run of its own: not settable)
SEARCH_CANDIDATE_KIND = "search_candidate"
#: The kind of the runs of a DVC matrix (conf/bench/<name>.yaml); another matrix's runs are ``user`` runs.
MATRIX_KINDS = {"tiny": "smoke", "quick": "quick", "full": "full"}


def run_kind(explicit: str | None, tags: Mapping[str, Any]) -> str:
    """``explicit`` (the ``run_kind`` key) when set, else what the run's tags say it is."""
    if explicit is not None:
        if explicit not in RUN_KINDS:
            raise ConfigError(f"run_kind: {explicit!r} is not a run kind; set run_kind to one of {list(RUN_KINDS)} "
                              "or leave it null to derive it")
        return explicit
    if tags.get("preset") == "tiny":
        return "smoke"
    if "optuna_trial" in tags:
        return "sweep_trial"
    return "user"


def run_name(explicit: str | None, tags: Mapping[str, Any]) -> str:
    """``explicit`` (``logger.run_name``) when set, else ``<model>-<method>-<hw>-s<seed>[-t<trial>]``."""
    if explicit:
        return explicit
    name = f"{tags['model']}-{tags['method']}-{tags['hw']}-s{tags['seed']}"
    return f"{name}-t{tags['optuna_trial']}" if "optuna_trial" in tags else name
