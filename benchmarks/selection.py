"""SAS selection speed and memory, measured side by side in one run.

1. 50,000 x 128 embeddings in 10 latent classes: ``sas`` (greedy over the whole ranking, every
   class) against the public reference code's way of getting there: cosine similarity by
   broadcasting over 1024 x 1024 blocks (``cosine_similarity(a[:, None], b[None], dim=-1)``),
   negatives clipped to 0, row sums, then a sort per class. When the reference would take
   longer than ``--reference-budget`` seconds, a representative set of full blocks is timed
   and the total is extrapolated by block area (the output says so).
2. 1,000,000 x 128 embeddings in 1,000 latent classes: wall time and peak extra memory of
   ``sas`` (the rise of the process's peak RSS in the timed run, and the tracemalloc peak of
   traced allocations in a second, untimed run).

Every time is given as wall time and as this process's CPU time: on a machine shared with
other jobs the wall time mostly measures the others, while the CPU time (all threads) bounds
what the wall time would be on idle cores.

Usage: ``python -m benchmarks.selection [--quick]``; writes ``benchmarks/results/selection.json``
(``selection-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from sas_ray.config import SelectConfig
from sas_ray.core.selection.reference import select_sas_reference
from sas_ray.core.selection.sas import select_sas

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 1024
GIB = 2**30


def clustered_embeddings(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows near one of k random directions (norm < 1, like mean view embeddings),
    and a class per row (balanced, shuffled); generated in chunks to stay small."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    latent = rng.permutation(np.arange(n) % k)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = slice(start, min(start + 100_000, n))
        chunk = centres[latent[rows]] + 1.5 * rng.standard_normal((x[rows].shape[0], d),
                                                                  dtype=np.float32)
        x[rows] = 0.9 * chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, latent.astype(np.int64)


def broadcast_cosine_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's pairwise similarity of two blocks: cosine by broadcasting."""
    return torch.nn.functional.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)


def reference_class(x: np.ndarray, blocks: list[tuple[int, int]] | None = None
                    ) -> tuple[float, float, float]:
    """Reference ranking of one class by broadcast blocks; returns (wall seconds, CPU
    seconds, block area covered in units of full 1024 x 1024 blocks). ``blocks`` limits it
    to those (i, j)."""
    t = torch.from_numpy(x)
    n = x.shape[0]
    starts = range(0, n, BLOCK)
    todo = blocks or [(i, j) for i in starts for j in starts]
    rowsum = torch.zeros(n)
    start, cpu = time.perf_counter(), time.process_time()
    for i, j in todo:
        sim = broadcast_cosine_block(t[i:i + BLOCK], t[j:j + BLOCK]).clamp_(min=0)
        rowsum[i:i + BLOCK] += sim.sum(dim=1)
    torch.argsort(rowsum, descending=True, stable=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    area = sum(min(BLOCK, n - i) * min(BLOCK, n - j) for i, j in todo) / BLOCK**2
    return wall, cpu, area


def full_area(sizes: np.ndarray) -> float:
    """Block area of the reference over classes of these sizes, in full-block units."""
    return float((sizes.astype(np.float64) ** 2).sum() / BLOCK**2)


def check_block_agrees(x: np.ndarray) -> float:
    """Max |broadcast cosine - matrix-product cosine| on one block (sanity check)."""
    a = torch.from_numpy(x[:BLOCK])
    want = broadcast_cosine_block(a, a).numpy()
    xn = x[:BLOCK] / np.linalg.norm(x[:BLOCK], axis=1, keepdims=True)
    return float(np.abs(want - xn @ xn.T).max())


def timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``fn(*args)``. On a shared
    machine the CPU time is the better estimate of the wall time on idle cores."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, out


def peak_rss() -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def speed_vs_reference(n: int, d: int, k: int, budget_s: float) -> dict[str, Any]:
    x, latent = clustered_embeddings(n, d, k, seed=0)
    cfg = SelectConfig()
    sas_s, sas_cpu, ranking = timed(select_sas, x, latent, None, 0, cfg)
    blocked_s, blocked_cpu, _ = timed(select_sas_reference, x, latent, None, 0, cfg)
    sizes = np.bincount(latent)
    area = full_area(sizes)
    first = x[latent == 0]
    probe_s, _, probe_area = reference_class(first, [(0, 0)])  # one block: estimate total
    if probe_s / probe_area * area <= budget_s:
        runs = [reference_class(x[latent == c]) for c in range(k)]
        ref_s, ref_cpu = sum(r[0] for r in runs), sum(r[1] for r in runs)
        how = "ran in full"
    else:
        starts = list(range(0, first.shape[0], BLOCK))
        sample = [(i, j) for i in starts[:2] for j in starts[:3]]  # 6 blocks of class 0
        sample_s, sample_cpu, sample_area = reference_class(first, sample)
        ref_s, ref_cpu = sample_s / sample_area * area, sample_cpu / sample_area * area
        how = (f"extrapolated from {len(sample)} timed blocks ({sample_area:.1f} of "
               f"{area:.1f} full-block areas, {sample_s:.1f} s)")
    return {"n": n, "d": d, "classes": k, "sas_seconds": sas_s, "sas_cpu_seconds": sas_cpu,
            "sas_reference_blocked_seconds": blocked_s,
            "sas_reference_blocked_cpu_seconds": blocked_cpu,
            "reference_broadcast_seconds": ref_s, "reference_broadcast_cpu_seconds": ref_cpu,
            "reference_how": how, "speedup_vs_reference": ref_s / sas_s,
            "cpu_speedup_vs_reference": ref_cpu / sas_cpu,
            "reference_block_max_abs_diff": check_block_agrees(first),
            "ranked_rows": int(ranking.order.size)}


def scale(n: int, d: int, k: int) -> dict[str, Any]:
    """Time ``sas`` (peak RSS rise measured in the same run), then run it again under
    tracemalloc for the peak of traced allocations (tracemalloc slows it about 2x)."""
    x, latent = clustered_embeddings(n, d, k, seed=1)
    cfg = SelectConfig()
    rss_reset = reset_peak_rss()
    rss_before = psutil.Process().memory_info().rss
    seconds, cpu, ranking = timed(select_sas, x, latent, None, 0, cfg)
    rss_extra = peak_rss() - rss_before
    assert np.array_equal(np.sort(ranking.order), np.arange(n))
    del ranking
    tracemalloc.start()
    traced_s, _, _ = timed(select_sas, x, latent, None, 0, cfg)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"n": n, "d": d, "classes": k, "input_bytes": int(x.nbytes), "sas_seconds": seconds,
            "sas_cpu_seconds": cpu, "tracemalloc_peak_bytes": traced_peak,
            "tracemalloc_run_seconds": traced_s,
            "peak_rss_extra_bytes": rss_extra if rss_reset else None,
            "peak_rss_note": "VmHWM reset before the run" if rss_reset else
            "could not reset VmHWM; RSS rise not measured"}


def print_table(result: dict[str, Any]) -> None:
    speed, big = result["speed"], result["scale"]
    extra = max(big["tracemalloc_peak_bytes"], big["peak_rss_extra_bytes"] or 0)
    rss = big["peak_rss_extra_bytes"]
    rows = [
        ("", "wall", "CPU", ""),
        (f"sas, {speed['n']:,} x {speed['d']}, {speed['classes']} classes",
         f"{speed['sas_seconds']:.2f} s", f"{speed['sas_cpu_seconds']:.2f} s", ""),
        ("reference (broadcast cosine, 1024 blocks)",
         f"{speed['reference_broadcast_seconds']:.1f} s",
         f"{speed['reference_broadcast_cpu_seconds']:.1f} s", speed["reference_how"]),
        ("  speed-up of sas over the reference", f"{speed['speedup_vs_reference']:.0f}x",
         f"{speed['cpu_speedup_vs_reference']:.0f}x", "target >= 100x"),
        ("sas-reference rule with matrix products",
         f"{speed['sas_reference_blocked_seconds']:.2f} s",
         f"{speed['sas_reference_blocked_cpu_seconds']:.2f} s", ""),
        (f"sas, {big['n']:,} x {big['d']}, {big['classes']:,} classes",
         f"{big['sas_seconds']:.1f} s", f"{big['sas_cpu_seconds']:.1f} s",
         f"target < 120 s (ratios {big['sas_seconds'] / 120:.2f} wall, "
         f"{big['sas_cpu_seconds'] / 120:.2f} CPU)"),
        ("  peak extra memory (tracemalloc)", f"{big['tracemalloc_peak_bytes'] / GIB:.2f} GiB",
         "", f"input itself {big['input_bytes'] / GIB:.2f} GiB"),
        ("  peak extra memory (RSS high-water rise)",
         "n/a" if rss is None else f"{rss / GIB:.2f} GiB", "",
         f"target < 2 GiB (ratio {extra / (2 * GIB):.2f})"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, wall, cpu, note in rows:
        print(f"{name:<{width}}  {wall:>10}  {cpu:>9}  {note}")
    machine = result["machine"]
    verdict = ("CPU contention likely inflated the times" if result["cpu_contention"]
               else "little contention")
    print(f"load average {machine['loadavg_before'][0]:.1f} before, "
          f"{machine['loadavg_after'][0]:.1f} after, on {machine['cpus']} cores: {verdict}; "
          "CPU = this process's CPU time, the better estimate of wall time on idle cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--reference-budget", type=float, default=120.0,
                        help="run the reference in full only if estimated below this (s)")
    args = parser.parse_args()
    if args.quick:
        sizes = {"speed": (10_000, 128, 10), "scale": (100_000, 128, 100)}
    else:
        sizes = {"speed": (50_000, 128, 10), "scale": (1_000_000, 128, 1_000)}
    load_before = os.getloadavg()
    speed = speed_vs_reference(*sizes["speed"], budget_s=args.reference_budget)
    big = scale(*sizes["scale"])
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = max(load_before[0], load_after[0], load_after[1]) / cores
    result = {
        "quick": args.quick, "speed": speed, "scale": big,
        "targets": {"speedup_vs_reference": 100, "scale_seconds": 120, "scale_extra_gib": 2},
        "machine": {"cpus": cores, "python": platform.python_version(),
                    "numpy": np.__version__, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "cpu_contention": busy > 1.2,
    }
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("selection-quick.json" if args.quick else "selection.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
