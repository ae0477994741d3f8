"""Sweep results -> the answer to "how much data can I drop, and which selection should I use?".

Input is one :class:`~sas_ray.analysis.records.TrialRecord` per trial, read from a ``sweep``
artifact and the trials' stored results (:func:`~sas_ray.analysis.records.read_sweep`), so
the Ray and the local executor give the same report. Output is a :class:`Report`:

* ``cells``: one row per (strategy, fraction) with, over seeds, mean and sample std of the
  linear-probe and kNN test accuracy (percent), the gap to ``random`` at the same
  fraction and the gap to full-data training (``strategy="full"``, fraction 1.0);
* ``tests``: per strategy, fraction and metric, the strategy - random gap with Welch's
  t-test and the paired (same seed) t-test over seeds (:mod:`sas_ray.analysis.stats`);
* ``savings``: per strategy, the smallest fraction f whose mean accuracy (``analyze.metric``)
  is at least ``full - tolerance`` points, i.e. the share 1 - f of the data that can be dropped,
  and the training time that saves relative to full data;
* ``agreement``: optionally (:func:`forgetting_agreement`), Spearman's rho between a
  ranking's within-class order and the forgetting counts of a forgetting ranking;
* failed trials (with their error line) and trials that have no result yet, so a
  partially finished sweep is reported for what it is.

``write_report`` writes ``table.md``, ``table.csv``, ``tests.csv``, ``savings.csv`` and
``accuracy_vs_fraction.png`` (matplotlib Agg) into a directory (local or ``s3://``), under
stable names, and commits them with a manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sas_ray.analysis.records import (
    BASELINE,
    FULL,
    METRICS,
    TIME_METRIC,
    TrialRecord,
    read_sweep,
)
from sas_ray.analysis.stats import paired, spearman, welch
from sas_ray.config import AnalyzeConfig, Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

PLOT_FILE = "accuracy_vs_fraction.png"
TEST_COLUMNS = ["strategy", "fraction", "metric", "gap", "welch_t", "welch_df", "welch_p",
                "paired_t", "paired_p", "pairs", "seeds", "random_seeds"]


@dataclass
class Report:
    """Aggregated sweep results (see the module docstring for the columns)."""

    cells: pd.DataFrame
    savings: pd.DataFrame
    tests: pd.DataFrame
    failed: list[TrialRecord]
    missing: list[str]  # "sas f=0.30 seed=0 (not started)" for every trial without a result
    tolerance: float
    metric: str
    finished: int
    agreement: list[dict[str, Any]] = field(default_factory=list)

    @property
    def full(self) -> pd.Series | None:
        rows = self.cells[self.cells["strategy"] == FULL]
        return None if rows.empty else rows.iloc[0]


# ---------------------------------------------------------------------------- aggregating
def summarize(records: Sequence[TrialRecord], *, tolerance: float = 0.5,
              metric: str = "linear_acc") -> Report:
    """Aggregate finished trials over seeds; test every strategy against random; list failed
    and unfinished trials. Strategies keep the order in which ``records`` first name them."""
    if metric not in METRICS:
        raise SasRayError(f"analyze.metric '{metric}' is unknown; use one of {', '.join(METRICS)}")
    done = [r for r in records if r.finished]
    failed = [r for r in records if r.status == "failed"]
    missing = [f"{r.strategy} f={r.fraction:.2f} seed={r.seed} ({r.status})"
               for r in records if not r.finished and r.status != "failed"]
    order = list(dict.fromkeys(r.strategy for r in records))
    cells = _aggregate(done, order)
    return Report(cells=cells, savings=_savings(cells, metric, tolerance), tests=_tests(done),
                  failed=failed, missing=missing, tolerance=tolerance, metric=metric,
                  finished=len(done))


def _tests(done: Sequence[TrialRecord]) -> pd.DataFrame:
    """Strategy - random per fraction and metric: Welch's and the paired t-test over seeds."""
    values: dict[tuple[str, float], dict[int, TrialRecord]] = {}
    for r in done:
        values.setdefault((r.strategy, round(r.fraction, 6)), {})[r.seed] = r
    rows = []
    for (strategy, fraction), by_seed in values.items():
        base = values.get((BASELINE, fraction))
        if strategy in (BASELINE, FULL) or base is None:
            continue
        common = sorted(set(by_seed) & set(base))
        for m in METRICS:
            w = welch([r.metrics[m] for r in by_seed.values()],
                      [r.metrics[m] for r in base.values()])
            p = paired([by_seed[s].metrics[m] for s in common],
                       [base[s].metrics[m] for s in common])
            rows.append({"strategy": strategy, "fraction": fraction, "metric": m,
                         "gap": w["gap"], "welch_t": w["t"], "welch_df": w["df"],
                         "welch_p": w["p"], "paired_t": p["t"], "paired_p": p["p"],
                         "pairs": p["n"], "seeds": len(by_seed), "random_seeds": len(base)})
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def within_class_position(ids: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """Per row of a ranking (``ids`` and ``latent`` in rank order): its position in its latent
    class's order, scaled to [0, 1] (0 = ranked first in its class)."""
    position = np.empty(ids.size, dtype=np.float64)
    for c in np.unique(latent):
        rows = np.flatnonzero(latent == c)
        position[rows] = np.arange(rows.size) / max(1, rows.size - 1)
    return position


def forgetting_agreement(name: str, ids: np.ndarray, latent: np.ndarray,
                         forgetting_ids: np.ndarray, events: np.ndarray) -> dict[str, Any]:
    """Spearman's rho between a ranking's within-class position (``ids``, ``latent`` in rank
    order) and forgetting events per id (``forgetting_ids``, ``events``), over all rows and
    averaged within latent classes. Positive: the examples the ranking puts late are forgotten
    more often, i.e. it prefers unforgettable examples."""
    position = within_class_position(ids, latent)
    by_id = dict(zip(forgetting_ids.tolist(), events.tolist(), strict=True))
    counts = np.array([by_id[i] for i in ids.tolist()], dtype=np.float64)
    overall = spearman(position, counts)
    within = [spearman(position[latent == c], counts[latent == c])["rho"]
              for c in np.unique(latent)]
    return {"ranking": name, "rho": overall["rho"], "p": overall["p"], "n": overall["n"],
            "rho_within_mean": float(np.nanmean(within)) if not np.isnan(within).all()
            else math.nan}


def _aggregate(done: Sequence[TrialRecord], order: Sequence[str]) -> pd.DataFrame:
    columns = ["strategy", "fraction", "seeds"]
    for m in METRICS:
        columns += [f"{m}_mean", f"{m}_std", f"{m}_gap_random", f"{m}_gap_full"]
    columns.append(f"{TIME_METRIC}_mean")
    if not done:
        return pd.DataFrame(columns=columns)
    rows = pd.DataFrame([{"strategy": r.strategy, "fraction": round(r.fraction, 6),
                          **{m: float(r.metrics[m]) for m in METRICS},
                          TIME_METRIC: float(r.metrics.get(TIME_METRIC, math.nan))}
                         for r in done])
    grouped = rows.groupby(["strategy", "fraction"], sort=False)
    cells = grouped.size().rename("seeds").reset_index()
    for m in [*METRICS, TIME_METRIC]:
        stats = grouped[m].agg(["mean", "std"]).reset_index(drop=True)  # std: ddof=1, NaN for 1
        cells[f"{m}_mean"] = stats["mean"].to_numpy()
        if m != TIME_METRIC:
            cells[f"{m}_std"] = stats["std"].to_numpy()
    for m in METRICS:
        random_at = cells[cells["strategy"] == BASELINE].set_index("fraction")[f"{m}_mean"]
        cells[f"{m}_gap_random"] = [
            math.nan if s == BASELINE or f not in random_at.index else mean - random_at[f]
            for s, f, mean in zip(cells["strategy"], cells["fraction"], cells[f"{m}_mean"],
                                  strict=True)]
        full = cells.loc[cells["strategy"] == FULL, f"{m}_mean"]
        cells[f"{m}_gap_full"] = (math.nan if full.empty
                                  else np.where(cells["strategy"] == FULL, math.nan,
                                                cells[f"{m}_mean"] - full.iloc[0]))
    rank = {s: i for i, s in enumerate([*order, *sorted(set(cells["strategy"]) - set(order))])}
    rank[FULL] = len(rank) + 1
    cells = cells.sort_values(["strategy", "fraction"],
                              key=lambda col: col.map(rank) if col.name == "strategy" else col)
    return cells[columns].reset_index(drop=True)


def _savings(cells: pd.DataFrame, metric: str, tolerance: float) -> pd.DataFrame:
    """Per strategy: smallest fraction within ``tolerance`` points of full data on ``metric``."""
    columns = ["strategy", "fraction", "data_dropped", f"{metric}_mean", "full_" + metric,
               "train_time_s", "full_train_time_s", "time_saved_s", "time_saved_pct"]
    full = cells[cells["strategy"] == FULL]
    if full.empty:
        return pd.DataFrame(columns=columns)
    full_acc = float(full[f"{metric}_mean"].iloc[0])
    full_time = float(full[f"{TIME_METRIC}_mean"].iloc[0])
    rows = []
    for strategy, group in cells[cells["strategy"] != FULL].groupby("strategy", sort=False):
        ok = group[group[f"{metric}_mean"] >= full_acc - tolerance].sort_values("fraction")
        if ok.empty:
            rows.append({"strategy": strategy, "fraction": math.nan, "data_dropped": 0.0,
                         f"{metric}_mean": math.nan, "full_" + metric: full_acc,
                         "train_time_s": math.nan, "full_train_time_s": full_time,
                         "time_saved_s": 0.0, "time_saved_pct": 0.0})
            continue
        best = ok.iloc[0]
        time = float(best[f"{TIME_METRIC}_mean"])
        rows.append({"strategy": strategy, "fraction": float(best["fraction"]),
                     "data_dropped": 1.0 - float(best["fraction"]),
                     f"{metric}_mean": float(best[f"{metric}_mean"]), "full_" + metric: full_acc,
                     "train_time_s": time, "full_train_time_s": full_time,
                     "time_saved_s": full_time - time,
                     "time_saved_pct": 100.0 * (full_time - time) / full_time if full_time
                     else math.nan})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------- rendering
def _acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _gap(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1f}"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the strategy x fraction table."""
    headers = ["strategy", "fraction", "seeds"]
    for name in METRICS.values():
        headers += [f"{name} %", "vs random", "vs full"]
    headers.append("train s")
    rows = []
    for c in report.cells.to_dict("records"):
        row = [c["strategy"], f"{c['fraction']:.2f}", str(c["seeds"])]
        for m in METRICS:
            row += [_acc(c[f"{m}_mean"], c[f"{m}_std"]), _gap(c[f"{m}_gap_random"]),
                    _gap(c[f"{m}_gap_full"])]
        t = c[f"{TIME_METRIC}_mean"]
        row.append("-" if math.isnan(t) else f"{t:.0f}")
        rows.append(row)
    return headers, rows


def savings_lines(report: Report) -> list[str]:
    """One sentence per strategy: how much data can be dropped and the time it saves."""
    name, acc, full_acc = METRICS[report.metric], f"{report.metric}_mean", f"full_{report.metric}"
    if report.full is None:
        return ["no full-data baseline finished, so savings cannot be computed (run the sweep "
                "with sweep.include_full true)"]
    lines = []
    for s in report.savings.to_dict("records"):
        if math.isnan(s["fraction"]):
            lines.append(f"{s['strategy']}: no fraction reaches full data "
                         f"({s[full_acc]:.1f}% {name}) within {report.tolerance:g} points")
            continue
        lines.append(f"{s['strategy']}: keep {s['fraction']:.0%} of the data (drop "
                     f"{s['data_dropped']:.0%}) for {s[acc]:.1f}% {name} vs {s[full_acc]:.1f}% "
                     f"on full data (within {report.tolerance:g} points); training time "
                     f"{s['train_time_s']:.0f} s vs {s['full_train_time_s']:.0f} s "
                     f"({s['time_saved_pct']:.0f}% saved)")
    return lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded)
    sep = ("|" + "|".join(("-" * (w + 1)) + (":" if i else "-") for i, w in enumerate(widths))
           + "|") if markdown else "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _p(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def test_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the strategy - random tests."""
    headers = ["strategy", "fraction", "metric", "gap", "Welch p", "paired p", "seeds"]
    rows = [[t["strategy"], f"{t['fraction']:.2f}", METRICS[t["metric"]], _gap(t["gap"]),
             _p(t["welch_p"]), _p(t["paired_p"]), f"{t['seeds']} / {t['random_seeds']}"]
            for t in report.tests.to_dict("records")]
    return headers, rows


def agreement_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the Spearman agreement with the forgetting counts."""
    headers = ["ranking", "rho", "p", "rows", "mean rho within classes"]
    rows = [[a["ranking"], f"{a['rho']:+.3f}", _p(a["p"]), str(a["n"]),
             f"{a['rho_within_mean']:+.3f}"] for a in report.agreement]
    return headers, rows


def problem_lines(report: Report) -> list[str]:
    lines = [f"FAILED {r.strategy} f={r.fraction:.2f} seed={r.seed}: {r.error}"
             for r in report.failed]
    lines += [f"missing {m}" for m in report.missing]
    return lines


def render(report: Report, markdown: bool = False) -> str:
    """The whole report as terminal text or Markdown."""
    headers, rows = table_rows(report)
    name = METRICS[report.metric]
    out = []
    if markdown:
        out += ["# Subset sweep report", ""]
    out += [f"{report.finished} finished trials; accuracy on the test split, mean ± std over "
            "seeds; gaps in points.", "", format_table(headers, rows, markdown), ""]
    out += ["## Data savings" if markdown else f"data savings ({name}, tolerance "
            f"{report.tolerance:g} points):"]
    if markdown:
        out += ["", f"Smallest fraction within {report.tolerance:g} points of full data "
                f"({name}):", ""]
    out += [("- " if markdown else "  ") + line for line in savings_lines(report)]
    if not report.tests.empty:
        out += ["", "## Strategy vs random" if markdown else "strategy - random:"]
        out += ["", "Gap in points at equal fraction; two-sided p of Welch's t-test and of the "
                "paired t-test (same seeds) over seeds.", ""] if markdown else []
        out.append(format_table(*test_rows(report), markdown))
    if report.agreement:
        out += ["", "## Agreement with forgetting" if markdown else
                "Spearman rho with forgetting events (positive: prefers unforgettable):"]
        out += ["", "Spearman's rho between a ranking's within-class position and the "
                "forgetting events of each example (positive: the ranking prefers "
                "unforgettable examples).", ""] if markdown else []
        out.append(format_table(*agreement_rows(report), markdown))
    problems = problem_lines(report)
    if problems:
        out += ["", "## Failed or missing trials" if markdown else "failed or missing trials:"]
        out += [("- " if markdown else "  ") + p for p in problems]
    return "\n".join(out) + "\n"


def plot(report: Report, path: str, title: str = "") -> None:
    """Accuracy vs fraction kept: one line per strategy with std error bars, full data as a
    horizontal line with the tolerance band; one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4.2), squeeze=False)
    cells = report.cells
    for ax, (m, name) in zip(axes[0], METRICS.items(), strict=True):
        for strategy, group in cells[cells["strategy"] != FULL].groupby("strategy", sort=False):
            ax.errorbar(100 * group["fraction"], group[f"{m}_mean"],
                        yerr=group[f"{m}_std"].fillna(0.0), marker="o", capsize=3,
                        label=strategy)
        if (full := report.full) is not None:
            ax.axhline(full[f"{m}_mean"], color="black", linestyle="--", linewidth=1,
                       label=f"full data ({full[f'{m}_mean']:.1f})")
            ax.axhspan(full[f"{m}_mean"] - report.tolerance, full[f"{m}_mean"] + report.tolerance,
                       color="grey", alpha=0.15, label=f"± {report.tolerance:g} points")
        ax.set_xlabel("% of unlabeled training data kept")
        ax.set_ylabel(f"{name} test accuracy (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if cells.empty:
            ax.text(0.5, 0.5, "no finished trials yet", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- entry points
def analyze(sweep: str, cfg: AnalyzeConfig | None = None) -> Report:
    """Report of the ``sweep`` artifact at ``sweep`` (local or s3://)."""
    cfg = cfg or AnalyzeConfig()
    return summarize(read_sweep(sweep), tolerance=cfg.tolerance, metric=cfg.metric)


REPORT_FILES = ("table.md", "table.csv", "tests.csv", "savings.csv", PLOT_FILE)


def report_files(out: str) -> dict[str, str]:
    """Name -> URI of the report files under ``out``."""
    return {name: storage.join(out, name) for name in REPORT_FILES}


def write_report(report: Report, out: str, title: str = "", *, config: Any = None,
                 inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``out/{table.md, table.csv, tests.csv, savings.csv, accuracy_vs_fraction.png}``
    (local or
    s3://) under stable names, and commit them with a ``report`` manifest; returns
    :func:`report_files`.

    The old manifest is removed first and the new one written last, so a crash in between
    leaves files that no manifest vouches for rather than a mix that looks complete.
    """
    files = report_files(out)
    storage.check_writable(out)
    storage.delete(storage.join(out, storage.MANIFEST))
    with tempfile.TemporaryDirectory() as tmp:
        local = {name: os.path.join(tmp, name) for name in files}
        report.cells.to_csv(local["table.csv"], index=False, float_format="%.4f")
        report.savings.to_csv(local["savings.csv"], index=False, float_format="%.4f")
        report.tests.to_csv(local["tests.csv"], index=False, float_format="%.6g")
        with open(local["table.md"], "w") as f:
            f.write(render(report, markdown=True))
        plot(report, local[PLOT_FILE], title)
        for name, uri in files.items():
            with open(local[name], "rb") as f:
                storage.write_bytes_atomic(uri, f.read())
    storage.commit_manifest(out, "report", list(files), config=config, inputs=inputs,
                            meta={"finished": report.finished, "failed": len(report.failed),
                                  "missing": len(report.missing), "metric": report.metric,
                                  "tolerance": report.tolerance})
    return files


def print_report(report: Report, files: dict[str, str]) -> None:
    """The table on the terminal, then where the files are."""
    print(render(report), end="")
    print("report: " + "\n        ".join(files[n] for n in ("table.md", "table.csv", PLOT_FILE)))


def cli_analyze(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray analyze SWEEP [--out DIR]``: print the table, write table/CSV/plot."""
    sweep = args.experiment.rstrip("/")
    out = args.out or storage.join(os.path.dirname(sweep) or ".", "report")
    report = analyze(sweep, cfg.analyze)
    print_report(report, write_report(report, out, title=cfg.run.name,
                                      config=dataclasses.asdict(cfg.analyze)))
