"""Sweep analysis on synthetic trial records and hand-written sweep artifacts (no Ray), and the
statistics against values worked out by hand (closed forms of Student's t for 1-3 degrees
of freedom)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sas_ray.analysis import report as report_mod
from sas_ray.analysis.costs import selection_seconds
from sas_ray.analysis.kinds import kept_shares
from sas_ray.analysis.plots import accuracy_plot, y_limits
from sas_ray.analysis.records import TrialRecord, read_sweep
from sas_ray.analysis.report import (
    CURVES_FILE,
    PAGE_FILE,
    PLOT_FILE,
    analyze,
    forgetting_agreement,
    render,
    report_files,
    summarize,
    table_rows,
    write_report,
)
from sas_ray.analysis.stats import average_ranks, paired, spearman, t_critical, t_pvalue, welch
from sas_ray.cli import main
from sas_ray.errors import SasRayError
from sas_ray.io import storage

# (strategy, fraction) -> linear accuracy (%) per seed; kNN is linear - 5 points; time ~ fraction
ACC = {("sas", 0.3): [70.0, 72.0], ("sas", 0.6): [79.5, 80.5],
       ("random", 0.3): [64.0, 66.0], ("random", 0.6): [74.0, 76.0],
       ("full", 1.0): [80.0, 80.0]}


def record(strategy: str, fraction: float, seed: int, acc: float | None = None,
           status: str = "finished", error: str | None = None) -> TrialRecord:
    metrics = {} if acc is None else {"linear_acc": acc, "knn_acc": acc - 5.0,
                                      "train_time_s": 100.0 * fraction}
    return TrialRecord(strategy, fraction, seed, status, metrics, error,
                       name=f"{strategy}-{fraction}-{seed}")


def all_records() -> list[TrialRecord]:
    return [record(s, f, seed, acc) for (s, f), accs in ACC.items()
            for seed, acc in enumerate(accs)]


def test_summary_means_gaps_and_savings() -> None:
    report = summarize(all_records(), tolerance=0.5)
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
    assert "random: no fraction is within 0.5 points of full data (80.0% linear probe); " \
        "closest: 60% of the data at -5.0 points" in text


def test_strategy_vs_random_tests_per_fraction() -> None:
    """sas - random at 0.3: 70, 72 vs 64, 66 -> gap 6, Welch t = 6 / sqrt(1 + 1), df 2;
    paired over seeds 0, 1: differences 6, 6 -> zero variance, p 0."""
    tests = summarize(all_records()).tests
    assert set(tests["strategy"]) == {"sas"}  # not random itself, not full data
    row = tests[(tests["fraction"] == 0.3) & (tests["metric"] == "linear_acc")].iloc[0]
    assert row["gap"] == pytest.approx(6.0)
    assert row["welch_t"] == pytest.approx(6 / math.sqrt(2)) and row["welch_df"] == 2
    t = 6 / math.sqrt(2)
    assert row["welch_p"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)  # df 2
    assert row["paired_p"] == 0.0 and row["pairs"] == 2
    assert row["paired_gap"] == row["paired_low"] == row["paired_high"] == pytest.approx(6.0)
    text = render(summarize(all_records()), markdown=True)
    assert "## Strategy comparisons" in text and "| sas " in text


def test_t_tests_match_closed_forms() -> None:
    # df 1: p = 1 - (2 / pi) atan|t|; df 2: p = 1 - |t| / sqrt(t^2 + 2)
    for t in (0.3, 2.0, 12.7):
        assert t_pvalue(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
        assert t_pvalue(-t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    # paired: differences 6, 6, 1 -> mean 13/3, sd^2 = 25/3, t = (13/3) / sqrt(25/9) = 2.6
    p = paired([70, 72, 75], [64, 66, 74])
    assert p["gap"] == pytest.approx(13 / 3) and p["t"] == pytest.approx(2.6) and p["df"] == 2
    assert p["p"] == pytest.approx(1 - 2.6 / math.sqrt(2.6**2 + 2), rel=1e-9)
    # its 95% interval: t* of df 2 solves 1 - t / sqrt(t^2 + 2) = 0.05, t*^2 = 2 q^2 / (1 - q^2)
    q = 0.95
    half = math.sqrt(2 * q * q / (1 - q * q)) * math.sqrt(25 / 9)
    assert (p["low"], p["high"]) == pytest.approx((13 / 3 - half, 13 / 3 + half), rel=1e-9)
    # Welch with unequal variances: a = 1, 2, 3 (var 1), b = 10, 20 (var 50):
    # se^2 = 1/3 + 25, df = (76/3)^2 / ((1/3)^2 / 2 + 25^2) = 1.02655...
    w = welch([1, 2, 3], [10, 20])
    se2 = 1 / 3 + 25
    assert w["t"] == pytest.approx(-13 / math.sqrt(se2))
    assert w["df"] == pytest.approx(se2**2 / ((1 / 3) ** 2 / 2 + 25**2))
    assert math.isnan(welch([1.0], [2.0, 3.0])["p"]) and math.isnan(paired([1.0], [2.0])["p"])


def test_compare_pairs_are_tested_like_random() -> None:
    """random:sas at 0.3: 64, 66 - (70, 72) = -6 on both seeds; the random rows stay."""
    tests = summarize(all_records(), compare=["random:sas"]).tests
    row = tests[(tests["baseline"] == "sas") & (tests["metric"] == "linear_acc")
                & (tests["fraction"] == 0.3)].iloc[0]
    assert row["strategy"] == "random" and row["paired_gap"] == pytest.approx(-6.0)
    assert set(tests["baseline"]) == {"random", "sas"} and len(tests) == 2 * 2 * 2
    assert "| random   |    sas |" in render(summarize(all_records(), compare=["random:sas"]),
                                           markdown=True)
    with pytest.raises(SasRayError, match="the sweep has no trials of 'kcenter'; it has sas"):
        summarize(all_records(), compare=["kcenter:sas"])


def test_machines_group_trials_by_host_with_their_load_range() -> None:
    def on(host: str, accelerator: str | None, load: float, finished: str) -> TrialRecord:
        r = record("sas", 0.3, 0, 70.0)
        r.metrics["machine"] = {"host": host, "cpu": "EPYC", "cores": 2,
                                "accelerator": accelerator, "load_before": load,
                                "load_after": load + 1, "finished": finished}
        return r

    done = [on("a", None, 0.5, "2026-12-01T10:00:00+00:00"),
            on("a", None, 2.5, "2026-12-01T12:00:00+00:00"),
            on("b", "NVIDIA H200", 0.1, "2026-12-02T09:00:00+00:00"), record("sas", 0.3, 1, 71.0)]
    a, b = summarize(done).machines
    assert (a["host"], a["trials"], a["load_before"], a["load_after"]) == ("a", 2, (0.5, 2.5),
                                                                          (1.5, 3.5))
    assert (a["first"], a["last"]) == ("2026-12-01T10:00:00+00:00", "2026-12-01T12:00:00+00:00")
    assert (b["accelerator"], b["trials"]) == ("NVIDIA H200", 1)
    text = render(summarize(done), markdown=True)
    assert "0.5 - 2.5" in text and "NVIDIA H200" in text and "## Where the trials ran" in text


def test_t_critical_inverts_the_p_value() -> None:
    # df 1 is Cauchy: t* = tan(pi level / 2); df 4 and 30 from t tables (2.776445, 2.042272)
    assert t_critical(1, 0.95) == pytest.approx(math.tan(math.pi * 0.95 / 2), rel=1e-9)
    assert t_critical(1, 0.99) == pytest.approx(math.tan(math.pi * 0.99 / 2), rel=1e-9)
    assert t_critical(4) == pytest.approx(2.776445, abs=1e-6)
    assert t_critical(30) == pytest.approx(2.042272, abs=1e-6)
    assert math.isnan(t_critical(0))


def test_spearman_with_ties_matches_a_hand_computation() -> None:
    """y = 5, 6, 7, 8, 7 has ranks 1, 2, 3.5, 5, 3.5; rho = 8 / sqrt(10 * 9.5); with n - 2 = 3
    degrees of freedom p = 1 - (2/pi)(atan(u) + u / (1 + u^2)), u = t / sqrt(3)."""
    assert average_ranks(np.array([5.0, 6, 7, 8, 7])).tolist() == [1, 2, 3.5, 5, 3.5]
    s = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    rho = 8 / math.sqrt(95)
    u = rho * math.sqrt(3 / (1 - rho * rho)) / math.sqrt(3)
    assert s["rho"] == pytest.approx(rho) and s["n"] == 5
    assert s["p"] == pytest.approx(1 - 2 / math.pi * (math.atan(u) + u / (1 + u * u)), rel=1e-9)
    assert spearman([1, 2, 3], [3, 2, 1])["rho"] == pytest.approx(-1.0)


def test_forgetting_agreement_uses_the_within_class_position() -> None:
    """Ranking ids 10, 11 (class 0) then 12, 13 (class 1): positions 0, 1, 0, 1; forgetting
    events 0, 3, 1, 2 -> rho = 4 / sqrt(4 * 5); within each class rho = 1."""
    row = forgetting_agreement("sas", np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1]),
                               np.array([13, 12, 11, 10]), np.array([2.0, 1.0, 3.0, 0.0]))
    assert row["rho"] == pytest.approx(4 / math.sqrt(20))
    assert row["rho_within_mean"] == pytest.approx(1.0) and row["n"] == 4


def test_tolerance_and_metric_change_the_answer() -> None:
    report = summarize(all_records(), tolerance=10.0, metric="knn_acc")
    savings = report.savings.set_index("strategy")
    assert savings.loc["sas", "fraction"] == pytest.approx(0.3)  # 66 >= 75 - 10
    assert savings.loc["random", "fraction"] == pytest.approx(0.6)
    with pytest.raises(SasRayError, match=r"analyze\.metric"):
        summarize(all_records(), metric="top5")


def test_partial_sweep_lists_failed_and_missing_trials() -> None:
    records = [r for r in all_records() if not (r.strategy == "sas" and r.fraction == 0.6)]
    records += [record("sas", 0.6, 0, status="failed", error="RuntimeError: out of memory"),
                record("sas", 0.6, 1, status="not started")]
    records = [r if r.strategy != "full" or r.seed == 0 else record("full", 1.0, 1,
                                                                    status="skipped")
               for r in records]
    report = summarize(records)
    assert ("sas", 0.6) not in set(zip(report.cells["strategy"], report.cells["fraction"],
                                       strict=True))
    assert [r.error for r in report.failed] == ["RuntimeError: out of memory"]
    assert sorted(report.missing) == ["full f=1.00 seed=1 (skipped)",
                                      "sas f=0.60 seed=1 (not started)"]
    full = report.cells[report.cells["strategy"] == "full"].iloc[0]
    assert full["seeds"] == 1 and math.isnan(full["linear_acc_std"])
    text = render(report)
    assert "FAILED sas f=0.60 seed=0: RuntimeError: out of memory" in text
    assert "missing sas f=0.60 seed=1 (not started)" in text


def test_no_full_baseline_says_so() -> None:
    report = summarize([r for r in all_records() if r.strategy != "full"])
    assert report.savings.empty
    assert "no full-data baseline finished" in render(report)
    assert report.cells["linear_acc_gap_full"].isna().all()


def write_sweep(root: Path, records: list[TrialRecord],
                latent: Callable[[TrialRecord], str | None] = lambda r: None) -> str:
    """A sweep artifact as stages.sweep commits it: a trial result artifact per finished
    record, and trials.json listing every record with its status."""
    trials = []
    for r in records:
        result = str(root / "runs" / r.name / "result")
        cell = {"strategy": r.strategy, "latent": None if r.strategy in ("full", "random")
                else latent(r), "fraction": r.fraction, **({"method": r.method} if r.method
                                                         else {})}
        if r.finished:
            with storage.write_artifact(result, "trial", config=cell, seed=r.seed) as w:
                storage.write_json_atomic(f"{w.dir}/result.json", r.metrics)
        fp = storage.read_manifest(result)["fingerprint"] if r.finished else "none"
        trials.append({"name": r.name, "subset": cell, "seed": r.seed, "result": result,
                       "fingerprint": fp, "status": r.status, "error": r.error})
    uri = str(root / "sweep")
    with storage.write_artifact(uri, "sweep") as w:
        storage.write_json_atomic(f"{w.dir}/trials.json", trials)
    return uri


def test_reads_a_sweep_artifact(tmp_path: Path) -> None:
    records = [*all_records(), record("sas", 0.6, 2, status="failed", error="ValueError: boom"),
               record("sas", 0.3, 2, status="not started")]
    uri = write_sweep(tmp_path, records)
    read = read_sweep(uri)
    assert [(r.key, r.status) for r in read] == [(r.key, r.status) for r in records]
    assert read[0].metrics["linear_acc"] == 70.0
    report = analyze(uri)
    assert report.finished == 10 and len(report.cells) == 5
    assert [r.error for r in report.failed] == ["ValueError: boom"]
    # a result whose artifact is gone (or is another trial's) is not finished, whatever the
    # listing says
    storage.delete(str(tmp_path / "runs" / records[0].name / "result"))
    assert read_sweep(uri)[0].status == "not started"


def test_several_latent_methods_are_labelled(tmp_path: Path) -> None:
    one = write_sweep(tmp_path / "a", all_records(), lambda r: "kmeans")
    assert {r.strategy for r in read_sweep(one)} == {"sas", "random", "full"}
    two = write_sweep(tmp_path / "b", all_records(),
                      lambda r: "kmeans" if r.fraction == 0.6 else "labels")
    assert {r.strategy for r in read_sweep(two)} == {"sas/labels", "sas/kmeans", "random",
                                                     "full"}


# byol: simclr's accuracies 10 points lower, sas's gain over random smaller
ACC_BYOL = {("sas", 0.3): [62.0, 64.0], ("sas", 0.6): [67.0, 69.0],
            ("random", 0.3): [60.0, 62.0], ("random", 0.6): [64.0, 66.0],
            ("full", 1.0): [70.0, 70.0]}


def with_method(records: list[TrialRecord], method: str) -> list[TrialRecord]:
    for r in records:
        r.method, r.name = method, f"{r.name}-{method}"
    return records


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def test_ssl_methods_are_grouped(tmp_path: Path) -> None:
    """Two SSL methods: cells, tests and savings per method, each strategy compared with the
    random and full-data trials of its own method; the method is named in the tables, the
    sentences, the problems and the plot (a row of panels per method). One method alone
    renders as a sweep from before sweep.methods."""
    byol = with_method([record(s, f, seed, acc) for (s, f), accs in ACC_BYOL.items()
                        for seed, acc in enumerate(accs)], "byol")
    records = [*with_method(all_records(), "simclr"), *byol,
               with_method([record("sas", 0.6, 2, status="failed", error="OSError: x")],
                           "byol")[0]]
    uri = write_sweep(tmp_path / "run", records)
    assert [r.method for r in read_sweep(uri)] == [r.method for r in records]
    report = analyze(uri)
    assert report.methods == ["simclr", "byol"]
    cells = report.cells.set_index(["method", "strategy", "fraction"])
    assert list(report.cells["method"]) == ["simclr"] * 5 + ["byol"] * 5
    assert cells.loc[("simclr", "sas", 0.3), "linear_acc_gap_random"] == pytest.approx(6.0)
    assert cells.loc[("byol", "sas", 0.3), "linear_acc_gap_random"] == pytest.approx(2.0)
    assert cells.loc[("byol", "sas", 0.3), "linear_acc_gap_full"] == pytest.approx(-7.0)
    assert cells.loc[("byol", "sas", 0.6), "seeds"] == 2
    tests = report.tests.set_index(["method", "strategy", "fraction", "metric"])
    assert tests.loc[("byol", "sas", 0.3, "linear_acc"), "gap"] == pytest.approx(2.0)
    assert tests.loc[("byol", "sas", 0.3, "linear_acc"), "welch_df"] == 2
    assert tests.loc[("simclr", "sas", 0.3, "linear_acc"), "gap"] == pytest.approx(6.0)
    savings = report.savings.set_index(["method", "strategy"])
    assert savings.loc[("simclr", "sas"), "fraction"] == pytest.approx(0.6)
    assert math.isnan(savings.loc[("byol", "sas"), "fraction"])  # 68 vs 70: not within 0.5
    text = render(report)
    assert "sas (simclr): keep 60% of the data" in text
    assert "sas (byol): no fraction is within 0.5 points of full data (70.0% linear probe)" in text
    assert "FAILED sas (byol) f=0.60 seed=2: OSError: x" in text
    headers, rows = table_rows(report)
    assert headers[:3] == ["strategy", "method", "fraction"] and rows[5][:2] == ["sas", "byol"]
    assert report_mod.test_rows(report)[0][:2] == ["strategy", "method"]
    accuracy_plot(report.cells, str(tmp_path / "two.png"), title="t", tolerance=0.5)

    simclr = [r for r in records if r.method == "simclr"]
    alone = summarize(simclr)
    assert render(alone) == render(summarize(all_records()))
    assert "method" not in table_rows(alone)[0] and "(simclr)" not in render(alone)
    assert list(alone.cells["method"]) == ["simclr"] * 5
    accuracy_plot(alone.cells, str(tmp_path / "one.png"), title="t", tolerance=0.5)
    (w1, h1), (w2, h2) = png_size(tmp_path / "one.png"), png_size(tmp_path / "two.png")
    assert w1 == w2 and h2 == 2 * h1


def test_write_report_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = write_sweep(tmp_path / "run", all_records())
    out = str(tmp_path / "report")
    files = write_report(analyze(uri), out, title="t")
    assert files == report_files(out)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["table.md", "table.csv", "tests.csv", "savings.csv", PLOT_FILE, CURVES_FILE,
         PAGE_FILE, "manifest.json"])
    manifest = storage.require_manifest(out, "report")
    assert manifest["meta"]["finished"] == 10 and sorted(manifest["files"]) == sorted(files)
    assert storage.read_bytes(files[PLOT_FILE])[:8] == b"\x89PNG\r\n\x1a\n"
    with open(files["table.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], float(r["fraction"])) for r in rows] == list(ACC)
    assert float(rows[0]["linear_acc_mean"]) == pytest.approx(71.0)
    with open(files["tests.csv"]) as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == {"sas"}
    assert "| sas " in storage.read_bytes(files["table.md"]).decode()

    assert main(["analyze", uri, "--analyze.tolerance", "10"]) == 0
    printed = capsys.readouterr().out
    assert "keep 30% of the data" in printed and PAGE_FILE in printed
    page = (tmp_path / "report" / PAGE_FILE).read_text()
    assert f'src="{PLOT_FILE}"' in page and "keep 60% of the data" in page
    assert "keep 30%" in (tmp_path / "run" / "report" / "table.md").read_text()  # next to it


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "holds no sas-ray sweep" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "holds no sas-ray sweep" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_savings_say_the_signed_gap_and_within_only_when_within() -> None:
    """sas at 0.3 is 5 points above full data: reported as +5.0, not "within"; at a gap of
    -0.3 it is within 0.5 points. Time counts the selection: 30 s training + 12 s."""
    records = [record("sas", 0.3, 0, 85.0), record("full", 1.0, 0, 80.0),
               record("random", 0.3, 0, 79.7)]
    stages = {"proxy": {"seconds": 10.0, "uri": "p"}, "embeddings": {"seconds": 1.5},
              "rankings/sas": {"seconds": 0.5, "uri": "rank-sas"},
              "rankings/random": {"seconds": 0.1, "uri": "rank-random"}}
    for r in records:
        r.ranking = None if r.strategy == "full" else f"rank-{r.strategy}"
    lines = render(summarize(records, tolerance=0.5, stages=stages))
    assert ("sas: keep 30% of the data (drop 70%) for 85.0% linear probe, +5.0 points vs "
            "80.0% on full data; time 30 s training + 12 s to select = 42 s vs 100 s on full "
            "data (58% saved)") in lines
    assert ("random: keep 30% of the data (drop 70%) for 79.7% linear probe, -0.3 points vs "
            "80.0% on full data (within 0.5 points); time 30 s training + 0 s to select") in lines
    slow = {**stages, "proxy": {"seconds": 90.0, "uri": "p"}}
    assert "(22% more)" in render(summarize(records, stages=slow))  # 30 + 92 s vs 100 s


def test_selection_seconds_count_what_a_strategy_reads() -> None:
    stages = {"proxy": {"seconds": 10.0}, "embeddings": {"seconds": 2.0},
              "partition/kmeans": {"seconds": 1.0},
              "rankings/kmeans/sas": {"seconds": 0.5, "uri": "r1"},
              "rankings/random": {"seconds": 0.25, "uri": "r2"},
              "rankings/kmeans/random-balanced": {"seconds": 0.25, "uri": "r3"}}
    def rec(strategy: str, ranking: str | None, latent: str | None) -> TrialRecord:
        return TrialRecord(strategy, 0.5, 0, "finished", ranking=ranking, latent=latent)
    assert selection_seconds(stages, rec("sas", "r1", "kmeans")) == 13.5
    assert selection_seconds(stages, rec("random", "r2", None)) == 0.25
    assert selection_seconds(stages, rec("random-balanced", "r3", "kmeans")) == 1.25
    assert selection_seconds(stages, rec("full", None, None)) == 0.0
    assert selection_seconds(stages, rec("sas", "elsewhere", "kmeans")) is None
    given = {**stages, "proxy": {"seconds": 3.0, "given": True}}
    assert selection_seconds(given, rec("sas", "r1", "kmeans")) == 3.5


def test_kept_shares_of_duplicates_and_junk() -> None:
    kinds = {"clean": np.arange(0, 6), "duplicate": np.array([6, 7, 8, 9]),
             "blank": np.array([10]), "noise": np.array([11, 20])}  # 20: not in the pool
    shares = kept_shares(np.array([0, 1, 6, 10, 11]), np.arange(12), kinds)
    assert shares == {"duplicates": 25.0, "junk": 100.0}
    assert kept_shares(np.array([0]), np.arange(6), {"clean": np.arange(6)}) == {}


def test_y_axis_spans_the_data_inside_0_100() -> None:
    lo, hi = y_limits([99.6, 100.0, 100.0])
    assert hi == 100.0 and hi - lo >= 10 and lo >= 0
    assert y_limits([50.0, 52.0]) == (46.0, 56.0)
    assert y_limits([0.5, 1.0]) == (0.0, 10.0)
    assert y_limits([float("nan")]) == (0.0, 100.0)
