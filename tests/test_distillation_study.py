"""results/distillation.md: each section says which command wrote its part; the ResNet-56 table joins two parts."""

from __future__ import annotations

import copy
import json
from typing import Any

from benchmarks.studies import distillation
from benchmarks.studies.report import RESULTS


def _figures() -> dict[str, Any]:
    return json.loads((RESULTS / distillation.FIGURES).read_text())


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_each_section_names_the_flags_of_its_own_part_not_the_last_invocations() -> None:
    figures = _figures()
    figures["settings"]["cifar_epochs"] = 7.0  # as if the last invocation reran cifar_students at 7 epochs
    text = distillation.render(figures)
    settings = figures["settings"]
    hinton = _section(text, "MNIST, Hinton")
    assert (f"`python -m benchmarks.studies.distillation --parts hinton --seeds 1 2 3 --epochs {settings['epochs']:g} "
            f"--teacher-epochs {settings['teacher_epochs']:g}`") in hinton
    assert "--cifar" not in hinton
    students = _section(text, "CIFAR-10 (cifar10_jpeg)")
    assert "--parts cifar_students " in students and "--cifar-epochs 7`" in students and " --epochs " not in students


def test_the_resnet56_table_has_a_row_for_each_recovery_part() -> None:
    figures = _figures()
    runs, settings = figures["runs"], figures["settings"]
    settings["cifar_lowbit"] = {"a low-bit model": {"method": "pact", "settings": {"bits": 4, "act_bits": 4}}}
    for key in [k for k in runs if k.startswith("cifar_recovery/")]:
        lowbit = key.replace("cifar_recovery/", "cifar_recovery_lowbit/").replace(
            "filter pruning, <= 0.5x MACs", "a low-bit model")
        runs[lowbit] = copy.deepcopy(runs[key])
        runs[lowbit]["test_top1"] -= 10
    table = _section(distillation.render(figures), "Distillation as the recovery fine-tuning (ResNet-56")
    assert "| filter pruning, <= 0.5x MACs |" in table and "| a low-bit model |" in table
    assert "--parts cifar_recovery cifar_recovery_lowbit " in table


def test_a_grid_rows_learning_rate_is_chosen_on_validation_never_on_test() -> None:
    grid = {0.001: {"val_top1": 80.0, "test_top1": 90.0}, 0.0001: {"val_top1": 85.0, "test_top1": 70.0}}
    assert distillation.best_lr(grid) == 0.0001


def test_a_grid_row_names_each_arms_chosen_rate_and_the_grid_it_came_from() -> None:
    figures = _figures()
    runs, settings = figures["runs"], figures["settings"]
    name = "a low-bit model"
    settings["cifar_lowbit"] = {name: {"method": "pact", "settings": {"bits": 4, "act_bits": 4},
                                       "lr_grid": [0.001, 0.0001]}}
    for key in [k for k in runs if k.startswith("cifar_recovery/")]:
        runs[key.replace("cifar_recovery/", "cifar_recovery_lowbit/").replace(
            "filter pruning, <= 0.5x MACs", name)] = {**runs[key], "lr": 0.001 if "/ce/" in key else 0.0001}
    for arm, lr, val in (("ce", 0.001, 81.0), ("ce", 0.0001, 80.5), ("kd", 0.001, 12.0), ("kd", 0.0001, 84.0)):
        runs[f"cifar_recovery_lowbit/{name}/{arm}/grid/lr{lr:g}"] = {**runs["cifar_recovery/filter pruning, <= 0.5x "
                                                                          "MACs/ce/s1"], "lr": lr, "val_top1": val}
    table = _section(distillation.render(figures), "Distillation as the recovery fine-tuning (ResNet-56")
    assert f"| {name}, lr 0.001 (CE) / 0.0001 (KD), chosen on val |" in table
    assert "CE 0.001: val 81.00" in table and "KD 0.001: val 12.00" in table and "0.0001: val 84.00" in table
    assert table.count(f"| {name}") == 1  # the grid's runs are no rows of their own
