"""SAS selection speed and memory, measured side by side in one run.

1. One class of 100,000 x 128 rows: ``sas`` on the numpy and the torch (CPU) backend, and with
   ``select.rank_limit 0.75``, against one blocked ``x @ x.T`` pass (4096-row blocks, the
   products only) on the same threads: the target is SAS <= 3x that pass. The orders of the
   two backends are compared.
2. 50,000 x 128 rows in 10 latent classes: ``sas`` against the public reference code's way of
   ranking: (a) its rule written with matrix products (``sas-reference``: blocked cosine
   products, negatives clipped, row sums, a sort per class) and (b) its kernel, cosine
   similarity by broadcasting over 1024 x 1024 blocks
   (``cosine_similarity(a[:, None], b[None], dim=-1)``). When (b) would take longer than
   ``--reference-budget`` seconds, a representative set of full blocks is timed and the total
   is extrapolated by block area (the output says so).
3. 1,000,000 x 128 rows end to end: latent classes by k-means (k=100, faiss when installed)
   then ``sas`` over the classes with the local executor's 2-process pool
   (``select.num_workers 2``), each phase timed, with the rise of the process's peak RSS.

Every time is given as wall time and as this process's CPU time (phase 3's pool workers are
other processes: wall only): on a machine shared with other jobs the wall time mostly
measures the others, while the CPU time bounds what the wall time would be on idle cores.
The load average before and after is recorded; under load the numbers are provisional.

Usage: ``python -m benchmarks.selection [--quick]``; writes ``benchmarks/results/selection.json``
(``selection-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.machine import machine_info
from sas_ray.config import Config, LatentConfig, SelectConfig
from sas_ray.core.selection.latent import faiss_available, latent_classes
from sas_ray.core.selection.reference import select_sas_reference
from sas_ray.core.selection.sas import select_sas
from sas_ray.executors.local import LocalExecutor

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


def blocked_gram_pass(x: np.ndarray, block: int = 4096) -> None:
    """One pass of ``x @ x.T`` in row blocks (the products only, nothing kept)."""
    for start in range(0, x.shape[0], block):
        x[start:start + block] @ x.T


def one_class(n: int, d: int) -> dict[str, Any]:
    """SAS on one class against one blocked ``x @ x.T`` pass, both backends."""
    x, _ = clustered_embeddings(n, d, 1, seed=2)
    latent = np.zeros(n, dtype=np.int64)
    pass_s, pass_cpu, _ = timed(blocked_gram_pass, x)
    runs = {}
    orders = {}
    for name, cfg in (("numpy", SelectConfig(backend="numpy")),
                      ("torch_cpu", SelectConfig(backend="torch", device="cpu")),
                      ("numpy_rank_limit_0.75", SelectConfig(backend="numpy", rank_limit=0.75))):
        wall, cpu, ranking = timed(select_sas, x, latent, None, 0, cfg)
        orders[name] = ranking.order
        runs[name] = {"seconds": wall, "cpu_seconds": cpu, "ratio_to_pass": wall / pass_s,
                      "cpu_ratio_to_pass": cpu / pass_cpu}
    same = orders["numpy"] == orders["torch_cpu"]
    m = int(0.75 * n + 0.5)
    return {"n": n, "d": d, "pass_seconds": pass_s, "pass_cpu_seconds": pass_cpu, "sas": runs,
            "torch_equals_numpy": bool(same.all()),
            "torch_numpy_first_difference": None if same.all() else int(np.argmin(same)),
            "rank_limit_prefix_equal": bool(np.array_equal(
                orders["numpy"][:m], orders["numpy_rank_limit_0.75"][:m])),
            "torch_threads": torch.get_num_threads()}


def end_to_end(n: int, d: int, k: int) -> dict[str, Any]:
    """k-means latent classes then SAS over them on the local executor's 2-process pool."""
    x, _ = clustered_embeddings(n, d, k, seed=3)
    cfg = Config()
    cfg.select.num_workers = 2
    rss_reset = reset_peak_rss()
    rss_before = psutil.Process().memory_info().rss
    latent_s, latent_cpu, part = timed(latent_classes, x, None,
                                       LatentConfig(method="kmeans", k=k), 0)
    map_classes = LocalExecutor(cfg).class_map(cfg.select.num_workers)
    sas_s, sas_cpu, ranking = timed(lambda: select_sas(x, part.classes, None, 0, cfg.select,
                                                       map_classes=map_classes))
    rss_extra = peak_rss() - rss_before
    assert np.array_equal(np.sort(ranking.order), np.arange(n))
    sizes = np.bincount(part.classes)
    return {"n": n, "d": d, "k": k, "kmeans": "faiss" if faiss_available() else "minibatch",
            "classes": int(part.num_classes), "class_sizes_min_max": [int(sizes.min()),
                                                                      int(sizes.max())],
            "latent_seconds": latent_s, "latent_cpu_seconds": latent_cpu,
            "sas_seconds": sas_s, "sas_driver_cpu_seconds": sas_cpu,
            "total_seconds": latent_s + sas_s, "workers": cfg.select.num_workers,
            "input_bytes": int(x.nbytes),
            "peak_rss_extra_bytes": rss_extra if rss_reset else None}


def print_table(result: dict[str, Any]) -> None:
    one, speed, e2e = result["one_class"], result["speed"], result["end_to_end"]
    rows = [("", "wall", "CPU", "")]
    rows.append((f"one blocked x @ x.T pass, {one['n']:,} x {one['d']}",
                 f"{one['pass_seconds']:.1f} s", f"{one['pass_cpu_seconds']:.1f} s", ""))
    for name, r in one["sas"].items():
        rows.append((f"  sas ({name}), one class", f"{r['seconds']:.1f} s",
                     f"{r['cpu_seconds']:.1f} s",
                     f"{r['ratio_to_pass']:.2f}x the pass (CPU {r['cpu_ratio_to_pass']:.2f}x)"
                     + ("; target <= 3x" if name == "numpy" else "")))
    rows.append(("  torch order == numpy order", str(one["torch_equals_numpy"]), "",
                 f"rank-limit prefix equal: {one['rank_limit_prefix_equal']}"))
    rows += [
        (f"sas, {speed['n']:,} x {speed['d']}, {speed['classes']} classes",
         f"{speed['sas_seconds']:.2f} s", f"{speed['sas_cpu_seconds']:.2f} s", ""),
        ("  reference kernel (broadcast cosine, 1024 blocks)",
         f"{speed['reference_broadcast_seconds']:.1f} s",
         f"{speed['reference_broadcast_cpu_seconds']:.1f} s",
         f"{speed['speedup_vs_reference']:.0f}x slower than sas; {speed['reference_how']}"),
        ("  reference rule with matrix products",
         f"{speed['sas_reference_blocked_seconds']:.2f} s",
         f"{speed['sas_reference_blocked_cpu_seconds']:.2f} s",
         f"sas takes {speed['sas_seconds'] / speed['sas_reference_blocked_seconds']:.1f}x it"),
        (f"end to end, {e2e['n']:,} x {e2e['d']}, k={e2e['k']} ({e2e['kmeans']} k-means)",
         f"{e2e['total_seconds']:.1f} s", "", "target < 120 s on 2 cores"),
        ("  latent k-means", f"{e2e['latent_seconds']:.1f} s",
         f"{e2e['latent_cpu_seconds']:.1f} s", f"{e2e['classes']} classes, sizes "
         f"{e2e['class_sizes_min_max'][0]}-{e2e['class_sizes_min_max'][1]}"),
        (f"  sas, {e2e['workers']} worker processes", f"{e2e['sas_seconds']:.1f} s", "", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, wall, cpu, note in rows:
        print(f"{name:<{width}}  {wall:>10}  {cpu:>9}  {note}")
    m = result["machine"]
    print(f"load average {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} "
          f"after, on {m['cpus']} cores: "
          + ("CPU contention: provisional numbers" if result["cpu_contention"]
             else "little contention"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--reference-budget", type=float, default=120.0,
                        help="run the reference in full only if estimated below this (s)")
    args = parser.parse_args()
    if args.quick:
        sizes = {"one": (20_000, 128), "speed": (10_000, 128, 10),
                 "e2e": (100_000, 128, 100)}
    else:
        sizes = {"one": (100_000, 128), "speed": (50_000, 128, 10),
                 "e2e": (1_000_000, 128, 100)}
    load_before = os.getloadavg()
    one = one_class(*sizes["one"])
    speed = speed_vs_reference(*sizes["speed"], budget_s=args.reference_budget)
    e2e = end_to_end(*sizes["e2e"])
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = max(load_before[0], load_after[0], load_after[1]) / cores
    result = {
        "quick": args.quick, "one_class": one, "speed": speed, "end_to_end": e2e,
        "targets": {"one_class_ratio_to_pass": 3, "speedup_vs_reference": 100,
                    "end_to_end_seconds": 120},
        "machine": {**machine_info(), "cpus": cores, "python": platform.python_version(),
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
