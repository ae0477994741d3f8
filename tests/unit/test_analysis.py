"""Sweep analysis on synthetic trial records and hand-written Tune experiment dirs (no Ray)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from sas_ray.analysis.report import (
    PLOT_FILE,
    SPEC_FILE,
    TrialRecord,
    analyze,
    read_experiment,
    records_from_result_grid,
    render,
    report_files,
    summarize,
    write_report,
)
from sas_ray.cli import main
from sas_ray.config import AnalyzeConfig
from sas_ray.errors import SasRayError
from sas_ray.io import storage

# (strategy, fraction) -> linear accuracy (%) per seed; kNN is linear - 5 points; time ~ fraction
ACC = {("sas", 0.3): [70.0, 72.0], ("sas", 0.6): [79.5, 80.5],
       ("random", 0.3): [64.0, 66.0], ("random", 0.6): [74.0, 76.0],
       ("full", 1.0): [80.0, 80.0]}
SPEC = {"cells": [{"strategy": s, "fraction": f} for s, f in ACC], "seeds": [0, 1]}


def record(strategy: str, fraction: float, seed: int, acc: float | None = None,
           status: str = "TERMINATED", error: str | None = None) -> TrialRecord:
    metrics = {} if acc is None else {"linear_acc": acc, "knn_acc": acc - 5.0,
                                      "train_time_s": 100.0 * fraction}
    return TrialRecord(strategy, fraction, seed, status, metrics, error,
                       trial_id=f"{strategy}-{fraction}-{seed}")


def all_records() -> list[TrialRecord]:
    return [record(s, f, seed, acc) for (s, f), accs in ACC.items()
            for seed, acc in enumerate(accs)]


def test_summary_means_gaps_and_savings() -> None:
    report = summarize(all_records(), spec=SPEC, tolerance=0.5)
    cells = report.cells.set_index(["strategy", "fraction"])
    assert list(report.cells["strategy"]) == ["sas", "sas", "random", "random", "full"]
    sas = cells.loc[("sas", 0.3)]
    assert sas["seeds"] == 2
    assert sas["linear_acc_mean"] == pytest.approx(71.0)
    assert sas["linear_acc_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 70, 72
    assert sas["knn_acc_mean"] == pytest.approx(66.0)
    assert sas["linear_acc_gap_random"] == pytest.approx(6.0)
    assert sas["linear_acc_gap_full"] == pytest.approx(-9.0)
    assert math.isnan(cells.loc[("random", 0.6)]["linear_acc_gap_random"])
    assert math.isnan(cells.loc[("full", 1.0)]["linear_acc_gap_full"])
    savings = report.savings.set_index("strategy")
    # sas at 0.6 averages 80.0 = full; random at 0.6 is 75.0, more than 0.5 points below
    assert savings.loc["sas", "fraction"] == pytest.approx(0.6)
    assert savings.loc["sas", "data_dropped"] == pytest.approx(0.4)
    assert savings.loc["sas", "time_saved_s"] == pytest.approx(40.0)
    assert math.isnan(savings.loc["random", "fraction"])
    assert report.failed == [] and report.missing == []
    text = render(report)
    assert "sas: keep 60% of the data (drop 40%)" in text
    assert "random: no fraction reaches full data" in text


def test_tolerance_and_metric_change_the_answer() -> None:
    report = summarize(all_records(), spec=SPEC, tolerance=10.0, metric="knn_acc")
    savings = report.savings.set_index("strategy")
    assert savings.loc["sas", "fraction"] == pytest.approx(0.3)  # 66 >= 75 - 10
    assert savings.loc["random", "fraction"] == pytest.approx(0.6)
    with pytest.raises(SasRayError, match=r"analyze\.metric"):
        summarize(all_records(), metric="top5")


def test_partial_sweep_lists_failed_and_missing_trials() -> None:
    records = [r for r in all_records() if not (r.strategy == "sas" and r.fraction == 0.6)]
    records += [record("sas", 0.6, 0, status="ERROR", error="RuntimeError: out of memory"),
                record("sas", 0.6, 1, status="RUNNING")]
    records = [r for r in records if r.strategy != "full" or r.seed == 0]  # full seed 1 absent
    report = summarize(records, spec=SPEC)
    assert ("sas", 0.6) not in set(zip(report.cells["strategy"], report.cells["fraction"],
                                       strict=True))
    assert [r.error for r in report.failed] == ["RuntimeError: out of memory"]
    assert sorted(report.missing) == ["full f=1.00 seed=1 (NOT STARTED)",
                                      "sas f=0.60 seed=0 (ERROR)", "sas f=0.60 seed=1 (RUNNING)"]
    full = report.cells[report.cells["strategy"] == "full"].iloc[0]
    assert full["seeds"] == 1 and math.isnan(full["linear_acc_std"])
    text = render(report)
    assert "FAILED sas f=0.60 seed=0: RuntimeError: out of memory" in text
    assert "missing sas f=0.60 seed=1 (RUNNING)" in text


def test_no_full_baseline_says_so() -> None:
    report = summarize([r for r in all_records() if r.strategy != "full"])
    assert report.savings.empty
    assert "no full-data baseline finished" in render(report)
    assert report.cells["linear_acc_gap_full"].isna().all()


def test_records_from_a_result_grid() -> None:
    """Anything shaped like ray.tune.Result (config, metrics, error, path) works."""
    def result(strategy: str, fraction: float, seed: int, acc: float | None,
               error: Exception | None = None) -> SimpleNamespace:
        metrics = None if acc is None else {"linear_acc": acc, "knn_acc": acc - 5.0,
                                            "train_time_s": 10.0, "trial_id": "t"}
        return SimpleNamespace(config={"subset": {"strategy": strategy, "fraction": fraction},
                                       "seed": seed}, metrics=metrics, error=error, path="p")

    grid = [result("sas", 0.5, 0, 80.0), result("full", 1.0, 0, 80.2),
            result("random", 0.5, 0, None, RuntimeError("Traceback...\nValueError: bad rank"))]
    records = records_from_result_grid(grid)
    assert [r.status for r in records] == ["TERMINATED", "TERMINATED", "ERROR"]
    assert records[2].error == "ValueError: bad rank"
    report = analyze(grid, AnalyzeConfig(tolerance=0.5))
    assert report.savings.set_index("strategy").loc["sas", "fraction"] == pytest.approx(0.5)
    assert [r.strategy for r in report.failed] == ["random"]
    with pytest.raises(SasRayError, match="not from a sas-ray sweep"):
        records_from_result_grid([SimpleNamespace(config={"lr": 1}, metrics={}, error=None,
                                                  path="p")])


def write_tune_dir(root: Path, records: list[TrialRecord], with_state: bool) -> None:
    """Lay records out like Ray Tune 2.60 does: a folder per trial with params.json,
    result.json (JSON lines), error.txt, and the experiment_state-*.json with trial_data."""
    trial_data = []
    for i, r in enumerate(records):
        name = f"run_trial_{i:05d}_{r.strategy}"
        config = {"subset": {"strategy": r.strategy, "fraction": r.fraction}, "seed": r.seed}
        d = root / name
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps(config))
        if r.metrics:
            (d / "result.json").write_text(json.dumps({**r.metrics, "config": config}) + "\n")
        if r.error:
            (d / "error.txt").write_text(f"Traceback (most recent call last):\n  x\n{r.error}\n")
        trial = {"trial_id": f"t{i}", "config": config, "status": r.status,
                 "relative_logdir": name}
        runtime = {"last_result": r.metrics, "error_filename": "error.txt" if r.error else None}
        trial_data.append([json.dumps(trial), json.dumps(runtime)])
    (root / SPEC_FILE).write_text(json.dumps(SPEC))
    if with_state:
        (root / "experiment_state-2020-01-01_00-00-00.json").write_text(
            json.dumps({"trial_data": trial_data[:-1], "runner_data": {}, "stats": {}}))


@pytest.mark.parametrize("with_state", [True, False])
def test_reads_tune_experiment_dir(tmp_path: Path, with_state: bool) -> None:
    records = [*all_records(), record("sas", 0.6, 2, status="ERROR", error="ValueError: boom")]
    records.insert(0, records.pop())  # the failed trial first; the last is not in the state
    write_tune_dir(tmp_path / "exp", records, with_state)
    read, spec = read_experiment(str(tmp_path / "exp"))
    assert spec == SPEC
    assert sorted(r.key for r in read) == sorted(r.key for r in records)
    (failed,) = [r for r in read if r.status == "ERROR"]
    assert failed.error == "ValueError: boom" and failed.key == ("sas", 0.6, 2)
    report = analyze(str(tmp_path / "exp"))
    assert report.finished == 10 and len(report.cells) == 5


def test_write_report_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tune_dir(tmp_path / "exp", all_records(), with_state=True)
    out = str(tmp_path / "report")
    files = write_report(analyze(str(tmp_path / "exp")), out, title="t")
    assert files == report_files(out)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["table.md", "table.csv", "savings.csv", PLOT_FILE, "manifest.json"])
    manifest = storage.require_manifest(out, "report")
    assert manifest["meta"]["finished"] == 10 and sorted(manifest["files"]) == sorted(files)
    assert storage.read_bytes(files[PLOT_FILE])[:8] == b"\x89PNG\r\n\x1a\n"
    with open(files["table.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], float(r["fraction"])) for r in rows] == list(ACC)
    assert float(rows[0]["linear_acc_mean"]) == pytest.approx(71.0)
    assert "| sas " in storage.read_bytes(files["table.md"]).decode()

    assert main(["analyze", str(tmp_path / "exp"), "--analyze.tolerance", "10"]) == 0
    printed = capsys.readouterr().out
    assert "keep 30% of the data" in printed and PLOT_FILE in printed
    assert "keep 30%" in (tmp_path / "report" / "table.md").read_text()  # next to the experiment


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "holds no Tune trials" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
