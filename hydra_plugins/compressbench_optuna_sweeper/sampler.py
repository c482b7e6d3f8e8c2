"""Seeding a study's sampler per trial, so that workers and resumed sweeps do not repeat each other.

A sampler built once per process from ``seed: ${seed}`` draws the same sequence in every
process: four workers of one shared study each drew the same first point (8 trials, 2
distinct configurations), and a resumed sweep drew its first trials' points again. Optuna's
samplers keep the study's history in the storage, not in themselves, so one rebuilt for each
trial with a seed keyed by (the sweep's seed, the trial's number) loses nothing but its random
state: trial *n* draws what one uninterrupted worker would have drawn for the same history,
whichever worker asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, QMCSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

#: Samplers whose seed must stay one for the whole study (QMC scrambles its whole sequence with it;
#: its points are numbered in the storage, so workers do not repeat each other anyway).
STUDY_SEEDED = (QMCSampler,)


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a sweep seeded with ``seed``, well mixed (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates to ``build(trial_seed(seed, trial.number))``, a sampler built afresh before each trial
    (``first``: the one built with ``seed``, which answers until the first trial)."""

    def __init__(self, build: Callable[[int], BaseSampler], seed: int, first: BaseSampler) -> None:
        self._build = build
        self._seed = int(seed)
        self._current = first

    @property
    def current(self) -> BaseSampler:
        """The sampler of the latest trial."""
        return self._current

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._current = self._build(trial_seed(self._seed, trial.number))
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()
