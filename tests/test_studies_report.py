"""The studies' markdown reports in results/ are renderings of their JSON figures, not hand-edited text."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.studies.report import REPORTS, RESULTS, main, render


def test_every_committed_report_is_the_rendering_of_its_json(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().out


def test_a_figure_in_the_json_reaches_the_report_and_the_goal_verdict(tmp_path):
    for source in REPORTS["quantization_ptq"].sources:
        shutil.copy(RESULTS / source, tmp_path / source)
    run = json.loads((tmp_path / "quantization_ptq.json").read_text())
    run["variants"]["auto"]["deployed_top1"] = run["float_top1"] - 1.25
    (tmp_path / "quantization_ptq.json").write_text(json.dumps(run))
    text = render("quantization_ptq", tmp_path)
    assert f"**{run['float_top1'] - 1.25:.2f}** | **−1.25**" in text and "is **not met** by the default" in text


def test_check_reports_a_hand_edited_report_and_rendering_repairs_it(tmp_path, capsys):
    shutil.copy(RESULTS / "scaleout.json", tmp_path / "scaleout.json")
    (tmp_path / "scaleout.md").write_text(render("scaleout") + "a hand-written line\n")
    assert main(["scaleout", "--check", "--results", str(tmp_path)]) == 1
    assert "differ from their JSON: scaleout" in capsys.readouterr().out
    assert main(["scaleout", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "scaleout.md").read_text() == render("scaleout")


def test_a_missing_source_names_the_file_and_the_study(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"scaleout\.json.*python -m benchmarks\.studies\.scaleout"):
        render("scaleout", tmp_path)
