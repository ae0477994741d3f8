"""Sweep results -> the answer to "how much data can I drop, and which selection should I use?".

Input is one :class:`TrialRecord` per Tune trial, read either from an experiment directory
(plain JSON files, no Ray needed; local or ``s3://``) or from a ``ray.tune.ResultGrid``.
Output is a :class:`Report`:

* ``cells``: one row per (strategy, fraction) with, over seeds, mean and sample std of the
  linear-probe and kNN test accuracy (percent), the gap to ``random`` at the same
  fraction and the gap to full-data training (``strategy="full"``, fraction 1.0);
* ``savings``: per strategy, the smallest fraction f whose mean accuracy (``analyze.metric``)
  is at least ``full - tolerance`` points, i.e. the share 1 - f of the data that can be dropped,
  and the training time that saves relative to full data;
* failed trials (with their error line) and expected trials that have no result yet, so a
  partially finished sweep is reported for what it is.

``write_report`` writes ``table.md``, ``table.csv``, ``savings.csv`` and
``accuracy_vs_fraction.png`` (matplotlib Agg) into a directory (local or ``s3://``), under
stable names, and commits them with a manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sas_ray.config import AnalyzeConfig, Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

# metrics a sweep trial reports (test accuracies in percent) and their display names
METRICS = {"linear_acc": "linear probe", "knn_acc": "kNN"}
TIME_METRIC = "train_time_s"
FULL = "full"  # the strategy name of the full-data baseline
BASELINE = "random"  # gaps are measured against this strategy at equal fraction
SPEC_FILE = "sas_ray_sweep.json"  # written by the sweep driver: the grid the sweep expects
PLOT_FILE = "accuracy_vs_fraction.png"
DONE = "TERMINATED"


@dataclass
class TrialRecord:
    """One trial of a sweep: its grid point, Tune status and last reported metrics."""

    strategy: str
    fraction: float
    seed: int
    status: str  # Tune's: TERMINATED | ERROR | RUNNING | PENDING | PAUSED
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # last line of the error, for failed trials
    trial_id: str = ""
    path: str | None = None

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.strategy, round(self.fraction, 6), self.seed)

    @property
    def finished(self) -> bool:
        return self.status == DONE and all(m in self.metrics for m in METRICS)


@dataclass
class Report:
    """Aggregated sweep results (see the module docstring for the columns)."""

    cells: pd.DataFrame
    savings: pd.DataFrame
    failed: list[TrialRecord]
    missing: list[str]  # "strategy f=0.30 seed=0 (RUNNING)" for every expected trial without result
    tolerance: float
    metric: str
    finished: int

    @property
    def full(self) -> pd.Series | None:
        rows = self.cells[self.cells["strategy"] == FULL]
        return None if rows.empty else rows.iloc[0]


# ---------------------------------------------------------------------------- reading
def trial_params(config: dict[str, Any]) -> tuple[str, float, int]:
    """(strategy, fraction, seed) from a trial's Tune config ``{"subset": {...}, "seed": s}``."""
    subset = config.get("subset") or {}
    try:
        return str(subset["strategy"]), float(subset["fraction"]), int(config["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise SasRayError(f"trial config {config!r} is not from a sas-ray sweep (no subset "
                          "strategy/fraction/seed); pass the directory `sas-ray sweep` wrote") \
            from err


def _result_config(result: Any) -> dict[str, Any]:
    """A Result's trial config; Tune leaves it empty for a trial that failed before its first
    report, so then it is read from the trial's ``params.json``."""
    if result.config:
        return result.config
    fs = getattr(result, "filesystem", None)
    if fs is None or not result.path:
        return {}
    with fs.open_input_stream(f"{result.path}/params.json") as f:
        return json.loads(f.read())


def records_from_result_grid(grid: Iterable[Any]) -> list[TrialRecord]:
    """Records from a ``ray.tune.ResultGrid`` (or any iterable of ``ray.tune.Result``)."""
    out = []
    for result in grid:
        strategy, fraction, seed = trial_params(_result_config(result))
        error = last_line(str(result.error)) if result.error is not None else None
        metrics = dict(result.metrics or {})
        status = "ERROR" if error else (DONE if all(m in metrics for m in METRICS) else "RUNNING")
        out.append(TrialRecord(strategy, fraction, seed, status, metrics, error,
                               trial_id=str(metrics.get("trial_id", "")), path=result.path))
    return out


def read_experiment(uri: str) -> tuple[list[TrialRecord], dict[str, Any] | None]:
    """Records and the expected grid (``SPEC_FILE``, if the sweep wrote one) of an experiment dir.

    Trial status comes from Tune's newest ``experiment_state-*.json``; trials that are not in
    it yet (a crash before Tune saved its state) are read from their ``params.json``,
    ``result.json`` and ``error.txt``. Nothing here needs Ray.
    """
    if not storage.exists(uri):
        raise SasRayError(f"experiment directory {uri} does not exist; pass the sweep's "
                          "directory (default: <run.storage>/sweep)")
    root = _strip(uri)
    files = storage.list_files(root)
    spec_uri = storage.join(root, SPEC_FILE)
    spec = storage.read_json(spec_uri) if spec_uri in files else None
    records: dict[str, TrialRecord] = {}
    for rec in [*_records_from_state(root, files), *_records_from_trial_dirs(root, files)]:
        records.setdefault(str(rec.path), rec)  # Tune's saved state wins over the trial files
    if not records and spec is None:
        raise SasRayError(f"{uri} holds no Tune trials; pass the directory a sweep wrote "
                          "(it contains experiment_state-*.json and one folder per trial)")
    return list(records.values()), spec


def _records_from_state(root: str, files: list[str]) -> list[TrialRecord]:
    states = sorted(f for f in files if os.path.basename(f).startswith("experiment_state-")
                    and f.endswith(".json") and os.path.dirname(f) == root)
    if not states:
        return []
    state = storage.read_json(states[-1])
    out = []
    for trial_json, runtime_json in state.get("trial_data", []):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        strategy, fraction, seed = trial_params(trial.get("config") or {})
        path = storage.join(root, trial["relative_logdir"])
        error = None
        if trial.get("status") == "ERROR":
            name = runtime.get("error_filename") or "error.txt"
            err_uri = storage.join(path, name)
            error = (last_line(storage.read_bytes(err_uri).decode(errors="replace"))
                     if storage.exists(err_uri) else "failed (no error file)")
        out.append(TrialRecord(strategy, fraction, seed, str(trial.get("status")),
                               dict(runtime.get("last_result") or {}), error,
                               trial_id=str(trial.get("trial_id", "")), path=path))
    return out


def _records_from_trial_dirs(root: str, files: list[str]) -> list[TrialRecord]:
    out = []
    for params in (f for f in files if os.path.basename(f) == "params.json"
                   and os.path.dirname(os.path.dirname(f)) == root):
        path = os.path.dirname(params)
        strategy, fraction, seed = trial_params(storage.read_json(params))
        lines = storage.read_bytes(storage.join(path, "result.json")).decode().splitlines() \
            if f"{path}/result.json" in files else []
        metrics = json.loads(lines[-1]) if lines else {}
        error = None
        if f"{path}/error.txt" in files:
            error = last_line(storage.read_bytes(f"{path}/error.txt").decode(errors="replace"))
        status = "ERROR" if error else (DONE if all(m in metrics for m in METRICS) else "RUNNING")
        out.append(TrialRecord(strategy, fraction, seed, status, metrics, error,
                               trial_id=str(metrics.get("trial_id", "")), path=path))
    return out


def _strip(uri: str) -> str:
    """``uri`` as ``list_files`` spells its entries (absolute local path or ``s3://...``)."""
    return storage.absolute(uri).rstrip("/")


def last_line(text: str) -> str:
    """The last non-empty line of an error text (at most 300 characters)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"


# ---------------------------------------------------------------------------- aggregating
def expected_keys(spec: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Every (strategy, fraction, seed) a sweep spec asks for."""
    return [(c["strategy"], round(float(c["fraction"]), 6), int(s))
            for c in spec["cells"] for s in spec["seeds"]]


def summarize(records: Sequence[TrialRecord], *, spec: dict[str, Any] | None = None,
              tolerance: float = 0.5, metric: str = "linear_acc") -> Report:
    """Aggregate finished trials over seeds; list failed and missing ones.

    With ``spec`` (the grid the sweep was started with) trials that never reported are
    listed as missing and cells are ordered like the sweep's strategies.
    """
    if metric not in METRICS:
        raise SasRayError(f"analyze.metric '{metric}' is unknown; use one of {', '.join(METRICS)}")
    done = [r for r in records if r.finished]
    failed = [r for r in records if r.status == "ERROR"]
    done_keys = {r.key for r in done}
    status = {r.key: r.status for r in records}
    missing = [] if spec is None else [
        f"{s} f={f:.2f} seed={seed} ({status.get((s, f, seed), 'NOT STARTED')})"
        for s, f, seed in expected_keys(spec) if (s, f, seed) not in done_keys]
    if spec is None:  # no grid known: anything unfinished that did not fail is missing
        missing = [f"{r.strategy} f={r.fraction:.2f} seed={r.seed} ({r.status})"
                   for r in records if not r.finished and r.status != "ERROR"]
    order = [c["strategy"] for c in spec["cells"]] if spec else []
    cells = _aggregate(done, order)
    return Report(cells=cells, savings=_savings(cells, metric, tolerance), failed=failed,
                  missing=missing, tolerance=tolerance, metric=metric, finished=len(done))


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
def analyze(source: str | Iterable[Any], cfg: AnalyzeConfig | None = None,
            spec: dict[str, Any] | None = None) -> Report:
    """Report of an experiment directory (local or s3://) or of a ``ResultGrid``."""
    cfg = cfg or AnalyzeConfig()
    if isinstance(source, str):
        records, found = read_experiment(source)
        spec = spec or found
    else:
        records = records_from_result_grid(source)
    return summarize(records, spec=spec, tolerance=cfg.tolerance, metric=cfg.metric)


REPORT_FILES = ("table.md", "table.csv", "savings.csv", PLOT_FILE)


def report_files(out: str) -> dict[str, str]:
    """Name -> URI of the report files under ``out``."""
    return {name: storage.join(out, name) for name in REPORT_FILES}


def write_report(report: Report, out: str, title: str = "", *, config: Any = None,
                 inputs: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``out/{table.md, table.csv, savings.csv, accuracy_vs_fraction.png}`` (local or
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
    """``sas-ray analyze EXPERIMENT [--out DIR]``: print the table, write table/CSV/plot."""
    experiment = args.experiment.rstrip("/")
    out = args.out or storage.join(os.path.dirname(experiment) or ".", "report")
    report = analyze(experiment, cfg.analyze)
    print_report(report, write_report(report, out, title=cfg.run.name,
                                      config=dataclasses.asdict(cfg.analyze)))
