"""Sweep results -> the answer to "how much data can I drop, and which selection should I use?".

Input is one :class:`~sas_ray.analysis.records.TrialRecord` per trial, read from a ``sweep``
artifact and the trials' stored results (:func:`~sas_ray.analysis.records.read_sweep`), so
the Ray and the local executor give the same report. Output is a :class:`Report`:

Every table has a ``method`` column, the SSL method the trials trained with; the statistics
are per method (a strategy is compared with random and full data of its own method), and the
rendered tables, sentences and plots name the method only when the sweep has several
(``sweep.methods``).

* ``cells``: one row per (method, strategy, fraction) with, over seeds, mean and sample std of the
  linear-probe and kNN test accuracy (percent), the gap to ``random`` at the same
  fraction and the gap to full-data training (``strategy="full"``, fraction 1.0); where the
  shards tag example kinds (:mod:`sas_ray.analysis.kinds`), the percent of the pool's
  near-duplicates and junk the subset kept; where the pipeline recorded its stages
  (:mod:`sas_ray.analysis.costs`), the seconds spent selecting the subset;
* ``tests``: per strategy, fraction and metric, the strategy - random gap with Welch's
  t-test and the paired (same seed) t-test over seeds with its 95% interval
  (:mod:`sas_ray.analysis.stats`), and the same for every pair ``a:b`` of
  ``analyze.compare`` (``baseline`` b instead of random);
* ``savings``: per strategy, the smallest fraction f whose mean accuracy (``analyze.metric``)
  is at least ``full - tolerance`` points, i.e. the share 1 - f of the data that can be
  dropped, its signed gap to full data, and the time that saves: full-data training time
  minus the subset's training time *and* its selection time (proxy, embeddings, ranking);
* ``agreement``: optionally (:func:`forgetting_agreement`), Spearman's rho between a
  ranking's within-class order and the forgetting counts of a forgetting ranking;
* ``machines``: where the finished trials ran (host, CPU, cores, accelerator), when, and the
  1-minute load average before and after their training (:mod:`sas_ray.core.machine`), so
  every time in the report can be read against its hardware and load;
* failed trials (with their error line) and trials that have no result yet, so a
  partially finished sweep is reported for what it is;
* for the pictures: every trial's training loss per epoch, and per strategy the ranking
  and fraction whose kept/dropped images the page shows (:mod:`sas_ray.analysis.gallery`).

``write_report`` writes ``index.html`` (:mod:`sas_ray.analysis.page`: a static page), the
plots it shows (:mod:`sas_ray.analysis.plots`), one gallery PNG per strategy, ``table.md``,
``table.csv``, ``tests.csv`` and ``savings.csv`` into a directory (local or ``s3://``) and
commits them with a manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sas_ray.analysis import costs, page, plots
from sas_ray.analysis import kinds as kinds_mod
from sas_ray.analysis.records import (
    BASELINE,
    FULL,
    METRICS,
    TIME_METRIC,
    TrialRecord,
    read_sweep,
    trained_on,
)
from sas_ray.analysis.stats import paired, spearman, welch
from sas_ray.config import AnalyzeConfig, Config
from sas_ray.core.data.sources import SPLIT_NAMES
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

PLOT_FILE = "accuracy_vs_fraction.png"
CURVES_FILE = "training_curves.png"
PAGE_FILE = "index.html"
TEST_COLUMNS = ["strategy", "baseline", "fraction", "metric", "gap", "welch_t", "welch_df",
                "welch_p", "paired_gap", "paired_low", "paired_high", "paired_t", "paired_p",
                "pairs", "seeds", "baseline_seeds"]
SELECTION = "selection_s"  # cells column: seconds spent selecting the subset
KEPT = {group: f"{group}_kept" for group in kinds_mod.GROUPS}  # cells columns, percent
Curves = dict[tuple[str, float, int], list[dict[str, Any]]]


def named(strategy: str, method: str, several: bool) -> str:
    """How sentences and plots name a strategy trained with ``method``: ``sas (byol)``, or
    ``sas`` when the sweep has one method."""
    return f"{strategy} ({method})" if several else strategy


def trial_name(r: TrialRecord, several: bool) -> str:
    """``sas f=0.30 seed=0`` (``sas (byol) f=0.30 seed=0`` with several methods)."""
    return f"{named(r.strategy, r.method, several)} f={r.fraction:.2f} seed={r.seed}"


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
    dataset: str = ""  # "synthetic: 600 train / 240 test images, 6 classes"
    shards: str | None = None  # the shards the sweep trained on
    kinds: dict[str, np.ndarray] = field(default_factory=dict)  # see analysis.kinds
    curves: Curves = field(default_factory=dict)  # (strategy, fraction, seed) -> history
    galleries: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> ranking, f
    methods: list[str] = field(default_factory=list)  # the SSL methods, in sweep order
    machines: list[dict[str, Any]] = field(default_factory=list)  # see machines_of

    @property
    def several_methods(self) -> bool:
        return len(self.methods) > 1

    @property
    def full(self) -> pd.Series | None:
        rows = self.cells[self.cells["strategy"] == FULL]
        return None if rows.empty else rows.iloc[0]


# ---------------------------------------------------------------------------- aggregating
def summarize(records: Sequence[TrialRecord], *, tolerance: float = 0.5,
              metric: str = "linear_acc", kinds: kinds_mod.Kinds | None = None,
              stages: costs.Stages | None = None, compare: Sequence[str] = ()) -> Report:
    """Aggregate finished trials over seeds; test every strategy against random and each
    ``compare`` pair ``a:b`` as a - b; list failed and unfinished trials; per SSL method
    (``method`` columns). Methods and strategies keep the order in which ``records`` first
    name them. ``kinds`` (id lists per example kind) adds the kept-share columns, ``stages``
    (the pipeline's record) the selection time."""
    if metric not in METRICS:
        raise SasRayError(f"analyze.metric '{metric}' is unknown; use one of {', '.join(METRICS)}")
    done = [r for r in records if r.finished]
    failed = [r for r in records if r.status == "failed"]
    methods = list(dict.fromkeys(r.method for r in records)) or [""]
    missing = [f"{trial_name(r, len(methods) > 1)} ({r.status})"
               for r in records if not r.finished and r.status != "failed"]
    order = list(dict.fromkeys(r.strategy for r in records))
    pairs = [(BASELINE, None)] + [_pair(p, order) for p in compare]
    parts = {m: [r for r in done if r.method == m] for m in methods}
    cells = _per_method({m: _aggregate(d, order) for m, d in parts.items()})
    _add_cell_columns(cells, done, kinds or {}, stages)
    savings = _per_method({m: _savings(cells[cells["method"] == m], metric, tolerance)
                           for m in methods})
    return Report(cells=cells, savings=savings,
                  tests=_per_method({m: _tests(d, pairs) for m, d in parts.items()}),
                  failed=failed, missing=missing, tolerance=tolerance, metric=metric,
                  finished=len(done), kinds=dict(kinds or {}), methods=methods,
                  machines=machines_of(done))


def machines_of(done: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """Per machine (host, CPU, cores, accelerator) the finished trials ran on: ``trials``,
    ``first`` and ``last`` finish times and the range of the 1-minute load before and after
    each training (``load_before`` / ``load_after``: (min, max)). Trials from before machines
    were recorded are left out."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in done:
        m = r.metrics.get("machine")
        if m:
            groups.setdefault((m["host"], m["cpu"], m["cores"], m["accelerator"]), []).append(m)
    out = []
    for (host, cpu, n, accelerator), ms in groups.items():
        loads = {k: [m[k] for m in ms if m[k] is not None] for k in ("load_before", "load_after")}
        out.append({"host": host, "cpu": cpu, "cores": n, "accelerator": accelerator,
                    "trials": len(ms), "first": min(m["finished"] for m in ms),
                    "last": max(m["finished"] for m in ms),
                    **{k: (min(v), max(v)) if v else None for k, v in loads.items()}})
    return out


def _per_method(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame per method stacked in order, with a leading ``method`` column."""
    out = [f.assign(method=m)[["method", *(c for c in f.columns if c != "method")]]
           for m, f in frames.items()]
    return pd.concat([f for f in out if not f.empty] or out[:1], ignore_index=True)


def _add_cell_columns(cells: pd.DataFrame, done: Sequence[TrialRecord], kinds: kinds_mod.Kinds,
                      stages: costs.Stages | None) -> None:
    """The kept shares per kind group and the selection seconds of every cell, in place."""
    keys = list(zip(cells["strategy"], cells["fraction"], strict=True))
    shares = kinds_mod.cell_shares(done, kinds)
    for group, column in KEPT.items():
        cells[column] = [shares.get(k, {}).get(group, math.nan) for k in keys]
    first = {}
    for r in done:
        first.setdefault((r.strategy, round(r.fraction, 6)), r)
    seconds = [costs.selection_seconds(stages, first[k]) if stages else None for k in keys]
    cells[SELECTION] = [math.nan if s is None else s for s in seconds]


def _pair(pair: str, strategies: Sequence[str]) -> tuple[str, str]:
    """``"a:b"`` -> (b, a): the baseline and the one strategy tested against it; an error
    naming the sweep's strategies when a side has no trials."""
    a, b = pair.split(":")
    for side in (a, b):
        if side not in strategies:
            raise SasRayError(f"analyze.compare '{pair}': the sweep has no trials of '{side}'; "
                              f"it has {', '.join(strategies)}")
    return b, a


def _tests(done: Sequence[TrialRecord], pairs: Sequence[tuple[str, str | None]]
           ) -> pd.DataFrame:
    """Per (baseline, strategy) of ``pairs`` (None: every strategy but the baseline and full
    data), fraction and metric: strategy - baseline with Welch's and the paired t-test."""
    values: dict[tuple[str, float], dict[int, TrialRecord]] = {}
    for r in done:
        values.setdefault((r.strategy, round(r.fraction, 6)), {})[r.seed] = r
    rows = []
    for baseline, only in pairs:
        for (strategy, fraction), by_seed in values.items():
            base = values.get((baseline, fraction))
            if base is None or strategy in (baseline, FULL) or only not in (None, strategy):
                continue
            rows += _test_rows(strategy, baseline, fraction, by_seed, base)
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def _test_rows(strategy: str, baseline: str, fraction: float, by_seed: dict[int, TrialRecord],
               base: dict[int, TrialRecord]) -> list[dict[str, Any]]:
    common = sorted(set(by_seed) & set(base))
    rows = []
    for m in METRICS:
        w = welch([r.metrics[m] for r in by_seed.values()], [r.metrics[m] for r in base.values()])
        p = paired([by_seed[s].metrics[m] for s in common], [base[s].metrics[m] for s in common])
        rows.append({"strategy": strategy, "baseline": baseline, "fraction": fraction,
                     "metric": m, "gap": w["gap"], "welch_t": w["t"], "welch_df": w["df"],
                     "welch_p": w["p"], "paired_gap": p["gap"], "paired_low": p["low"],
                     "paired_high": p["high"], "paired_t": p["t"], "paired_p": p["p"],
                     "pairs": p["n"], "seeds": len(by_seed), "baseline_seeds": len(base)})
    return rows


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
    """Per strategy: the smallest fraction whose ``metric`` is at least full data's minus
    ``tolerance`` points, its gap to full data and the time it saves (training + selection
    vs full-data training); where none is, the fraction closest to full data."""
    acc = f"{metric}_mean"
    columns = ["strategy", "fraction", "data_dropped", acc, "full_" + metric, "gap",
               "train_time_s", SELECTION, "total_time_s", "full_train_time_s", "time_saved_s",
               "time_saved_pct", "closest_fraction", "closest_gap"]
    full = cells[cells["strategy"] == FULL]
    if full.empty:
        return pd.DataFrame(columns=columns)
    full_acc = float(full[acc].iloc[0])
    full_time = float(full[f"{TIME_METRIC}_mean"].iloc[0])
    rows = []
    for strategy, group in cells[cells["strategy"] != FULL].groupby("strategy", sort=False):
        closest = group.loc[group[acc].idxmax()]
        row = {"strategy": strategy, "full_" + metric: full_acc, "full_train_time_s": full_time,
               "closest_fraction": float(closest["fraction"]),
               "closest_gap": float(closest[acc]) - full_acc}
        ok = group[group[acc] >= full_acc - tolerance].sort_values("fraction")
        if ok.empty:
            rows.append({**row, "fraction": math.nan, "data_dropped": 0.0, acc: math.nan,
                         "gap": math.nan, "train_time_s": math.nan, SELECTION: math.nan,
                         "total_time_s": math.nan, "time_saved_s": 0.0, "time_saved_pct": 0.0})
            continue
        best = ok.iloc[0]
        train, select = float(best[f"{TIME_METRIC}_mean"]), float(best[SELECTION])
        total = train + (0.0 if math.isnan(select) else select)
        rows.append({**row, "fraction": float(best["fraction"]),
                     "data_dropped": 1.0 - float(best["fraction"]), acc: float(best[acc]),
                     "gap": float(best[acc]) - full_acc, "train_time_s": train,
                     SELECTION: select, "total_time_s": total, "time_saved_s": full_time - total,
                     "time_saved_pct": 100.0 * (full_time - total) / full_time if full_time
                     else math.nan})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------- rendering
def _acc(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _gap(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0f}%"


def _seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0f}"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the strategy x fraction table (the method column only
    with several methods, the kept-share and selection columns only where some cell has
    them)."""
    cells = report.cells
    extra = [(f"{group} kept", column, _pct) for group, column in KEPT.items()
             if column in cells and cells[column].notna().any()]
    if SELECTION in cells and cells[SELECTION].notna().any():
        extra.append(("select s", SELECTION, _seconds))
    method = ["method"] if report.several_methods else []
    headers = ["strategy", *method, "fraction", "seeds"]
    for name in METRICS.values():
        headers += [f"{name} %", "vs random", "vs full"]
    headers += ["train s", *(h for h, _, _ in extra)]
    rows = []
    for c in cells.to_dict("records"):
        row = [c["strategy"], *(c[k] for k in method), f"{c['fraction']:.2f}", str(c["seeds"])]
        for m in METRICS:
            row += [_acc(c[f"{m}_mean"], c[f"{m}_std"]), _gap(c[f"{m}_gap_random"]),
                    _gap(c[f"{m}_gap_full"])]
        row.append(_seconds(c[f"{TIME_METRIC}_mean"]))
        row += [show(c[column]) for _, column, show in extra]
        rows.append(row)
    return headers, rows


def savings_lines(report: Report) -> list[str]:
    """One sentence per strategy: the fraction kept, its signed accuracy gap to full data
    ("within N points" only when it is), and the time saved counting selection."""
    name, acc, full_acc = METRICS[report.metric], f"{report.metric}_mean", f"full_{report.metric}"
    tol = report.tolerance
    if report.full is None:
        return ["no full-data baseline finished, so savings cannot be computed (run the sweep "
                "with sweep.include_full true)"]
    lines = []
    for s in report.savings.to_dict("records"):
        strategy = named(s["strategy"], s["method"], report.several_methods)
        if math.isnan(s["fraction"]):
            lines.append(f"{strategy}: no fraction is within {tol:g} points of full data "
                         f"({s[full_acc]:.1f}% {name}); closest: {s['closest_fraction']:.0%} "
                         f"of the data at {s['closest_gap']:+.1f} points")
            continue
        within = f" (within {tol:g} points)" if abs(s["gap"]) <= tol else ""
        select = ("selection time not recorded" if math.isnan(s[SELECTION])
                  else f"{s[SELECTION]:.0f} s to select")
        saved = s["time_saved_pct"]
        verdict = f"{saved:.0f}% saved" if saved >= 0 else f"{-saved:.0f}% more"
        lines.append(f"{strategy}: keep {s['fraction']:.0%} of the data (drop "
                     f"{s['data_dropped']:.0%}) for {s[acc]:.1f}% {name}, {s['gap']:+.1f} "
                     f"points vs {s[full_acc]:.1f}% on full data{within}; time "
                     f"{s['train_time_s']:.0f} s training + {select} = {s['total_time_s']:.0f} "
                     f"s vs {s['full_train_time_s']:.0f} s on full data ({verdict})")
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


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"


def test_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the strategy - baseline tests (random, and ``analyze.compare``)."""
    method = ["method"] if report.several_methods else []
    headers = ["strategy", *method, "vs", "fraction", "metric", "gap", "Welch p", "paired gap",
               "95% CI", "paired p", "seeds"]
    rows = [[t["strategy"], *(t[k] for k in method), t["baseline"], f"{t['fraction']:.2f}",
             METRICS[t["metric"]], _gap(t["gap"]), _p(t["welch_p"]), _gap(t["paired_gap"]),
             _interval(t["paired_low"], t["paired_high"]), _p(t["paired_p"]),
             f"{t['seeds']} / {t['baseline_seeds']}"]
            for t in report.tests.to_dict("records")]
    return headers, rows


def machine_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of where the trials ran."""
    def span(x: tuple[float, float] | None) -> str:
        return "-" if x is None else f"{x[0]:.1f} - {x[1]:.1f}"

    headers = ["host", "CPU", "cores", "accelerator", "trials", "finished", "load before",
               "load after"]
    rows = [[m["host"], m["cpu"], str(m["cores"]), m["accelerator"] or "none",
             str(m["trials"]), f"{m['first'][:16]} - {m['last'][:16]}".replace("T", " "),
             span(m["load_before"]), span(m["load_after"])] for m in report.machines]
    return headers, rows


def agreement_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the Spearman agreement with the forgetting counts."""
    headers = ["ranking", "rho", "p", "rows", "mean rho within classes"]
    rows = [[a["ranking"], f"{a['rho']:+.3f}", _p(a["p"]), str(a["n"]),
             f"{a['rho_within_mean']:+.3f}"] for a in report.agreement]
    return headers, rows


def problem_lines(report: Report) -> list[str]:
    lines = [f"FAILED {trial_name(r, report.several_methods)}: {r.error}"
             for r in report.failed]
    lines += [f"missing {m}" for m in report.missing]
    return lines


def savings_intro(report: Report) -> str:
    return (f"Smallest fraction of the training pool whose {METRICS[report.metric]} accuracy "
            f"is at least full data's minus {report.tolerance:g} points; time counts the "
            "subset's training and the selection it needs (proxy training, embedding, "
            "latent classes, ranking) against training on full data.")


def render(report: Report, markdown: bool = False) -> str:
    """The whole report as terminal text or Markdown."""
    headers, rows = table_rows(report)
    name = METRICS[report.metric]
    out = []
    if markdown:
        out += ["# Subset sweep report", ""] + ([report.dataset, ""] if report.dataset else [])
    out += [f"{report.finished} finished trials; accuracy on the test split, mean ± std over "
            "seeds; gaps in points.", "", format_table(headers, rows, markdown), ""]
    out += ["## Data savings" if markdown else f"data savings ({name}, tolerance "
            f"{report.tolerance:g} points):"]
    if markdown:
        out += ["", savings_intro(report), ""]
    out += [("- " if markdown else "  ") + line for line in savings_lines(report)]
    if not report.tests.empty:
        out += ["", "## Strategy comparisons" if markdown else "strategy - baseline:"]
        out += ["", TESTS_NOTE, ""] if markdown else []
        out.append(format_table(*test_rows(report), markdown))
    if report.agreement:
        out += ["", "## Agreement with forgetting" if markdown else
                "Spearman rho with forgetting events (positive: prefers unforgettable):"]
        out += ["", AGREEMENT_NOTE, ""] if markdown else []
        out.append(format_table(*agreement_rows(report), markdown))
    if report.machines:
        out += ["", "## Where the trials ran" if markdown else "where the trials ran:"]
        out += ["", MACHINES_NOTE, ""] if markdown else []
        out.append(format_table(*machine_rows(report), markdown))
    problems = problem_lines(report)
    if problems:
        out += ["", "## Failed or missing trials" if markdown else "failed or missing trials:"]
        out += [("- " if markdown else "  ") + p for p in problems]
    return "\n".join(out) + "\n"


TESTS_NOTE = ("Strategy minus the one it is compared with ('vs': random, or an "
              "analyze.compare pair), in points at equal fraction; two-sided p of Welch's "
              "t-test and of the paired t-test over the seeds both have, with the 95% interval "
              "of the paired gap.")
MACHINES_NOTE = ("Finish times in UTC; load: the 1-minute load average before and after each "
                 "trial's training (above the core count: the trial shared its cores).")
AGREEMENT_NOTE = ("Spearman's rho between a ranking's within-class position and the "
                  "forgetting events of each example (positive: the ranking prefers "
                  "unforgettable examples).")


# ---------------------------------------------------------------------------- reading
def read_curves(records: Sequence[TrialRecord]) -> Curves:
    """(strategy, fraction, seed) -> the per-epoch history (``epoch``, ``loss``) of every
    finished trial whose run directory still holds its ``metrics.json`` (the strategy
    :func:`named` with its method when there are several)."""
    several = len({r.method for r in records}) > 1
    out: Curves = {}
    for r in records:
        uri = storage.join(r.run, "metrics.json") if r.finished and r.run else None
        if uri is None or not storage.exists(uri):
            continue
        history = storage.read_json(uri).get("history", [])
        out[(named(r.strategy, r.method, several), round(r.fraction, 6), r.seed)] = [
            {"epoch": int(h["epoch"]), "loss": float(h["loss"])} for h in history
            if "epoch" in h and "loss" in h]
    return out


def gallery_subsets(records: Sequence[TrialRecord]) -> dict[str, tuple[str, float]]:
    """Per strategy with a finished trial: its ranking at the smallest such fraction (what it
    drops most of)."""
    out: dict[str, tuple[str, float]] = {}
    for r in sorted(records, key=lambda r: r.fraction):
        if r.ranking is not None and r.finished:
            out.setdefault(r.strategy, (r.ranking, r.fraction))
    return out


def describe_dataset(shards: str | None) -> str:
    """"synthetic: 600 train / 240 test images, 6 classes" from a shards manifest ('' when
    unknown)."""
    manifest = storage.read_manifest(shards) if shards else None
    if manifest is None:
        return ""
    meta = manifest["meta"]
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    counts = " / ".join(f"{v['images']:,} {k}" for k, v in sorted(
        meta["splits"].items(), key=lambda kv: order.get(kv[0], len(order))))
    source = meta["source"].rstrip("/").rsplit("/", 1)[-1]
    return f"{source}: {counts} images, {len(meta['class_names'])} classes"


def analyze(sweep: str, cfg: AnalyzeConfig | None = None,
            stages: costs.Stages | None = None) -> Report:
    """Report of the ``sweep`` artifact at ``sweep`` (local or s3://): with the kinds of the
    shards it trained on and the stage times of the pipeline next to it (``stages``: those,
    already read)."""
    cfg = cfg or AnalyzeConfig()
    records = read_sweep(sweep)
    shards = trained_on(sweep)
    report = summarize(records, tolerance=cfg.tolerance, metric=cfg.metric,
                       compare=cfg.compare, kinds=kinds_mod.read_kinds(shards),
                       stages=costs.compute_seconds(costs.read_stages(sweep) if stages is None
                                                    else stages))
    report.shards, report.dataset = shards, describe_dataset(shards)
    report.curves, report.galleries = read_curves(records), gallery_subsets(records)
    return report


# ---------------------------------------------------------------------------- writing
REPORT_FILES = (PAGE_FILE, "table.md", "table.csv", "tests.csv", "savings.csv", PLOT_FILE,
                CURVES_FILE)


def gallery_file(strategy: str) -> str:
    """``gallery-sas.png``; a label such as ``sas/kmeans`` -> ``gallery-sas-kmeans.png``."""
    return "gallery-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", strategy) + ".png"


def report_files(out: str) -> dict[str, str]:
    """Name -> URI of the report files under ``out`` but the galleries (one per strategy)."""
    return {name: storage.join(out, name) for name in REPORT_FILES}


def _write_galleries(report: Report, tmp: str) -> dict[str, tuple[str, str]]:
    """Gallery PNGs into ``tmp``; page heading -> (file name, caption)."""
    from sas_ray.analysis.gallery import write_gallery
    from sas_ray.io.artifacts import load_ranking

    out = {}
    for strategy, (uri, fraction) in report.galleries.items():
        name = gallery_file(strategy)
        try:
            write_gallery(load_ranking(uri), fraction, report.shards, report.kinds,
                          os.path.join(tmp, name),
                          title=f"{strategy} at {fraction:.0%} of the pool")
        except Exception as err:  # a picture must not cost the report
            log.warning("no gallery for %s (%s: %s)", strategy, type(err).__name__, err)
            continue
        out[strategy] = (name, f"The first-ranked images of three latent classes (kept at "
                               f"{fraction:.0%}) and the last-ranked ones (dropped).")
    return out


def _write_page(report: Report, path: str, title: str, galleries: dict[str, tuple[str, str]]
                ) -> None:
    extra = []
    if not report.tests.empty:
        extra.append(("Strategy comparisons", TESTS_NOTE, test_rows(report)))
    if report.agreement:
        extra.append(("Agreement with forgetting", AGREEMENT_NOTE, agreement_rows(report)))
    if report.machines:
        extra.append(("Where the trials ran", MACHINES_NOTE, machine_rows(report)))
    kept = ("; 'kept' columns: share of the pool's near-duplicates and junk (blank, noise, "
            "off-class images) in the subset" if any(c in report.cells for c in KEPT.values())
            and report.kinds else "")
    text = page.page(
        title=title, subtitle=f"{report.dataset} · {report.finished} finished trials; accuracy "
        f"on the test split, mean ± std over seeds; gaps in points{kept}.",
        intro=savings_intro(report), savings=savings_lines(report), table=table_rows(report),
        full_label=FULL,
        plots={"Accuracy vs fraction kept": (PLOT_FILE, "Markers are slightly offset in x "
                                             "so that overlapping lines stay visible."),
               "Training curves": (CURVES_FILE, "SSL training loss per epoch of every trial.")},
        extra_tables=extra, galleries=galleries, problems=problem_lines(report))
    with open(path, "w") as f:
        f.write(text)


def write_report(report: Report, out: str, title: str = "", *, config: Any = None,
                 inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Write :func:`report_files` and the galleries into ``out`` (local or s3://) and commit
    them with a ``report`` manifest; returns them all (name -> URI).

    The old manifest is removed first and the new one written last, so a crash in between
    leaves files that no manifest vouches for rather than a mix that looks complete.
    """
    title = " — ".join(t for t in (title, report.dataset) if t) or "sas-ray report"
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
        plots.accuracy_plot(report.cells, local[PLOT_FILE], title=title,
                            tolerance=report.tolerance)
        plots.curves_plot(report.curves, local[CURVES_FILE], title=title)
        galleries = _write_galleries(report, tmp) if report.shards else {}
        for name, _ in galleries.values():
            files[name], local[name] = storage.join(out, name), os.path.join(tmp, name)
        _write_page(report, local[PAGE_FILE], title, galleries)
        for name, uri in files.items():
            with open(local[name], "rb") as f:
                storage.write_bytes_atomic(uri, f.read())
    storage.commit_manifest(out, "report", list(files), config=config, inputs=inputs,
                            meta={"finished": report.finished, "failed": len(report.failed),
                                  "missing": len(report.missing), "metric": report.metric,
                                  "tolerance": report.tolerance})
    return files


def print_report(report: Report, files: dict[str, str]) -> None:
    """The table on the terminal, then the page to open."""
    print(render(report), end="")
    print(f"report: {files[PAGE_FILE]}")


def cli_analyze(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray analyze SWEEP [--out DIR]``: print the table, write the report files."""
    sweep = args.experiment.rstrip("/")
    out = args.out or storage.join(os.path.dirname(sweep) or ".", "report")
    report = analyze(sweep, cfg.analyze)
    print_report(report, write_report(report, out, title=cfg.run.name,
                                      config=dataclasses.asdict(cfg.analyze)))
