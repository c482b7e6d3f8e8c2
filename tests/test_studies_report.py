"""The studies' markdown reports in results/ are renderings of their JSON figures, not hand-edited text."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from benchmarks.studies import deep_compression_selection
from benchmarks.studies.quantization_codebook import record_deep_compression
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


def _copy_sources(name, tmp_path):
    for source in REPORTS[name].sources:
        shutil.copy(RESULTS / source, tmp_path / source)


def test_reproductions_show_the_run_chosen_on_validation_beside_the_paper_figure(tmp_path):
    _copy_sources("reproductions", tmp_path)
    runs = json.loads((tmp_path / "deep_compression_mnist.json").read_text())
    chosen = deep_compression_selection.choose(runs, deep_compression_selection.COMPRESSION_GOAL)["lenet5"]
    rival = dict(runs[chosen], **{"huffman/top1_val": runs[chosen]["huffman/top1_val"] + 0.5,
                                   "final_top1": runs[chosen]["baseline_top1"] - 0.3, "settings": "a rival"})
    runs["dc_lenet5_s7_rival"] = rival
    (tmp_path / "deep_compression_mnist.json").write_text(json.dumps(runs))
    paper = yaml.safe_load((tmp_path / "deep_compression_paper.yaml").read_text())
    paper["networks"]["lenet5"]["compressed_error"] = 0.5
    (tmp_path / "deep_compression_paper.yaml").write_text(yaml.safe_dump(paper))
    text = render("reproductions", tmp_path)
    error = 100 - rival["final_top1"]
    assert "run `dc_lenet5_s7_rival` (a rival)" in text
    assert (f"| LeNet-5 | compressed error | 0.50% | **{error:.2f}%** | {error - 0.5:+.2f} (ours vs our baseline: "
            f"**+0.30**, goal <= +0.10 ✘ not met) | 7 |") in text


def test_fixed_point_goal_verdict_follows_the_figures(tmp_path):
    _copy_sources("quantization_fixed_point", tmp_path)
    run = json.loads((tmp_path / "quantization_fixed_point.json").read_text())
    assert "**met**" in render("quantization_fixed_point", tmp_path)
    goal = next(r for r in run["rows"] if r.get("fraction_bits") == 12 and r.get("rounding") == "stochastic"
                and r["finetune_epochs"])
    goal["test_top1"] = run["rows"][0]["test_top1"] - 0.25
    (tmp_path / "quantization_fixed_point.json").write_text(json.dumps(run))
    assert "-0.25 point, **not met**" in render("quantization_fixed_point", tmp_path)


def test_amc_report_states_the_machine_and_whether_amc_beats_uniform(tmp_path):
    _copy_sources("pruning_amc", tmp_path)
    run = json.loads((tmp_path / "pruning_amc.json").read_text())
    uniform = next(r for r in run["rows"] if r["search"] == "uniform")
    amc = next(r for r in run["rows"] if r["search"] == "ddpg" and r["target_ratio"] == uniform["target_ratio"])
    amc["top1"], run["machine"]["load_average_1m"] = uniform["top1"] + 3.0, 17.25
    (tmp_path / "pruning_amc.json").write_text(json.dumps(run))
    text = render("pruning_amc", tmp_path)
    assert f"on {run['machine']['cpu']} ({run['machine']['logical_cpus']} logical CPUs), 1-minute load average 17.2" in text
    assert f"AMC against uniform width at {uniform['target_ratio']}x flops: +3.00 point" in text
    assert "the difference is significant." in text


def test_a_missing_source_names_the_study_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pruning_platform_exchange\.json.*benchmarks\.studies\.pruning_auto"):
        render("pruning_platform_exchange", tmp_path)


def test_a_deep_compression_run_recorded_by_the_study_is_an_entry_the_reports_read(tmp_path):
    _copy_sources("reproductions", tmp_path)
    runs = json.loads((tmp_path / "deep_compression_mnist.json").read_text())
    entry = deep_compression_selection.choose(runs, deep_compression_selection.COMPRESSION_GOAL)["lenet_300_100"]
    committed = runs[entry]
    top_level = ("baseline_top1", "final_top1", "stored_bytes", "seconds", "settings")
    output = {"baseline_test": {"top1": committed["baseline_top1"]}, "final_test": {"top1": committed["final_top1"]},
              "stored_bytes": committed["stored_bytes"], "seconds": committed["seconds"] + 0.4,
              "metrics": {k: v for k, v in committed.items() if k not in top_level}}
    runs_file = tmp_path / "deep_compression_mnist.json"
    assert record_deep_compression(output, entry, committed["settings"], runs_file) == committed
    output["metrics"]["huffman/top1_val"] += 1.0
    record_deep_compression(output, "dc_lenet_300_100_s3_rerun", "a rerun", runs_file)
    assert "run `dc_lenet_300_100_s3_rerun` (a rerun)" in render("reproductions", tmp_path)
    assert "should hold the setting of `dc_lenet_300_100_s3_rerun`" in render("deep_compression_selection", tmp_path)
