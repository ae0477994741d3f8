"""Incremental SAS selection after the pool grows by 10%, against a full recompute.

The pool: n rows x 128 in k latent classes of about n / k rows (float32, clustered as in
``benchmarks/selection.py``), ranked once by ``sas`` (the previous ranking). Then n / 10
new rows arrive, in one of two ways:

* ``spread``: every class gains about 10% rows (the hard case: every class is touched);
* ``new-classes``: the new rows form k / 10 new classes (a new concept per class; labels
  as latent classes): every old class is untouched.

For each, on the local executor's 2-process pool (``select.num_workers 2``): the full
recompute (``select_sas`` on the grown pool) and
:func:`~sas_ray.core.selection.incremental.incremental_sas` with ``rerun`` (touched classes
re-ranked: equal to the full run, checked) and ``extend`` (touched classes extended: an
approximation, reported as its cut value F over the full greedy's at fractions 0.1, 0.25,
0.5; both sum exact marginal gains). The incremental times include fingerprinting every
class (sha256 of its ids and embedding bytes). Wall and CPU time of this process are given;
the load average before and after is recorded (2 cores shared with other jobs: wall times
under load are provisional).

Usage: ``python -m benchmarks.incremental [--quick] [--rows N]`` (default 1,000,000 rows in
100 classes; ``--quick``: 100,000 rows in 10 classes); writes
``benchmarks/results/incremental.json`` (``incremental-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from benchmarks.machine import machine_info
from benchmarks.selection import RESULTS, clustered_embeddings
from sas_ray.config import Config
from sas_ray.core.selection.incremental import (
    ClassState,
    class_fingerprint,
    incremental_sas,
    within_class_orders,
)
from sas_ray.core.selection.ranking import Ranking, class_budgets, class_jobs
from sas_ray.core.selection.sas import select_sas
from sas_ray.executors.local import LocalExecutor

SETTINGS = {"strategy": "sas", "similarity_floor": None}
FRACTIONS = (0.1, 0.25, 0.5)


def timed(fn: Any) -> tuple[float, float, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def pools(n: int, d: int, k: int, scenario: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, latent, is_new) of the grown pool: n old rows in k classes, n / 10 new ones."""
    if scenario == "spread":
        x, latent = clustered_embeddings(n + n // 10, d, k, seed=5)
        is_new = np.zeros(latent.size, dtype=bool)
        is_new[np.random.default_rng(0).choice(latent.size, n // 10, replace=False)] = True
        return x, latent, is_new
    x, latent = clustered_embeddings(n + n // 10, d, k + k // 10, seed=5)
    return x, latent, latent >= k  # balanced classes: the k / 10 new ones hold n / 10 rows


def states_of(ranking: Ranking, x: np.ndarray, ids: np.ndarray) -> dict[int, ClassState]:
    jobs = class_jobs(ranking.latent, 0)
    return {job.label: ClassState(ids=ids[job.rows[res.order]], scores=res.scores,
                                  fingerprint=class_fingerprint(SETTINGS, job.label,
                                                                ids[job.rows], x[job.rows]))
            for job, res in zip(jobs, within_class_orders(ranking, jobs), strict=True)}


def cut_values(ranking: Ranking) -> dict[float, float]:
    """F of the prefix at each fraction: the per-class sums of the first r_k gains."""
    jobs = class_jobs(ranking.latent, 0)
    orders = within_class_orders(ranking, jobs)
    sizes = [job.rows.size for job in jobs]
    out = {}
    for f in FRACTIONS:
        budgets = class_budgets(sizes, round(f * ranking.order.size))
        out[f] = float(sum(o.scores[:b].sum() for o, b in zip(orders, budgets, strict=True)))
    return out


def scenario_run(n: int, d: int, k: int, scenario: str) -> dict[str, Any]:
    x, latent, is_new = pools(n, d, k, scenario)
    ids = np.arange(latent.size, dtype=np.int64)
    cfg = Config()
    cfg.select.num_workers = 2
    cfg.select.backend = "numpy"
    map_classes = LocalExecutor(cfg).class_map(cfg.select.num_workers)
    old = ~is_new
    prev_s, _, prev = timed(lambda: select_sas(x[old], latent[old], None, 0, cfg.select,
                                               map_classes=map_classes))
    states = states_of(prev, x[old], ids[old])
    full_s, full_cpu, full = timed(lambda: select_sas(x, latent, None, 0, cfg.select,
                                                      map_classes=map_classes))
    out: dict[str, Any] = {"scenario": scenario, "rows": int(latent.size),
                           "new_rows": int(is_new.sum()), "classes": int(np.unique(latent).size),
                           "previous_seconds": prev_s, "full_seconds": full_s,
                           "full_cpu_seconds": full_cpu}
    full_f = cut_values(full)
    for greedy in ("rerun", "extend"):
        wall, cpu, res = timed(lambda g=greedy: incremental_sas(
            x, ids, latent, states, SETTINGS, 0, cfg.select, greedy=g, map_classes=map_classes))
        counts = {h: sum(1 for v in res.how.values() if v == h) for h in ("reuse", "extend",
                                                                          "rank")}
        row = {"seconds": wall, "cpu_seconds": cpu, "speedup": full_s / wall,
               "classes": counts}
        if greedy == "rerun":
            row["equals_full"] = bool(np.array_equal(res.ranking.order, full.order)
                                      and np.array_equal(res.ranking.scores, full.scores))
        else:
            mine = cut_values(res.ranking)
            row["cut_value_ratio"] = {str(f): mine[f] / full_f[f] for f in FRACTIONS}
        out[greedy] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows in 10 classes")
    parser.add_argument("--rows", type=int, help="old rows (default 1,000,000; quick 100,000)")
    args = parser.parse_args()
    n = args.rows or (100_000 if args.quick else 1_000_000)
    k = max(10, n // 10_000)
    load_before = os.getloadavg()
    runs = [scenario_run(n, 128, k, s) for s in ("spread", "new-classes")]
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    result = {"quick": args.quick, "n": n, "d": 128, "k": k, "runs": runs,
              "machine": {**machine_info(), "loadavg_before": load_before,
                          "loadavg_after": load_after},
              "cpu_contention": max(load_before[0], load_after[0], load_after[1]) / cores > 1.2}
    for r in runs:
        ext, rer = r["extend"], r["rerun"]
        print(f"{r['scenario']:<12} {r['rows']:,} rows ({r['new_rows']:,} new), "
              f"{r['classes']} classes: full {r['full_seconds']:.1f} s; rerun "
              f"{rer['seconds']:.1f} s ({rer['speedup']:.1f}x, equals full: "
              f"{rer['equals_full']}, {rer['classes']}); extend {ext['seconds']:.1f} s "
              f"({ext['speedup']:.1f}x, {ext['classes']}, F/F_full "
              + ", ".join(f"{f}: {v:.4f}" for f, v in ext["cut_value_ratio"].items()) + ")")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after on {cores} "
          "cores" + (": CPU contention, provisional" if result["cpu_contention"] else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("incremental-quick.json" if args.quick else "incremental.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
