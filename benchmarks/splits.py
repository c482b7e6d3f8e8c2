"""Which data split each recorded figure comes from, and the rule that choices never see test.

Every run measures accuracy on two splits: the report split (test: ``top1``, ``top5``,
``loss``, ``top1_delta``) and the selection split (val: the same names with ``val_``).
Sweeps, presets, rewards and early stopping choose on the selection split only; a sweep
asked to optimise a test figure is refused before any trial runs.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Metrics measured on the selection (validation) split carry this prefix: ``val_top1``.
SELECTION_PREFIX = "val_"
#: Metrics of the report (test) split: reported, never an objective.
TEST_METRICS = ("top1", "top5", "loss", "top1_delta")
#: What a run returns to a sweep when no objective is named.
DEFAULT_OBJECTIVE = f"{SELECTION_PREFIX}top1"


class TestSplitObjectiveError(ValueError):
    """A sweep or search was asked to choose by a test-split figure."""


def check_objectives(objectives: Iterable[object], key: str = "objectives") -> None:
    """Refuse objectives measured on the test split, naming the validation figures to use."""
    on_test = [str(name) for name in objectives if str(name).removeprefix("baseline_") in TEST_METRICS]
    if on_test:
        instead = [SELECTION_PREFIX + name.removeprefix("baseline_") for name in on_test]
        raise TestSplitObjectiveError(
            f"{key}: {on_test} are test-split metrics, which choices must never see; "
            f"optimise the validation figures instead: {instead}")
