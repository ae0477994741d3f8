"""Run every benchmark in sequence and summarise their ratios against the targets.

    python -m benchmarks.run [--quick] [--only ingest,embed] [--collect-only]

Each benchmark runs as its own process (``python -m benchmarks.<name>``, so one's Ray
session or memory cannot affect the next) and writes ``benchmarks/results/<name>.json``
(``<name>-quick.json`` for some in quick mode). This runner then reads those files and
writes ``benchmarks/results/summary.md``: the machine, every ratio with both of its sides
(always measured in the same run of one benchmark), and whether it meets the target set in
the issues. ``--quick`` passes each benchmark its smaller sizes (its ``--quick`` flag, or the
arguments in :data:`QUICK_ARGS`); the summary says so. ``--collect-only`` rewrites the
summary from the result files already there; ``--only a,b`` runs those and takes the other
benchmarks' rows from their result files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info, machine_line

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = ("ingest", "embed", "selection", "train", "memory", "end_to_end")
QUICK_ARGS = {  # benchmarks without a --quick flag; --out keeps the full-size results
    "embed": ["--images", "2000", "--small-images", "256",
              "--out", "benchmarks/results/embed-quick.json"],
    "train": ["--images", "512", "--epochs", "2", "--out", "benchmarks/results/train-quick.json"],
}
TIMEOUT_S = {"quick": 900, "full": 3 * 3600}


@dataclass
class Row:
    """One compared quantity: ``value`` (a ratio or a measurement) against a target."""

    what: str
    sides: str  # both measured sides, in words with numbers
    value: float | None
    unit: str  # "x" for a ratio, else the unit of a measurement ("s", "GiB")
    target: str  # e.g. ">= 1.3x"; "" when the issue sets none
    meets: bool | None  # None: no target, or not measured


def get(d: dict[str, Any], path: str) -> Any:
    """``d["a"]["b"]`` for ``path="a.b"``; None when any key is missing."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def num(x: Any) -> str:
    """A measured number for a table: floats to 3 significant digits (one decimal from 100
    up), None as "?"."""
    if x is None:
        return "?"
    if isinstance(x, float):
        return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3g}"
    return str(x)


def _check(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if op == ">=" else value < bound


def rows_ingest(r: dict[str, Any]) -> list[Row]:
    whole = get(r, "whole_archive") or {}
    seconds = whole.get("seconds") if isinstance(whole, dict) else None
    above = get(r, "peak_rss.above_interpreter_mib")
    workers = get(r, "pool_workers")
    rows = [
        Row("ingest: whole CIFAR-10 archive", f"{num(seconds)} s", seconds, "s", "< 60 s",
            _check(seconds, "<", 60)),
        Row("ingest: peak RSS of the archive above the interpreter", f"{num(above)} MiB",
            above, "MiB", "< 1024 MiB", _check(above, "<", 1024)),
    ]
    for source in ("directory", "archive"):
        rows.append(Row(f"ingest: Ray {source} path / process pool of {num(workers)}",
                        f"Ray {num(get(r, f'{source}.ray_images_per_s'))} img/s vs pool "
                        f"{num(get(r, f'{source}.pool_images_per_s'))} img/s",
                        get(r, f"{source}.ratio"), "x", "", None))
    return rows


def rows_embed(r: dict[str, Any]) -> list[Row]:
    ratio = get(r, "ratio_steady")
    sides = (f"Ray Data {num(get(r, 'ray.steady_images_per_s'))} img/s steady "
             f"({num(get(r, 'ray.end_to_end_images_per_s'))} end to end, stage startup "
             f"{num(get(r, 'ray.stage_startup_s'))} s, ray.init "
             f"{num(get(r, 'ray.ray_init_s'))} s) vs local executor "
             f"{num(get(r, 'local.steady_images_per_s'))} img/s steady; "
             f"{num(get(r, 'settings.images'))} images")
    return [Row("embed: Ray actors / local executor (steady state)", sides, ratio, "x",
                ">= 0.9x", _check(ratio, ">=", 0.9)),
            Row("embed: Ray actors / local executor (end to end, incl. startup)", sides,
                get(r, "ratio_end_to_end"), "x", "", None)]


def rows_selection(r: dict[str, Any]) -> list[Row]:
    one, speed, e2e = r.get("one_class", {}), r.get("speed", {}), r.get("end_to_end", {})
    speedup = speed.get("speedup_vs_reference")
    ratio = get(one, "sas.numpy.ratio_to_pass")
    blocked = speed.get("sas_reference_blocked_seconds")
    rule_ratio = speed.get("sas_seconds", 0.0) / blocked if blocked else None
    extra = e2e.get("peak_rss_extra_bytes")
    extra_gib = extra / 2**30 if extra is not None else None
    total = e2e.get("total_seconds")
    return [
        Row(f"selection: SAS / one blocked x @ x.T pass, one class of {one.get('n')} x "
            f"{one.get('d')}", f"SAS {num(get(one, 'sas.numpy.seconds'))} s (torch CPU "
            f"{num(get(one, 'sas.torch_cpu.seconds'))} s, same order: "
            f"{one.get('torch_equals_numpy')}) vs pass {num(one.get('pass_seconds'))} s",
            ratio, "x", "<= 3x", None if ratio is None else ratio <= 3),
        Row(f"selection: reference kernel / SAS, {speed.get('n')} x {speed.get('d')} in "
            f"{speed.get('classes')} classes",
            f"reference broadcast kernel {num(speed.get('reference_broadcast_seconds'))} s "
            f"({speed.get('reference_how', 'timed')}) vs SAS {num(speed.get('sas_seconds'))} s",
            speedup, "x", ">= 100x", _check(speedup, ">=", 100)),
        Row("selection: SAS / the reference rule written with matrix products",
            f"SAS {num(speed.get('sas_seconds'))} s vs sas-reference {num(blocked)} s",
            rule_ratio, "x", "", None),
        Row(f"selection: end to end (k-means + SAS), {e2e.get('n')} x {e2e.get('d')}, "
            f"k={e2e.get('k')}", f"k-means ({e2e.get('kmeans')}) "
            f"{num(e2e.get('latent_seconds'))} s + SAS on {e2e.get('workers')} processes "
            f"{num(e2e.get('sas_seconds'))} s", total, "s", "< 120 s",
            _check(total, "<", 120)),
        Row(f"selection: extra memory, end to end {e2e.get('n')} x {e2e.get('d')}",
            f"peak RSS + {num(extra_gib)} GiB over the "
            f"{e2e.get('input_bytes', 0) / 2**30:.2f} GiB input", extra_gib, "GiB",
            "< 2 GiB", _check(extra_gib, "<", 2)),
    ]


def rows_train(r: dict[str, Any]) -> list[Row]:
    ratio = get(r, "ratio_ray_over_plain")
    sides = (f"Ray Train {num(get(r, 'ray.images_per_s'))} img/s vs plain "
             f"{num(get(r, 'plain.images_per_s'))} img/s (after a warm-up epoch; Ray startup "
             f"reported apart: ray.init {num(get(r, 'ray.ray_init_s'))} s + trainer "
             f"{num(get(r, 'ray.startup_s'))} s); {get(r, 'settings.images')} images, "
             f"{get(r, 'settings.epochs')} epochs")
    today = r.get("plain_todays_input_path") or {}
    new_over_today = today.get("ratio_new_over_today")
    i224 = today.get("input_224px_one_core") or {}
    return [Row("train: Ray Train / plain PyTorch loop (startup excluded)", sides, ratio, "x",
                ">= 0.85x", _check(ratio, ">=", 0.85)),
            Row("train: new input path / today's, plain loop img/s",
                f"new {num(get(r, 'plain.images_per_s'))} img/s vs today's "
                f"({today.get('commit')}) {num(today.get('images_per_s'))} img/s, same model "
                "and batches", new_over_today, "x", "", None),
            Row("train: decode + 2 views at 224 px on one core, new / today's",
                f"new {num(i224.get('new'))} img/s vs today's {num(i224.get('today'))} img/s "
                "(CPU time of the thread)", i224.get("ratio"), "x", ">= 2x",
                _check(i224.get("ratio"), ">=", 2))]


def rows_memory(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name, w in r.get("workloads", {}).items():
        d, k = w["default"], w["keep"]
        sides = (f"keep_freed_memory {num(k['images_per_s'])} img/s "
                 f"({num(k['minor_faults_per_step'])} faults/step, peak "
                 f"{num(k['peak_rss_mib'])} MiB) vs glibc default {num(d['images_per_s'])} img/s "
                 f"({num(d['minor_faults_per_step'])} faults/step, {num(d['system_s'])} s in the "
                 f"kernel, peak {num(d['peak_rss_mib'])} MiB)")
        rows.append(Row(f"memory: {name}, freed memory kept / glibc default", sides,
                        w["ratio_keep_over_default"], "x", "", None))
    return rows


def rows_end_to_end(r: dict[str, Any]) -> list[Row]:
    s, st = r.get("seconds", {}), r.get("settings", {})
    sides = (f"embed {s.get('embed')} + partition {s.get('partition')} + rank {s.get('rank')}"
             f" + fit on {st.get('subset_images')} images {s.get('subset_fit')} s = "
             f"{s.get('pipeline')} s vs fit on {st.get('images')} images {s.get('full_fit')} s "
             f"({st.get('epochs')} epochs each; proxy fit "
             f"{num(s.get('proxy_fit')) + ' s' if s.get('proxy_fit') else 'skipped'})")
    return [
        Row(f"end to end: SAS pipeline at f={st.get('fraction')} / full-data training", sides,
            r.get("ratio_pipeline_vs_full"), "x", "", None),
        Row("end to end: same, Ray Train startup excluded", sides,
            r.get("ratio_pipeline_vs_full_without_startup"), "x", "", None),
    ]


EXTRACT: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "ingest": rows_ingest, "embed": rows_embed, "selection": rows_selection,
    "train": rows_train, "memory": rows_memory, "end_to_end": rows_end_to_end,
}


def command(name: str, quick: bool) -> list[str]:
    """The command running benchmark ``name``, with its quick-mode arguments."""
    args: list[str] = []
    if quick:
        source = (HERE / f"{name}.py").read_text()
        args = ["--quick"] if '"--quick"' in source else QUICK_ARGS.get(name, [])
    return [sys.executable, "-m", f"benchmarks.{name}", *args]


def result_file(name: str, quick: bool, since: float) -> Path | None:
    """The newest of ``<name>-quick.json`` / ``<name>.json`` (quick mode prefers the first)
    written at or after ``since``."""
    names = [f"{name}-quick.json", f"{name}.json"] if quick else [f"{name}.json"]
    found = [RESULTS / n for n in names
             if (RESULTS / n).exists() and (RESULTS / n).stat().st_mtime >= since]
    return found[0] if found else None


def run_benchmark(name: str, quick: bool, log_dir: Path) -> dict[str, Any]:
    cmd = command(name, quick)
    log_path = log_dir / f"{name}{'-quick' if quick else ''}.log"
    print(f"== {name}: {' '.join(cmd[1:])}  (log {log_path})", flush=True)
    start_wall, start = time.time(), time.perf_counter()
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=HERE.parent, stdout=log, stderr=subprocess.STDOUT,
                                timeout=TIMEOUT_S["quick" if quick else "full"]).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = log_path.read_text().strip().splitlines()[-12:]
    print("\n".join(f"   {line}" for line in tail), flush=True)
    found = result_file(name, quick, start_wall - 1)
    return {"name": name, "command": " ".join(["python", *cmd[1:]]), "returncode": rc,
            "seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
            "load_after": os.getloadavg()[0], "result": str(found) if found else None,
            "log_tail": tail}


def collected(name: str, quick: bool) -> dict[str, Any]:
    """A result file left by an earlier run, with the date and load its benchmark recorded."""
    found = result_file(name, quick, 0)
    machine = json.loads(found.read_text()).get("machine", {}) if found else {}
    load = machine.get("load_avg_1m", (machine.get("loadavg_before") or [None])[0])
    date = machine.get("date") or (dt.datetime.fromtimestamp(found.stat().st_mtime, dt.UTC)
                                   .isoformat(timespec="seconds") if found else None)
    return {"name": name, "command": " ".join(["python", *command(name, quick)[1:]]),
            "returncode": None, "seconds": None, "load_before": load, "load_after": None,
            "measured": date, "result": str(found) if found else None, "log_tail": []}


def fmt_value(row: Row) -> str:
    if row.value is None:
        return "not measured"
    return f"{row.value:.2f}x" if row.unit == "x" else f"{num(float(row.value))} {row.unit}"


def summary(runs: list[dict[str, Any]], quick: bool, info: dict[str, Any]) -> str:
    lines = ["# Benchmark summary", "",
             f"Machine: {machine_line(info)}.", "",
             ("**Quick mode** (`python -m benchmarks.run --quick`): every benchmark ran at its "
              "smaller sizes, so these are smoke figures, not the issue's measurements."
              if quick else "Full sizes (`python -m benchmarks.run`)."), "",
             "Both sides of every ratio were measured in the same run of one benchmark. "
             "Other processes sharing the CPUs slow and add noise to both sides; the load "
             "averages are listed per benchmark.", "",
             "| benchmark | quantity | both sides | value | target | meets |",
             "|---|---|---|---|---|---|"]
    notes = []
    for run in runs:
        name = run["name"]
        if run["result"] is None:
            status = ("timed out" if run["returncode"] == "timeout" else
                      f"exit code {run['returncode']}" if run["returncode"] else "no result file")
            lines.append(f"| {name} | - | - | not measured ({status}) | - | - |")
            if run["log_tail"]:
                notes.append(f"- {name} ({status}), last lines of its log:\n\n```\n"
                             + "\n".join(run["log_tail"]) + "\n```")
            continue
        data = json.loads(Path(run["result"]).read_text())
        for row in EXTRACT[name](data):
            meets = {True: "yes", False: "**no**", None: "-"}[row.meets]
            if quick and row.meets is not None:
                meets += " (quick sizes; the target is for the full ones)"
            lines.append(f"| {name} | {row.what} | {row.sides} | {fmt_value(row)} | "
                         f"{row.target or '(none)'} | {meets} |")
    lines += ["", "| benchmark | command | measured | wall s | exit | load avg before → after "
              "| result |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        load = ("-" if run["load_before"] is None else f"{run['load_before']:.1f} → " + (
            "-" if run["load_after"] is None else f"{run['load_after']:.1f}"))
        result = Path(run["result"]).relative_to(HERE.parent) if run["result"] else "-"
        lines.append(f"| {run['name']} | `{run['command']}` | {run.get('measured') or 'this run'}"
                     f" | {run['seconds'] or '-'} | "
                     f"{run['returncode'] if run['returncode'] is not None else '-'} | {load} | "
                     f"{result} |")
    if notes:
        lines += ["", "## Failures", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--only", help=f"comma list out of {','.join(BENCHMARKS)}")
    parser.add_argument("--collect-only", action="store_true",
                        help="summarise the result files already there; run nothing")
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(BENCHMARKS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}",
              file=sys.stderr)
        return 2
    info = machine_info()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(exist_ok=True)
    runs = [collected(n, args.quick) if args.collect_only else
            run_benchmark(n, args.quick, log_dir) for n in names]
    # the summary keeps every benchmark: the others from the result files already there
    every = [next((r for r in runs if r["name"] == n), None) or collected(n, args.quick)
             for n in BENCHMARKS]
    text = summary(every, args.quick, info)
    out = RESULTS / "summary.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0 if all(r["result"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
