"""Ingest throughput: the Ray Data path against a plain single-process loop, in one run.

Both sides run :func:`sas_ray.stages.ingest.ingest` on the same source into a fresh output:
The Ray executor maps the per-shard work (read, decode-check, write Parquet) over Ray Data
tasks; the local executor runs exactly the same per-shard function in a loop in this
process. Sources: the CIFAR-10 JPEG archive (``../shared/datasets/cifar10-jpeg.tar.gz``, its
gzip stream is decompressed on the driver either way) and the same 60,000 images extracted
into a temporary directory (the files are then read in the workers).

Ray is started and its workers warmed up (one small ingest) before any timing, so the times
are ingest throughput, not Ray's start-up. Ray runs its workers at nice 15 by default, so on a
machine shared with other jobs they yield to everything while the plain loop (nice 0) does
not; the benchmark starts Ray with ``RAY_worker_niceness=0`` (``--worker-niceness``) so both
sides compete on equal terms. Each side runs ``--repeats`` times, alternating,
and the best time counts. Targets (from the issue): the whole archive in under 60 s on
2 cores; on the directory the Ray path at least 1.3x the plain loop. The 1-minute load
average is recorded before and after: other jobs on the machine slow both sides, and a
parallel path more than a serial one (a job holding one of two cores leaves the plain loop
its core but the Ray path only one of its two). The CPU seconds of each side (this process
and all it started, i.e. Ray's workers) show what the work costs regardless of such
contention.

Usage: ``python -m benchmarks.ingest [--quick] [--archive PATH] [--repeats N]``; writes
``benchmarks/results/ingest.json`` (``ingest-quick.json`` with ``--quick``: one repeat).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray import RayExecutor
from sas_ray.executors.ray.session import cluster_cpus, ensure_ray
from sas_ray.stages.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every process it started (Ray's raylet,
    GCS and workers when Ray runs locally)."""
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def timed_ingest(source: str, out: Path, cfg: Config, parallel: bool) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds of one complete ingest (listing the source to committing
    the manifest), and the number of images."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, start = cpu_seconds(), time.perf_counter()
    executor = RayExecutor(cfg) if parallel else LocalExecutor(cfg)
    manifest = ingest(source, str(out), cfg, executor=executor, force=True)
    return time.perf_counter() - start, cpu_seconds() - cpu, manifest["meta"]["num_images"]


def compare(source: str, work: Path, cfg: Config, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` wall time (and that run's CPU time) and images/s of both sides,
    alternating plain and Ray."""
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "ray": []}
    images = 0
    for _ in range(repeats):
        for side in ("plain", "ray"):
            wall, cpu, images = timed_ingest(source, work / side, cfg, parallel=side == "ray")
            runs[side].append((round(wall, 2), round(cpu, 2)))
    (plain, plain_cpu), (ray, ray_cpu) = min(runs["plain"]), min(runs["ray"])
    return {"images": images, "plain_seconds": plain, "ray_seconds": ray,
            "plain_cpu_seconds": plain_cpu, "ray_cpu_seconds": ray_cpu,
            "plain_images_per_s": round(images / plain), "ray_images_per_s": round(images / ray),
            "ratio": round(plain / ray, 2), "all_runs_wall_cpu": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repeat per side")
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: "
                        "all cores)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default: 15)")
    args = parser.parse_args()
    if not args.archive.exists():
        raise SystemExit(f"CIFAR-10 archive not found at {args.archive}; pass --archive PATH")
    repeats = 1 if args.quick else args.repeats
    info = machine_info()
    cfg = Config()
    cfg.run.num_cpus = args.num_cpus
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 (Ray reads this name)
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # read when Ray Data is imported
    ensure_ray(cfg.run)
    with tempfile.TemporaryDirectory(prefix="sasray-ingest-bench-") as tmp:
        work = Path(tmp)
        timed_ingest("synthetic", work / "warmup", cfg, parallel=True)  # start Ray's workers
        with tarfile.open(args.archive) as tar:
            tar.extractall(work / "cifar10", filter="data")
        results = {
            "archive": compare(str(args.archive), work, cfg, repeats),
            "directory": compare(str(work / "cifar10"), work, cfg, repeats),
        }
    results.update({
        "whole_archive": {"seconds": results["archive"]["ray_seconds"],
                          "images": results["archive"]["images"]},
        "ratio_ray_vs_plain": results["directory"]["ratio"],
        "targets": {"whole_archive_seconds_below": 60, "directory_ratio_at_least": 1.3},
        "repeats": repeats,
        "ray_cpus": cluster_cpus(),
        "ray_worker_niceness": args.worker_niceness,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "machine": info,
        "command": "python -m benchmarks.ingest" + (" --quick" if args.quick else ""),
    })
    print(f"machine: {machine_line(info)}; load average at end {results['load_avg_1m_end']}")
    print(f"{'source':<10} {'images':>7} {'plain s':>8} {'(cpu s)':>8} {'plain img/s':>12} "
          f"{'ray s':>7} {'(cpu s)':>8} {'ray img/s':>10} {'ray/plain':>10}")
    for name in ("archive", "directory"):
        r = results[name]
        print(f"{name:<10} {r['images']:>7,} {r['plain_seconds']:>8.2f} "
              f"{r['plain_cpu_seconds']:>8.2f} {r['plain_images_per_s']:>12,} "
              f"{r['ray_seconds']:>7.2f} {r['ray_cpu_seconds']:>8.2f} "
              f"{r['ray_images_per_s']:>10,} {r['ratio']:>9.2f}x")
    seconds, ratio = results["whole_archive"]["seconds"], results["ratio_ray_vs_plain"]
    print(f"whole archive with Ray: {seconds:.1f} s (target < 60 s: "
          f"{'met' if seconds < 60 else 'NOT met'}); directory Ray/plain: {ratio:.2f}x "
          f"(target >= 1.3x: {'met' if ratio >= 1.3 else 'NOT met'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ingest{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
