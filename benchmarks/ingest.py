"""Ingest throughput and memory: Ray against a plain process pool of equal parallelism.

Both sides run :func:`sas_ray.stages.ingest.ingest` on the same source into a fresh output,
so they do exactly the same work (stream the source, check every image, write Parquet,
verify the footers, commit): the Ray executor runs the per-shard function as Ray tasks;
the baseline is an executor whose ``map_blocks`` runs the same function on a
``concurrent.futures`` process pool of ``--workers`` processes (default: as many as Ray's
CPUs), with the same bound on blocks in flight (2 per worker). Sources: the CIFAR-10 JPEG
archive (``../shared/datasets/cifar10-jpeg.tar.gz``; its gzip stream is read on the driver
either way) and the same 60,000 images extracted into a temporary directory (the files are
then read in the workers).

Ray is started and the pool's processes spawned, and both warmed up with one small ingest,
before any timing, so the times are ingest throughput, not start-up. Ray's workers run at
nice 0 (``--worker-niceness``; Ray's default is 15), as the pool's do. Each side runs
``--repeats`` times, alternating, and the best time counts, with that run's CPU seconds
(this process and every process it started).

Memory: ``peak_rss`` runs the archive's ingest with the local executor (one process) in a
fresh interpreter and reports its peak RSS above the interpreter's RSS after importing
sas-ray's ingest (target: < 1 GiB); each timed run also records the peak RSS of the whole
process tree (driver, pool or Ray processes) above its level before the run, sampled every
50 ms (Ray's workers map shared object-store pages, so that sum over-counts). The 1-minute
load average is recorded before and after: with other jobs on the machine the numbers are
provisional (``provisional`` is true when the load at the start exceeded half the cores).

Usage: ``python -m benchmarks.ingest [--quick] [--archive PATH] [--repeats N]``; writes
``benchmarks/results/ingest.json`` (``ingest-quick.json`` with ``--quick``: one repeat).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import psutil

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.executors.base import BlockFn
from sas_ray.executors.ray import RayExecutor
from sas_ray.executors.ray.session import cluster_cpus, ensure_ray
from sas_ray.stages.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
PEAK_SCRIPT = """
import json, sys
import psutil
from sas_ray.config import Config
from sas_ray.executors.local import LocalExecutor
from sas_ray.stages.ingest import ingest

def high_water_mib():  # VmHWM: unlike ru_maxrss, not inherited from the parent over fork/exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

cfg = Config()
before = psutil.Process().memory_info().rss / 2**20
ingest(sys.argv[1], sys.argv[2], cfg, executor=LocalExecutor(cfg))
print(json.dumps({"interpreter_mib": before, "peak_mib": high_water_mib()}))
"""


class PoolExecutor:
    """The baseline: ``map_blocks`` on a process pool (the only executor method ingest uses),
    at most two blocks per worker in flight."""

    name = "pool"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def map_blocks(self, fn: BlockFn, blocks: Iterable[Any]) -> Iterator[dict[str, Any]]:
        pending: set[Future[Any]] = set()
        for block in blocks:
            if len(pending) >= 2 * self.workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from future.result().to_pylist()
            pending.add(self.pool.submit(fn, block))
        for future in wait(pending).done:
            yield from future.result().to_pylist()


def tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every live process it started (the
    pool's workers; Ray's raylet, GCS and workers when Ray runs locally)."""
    total = 0.0
    for proc in tree():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def tree_rss() -> int:
    total = 0
    for proc in tree():
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@contextlib.contextmanager
def peak_tree_rss(every_s: float = 0.05) -> Iterator[dict[str, float]]:
    """``{"peak_mib": ...}``: the process tree's peak RSS above its level at entry."""
    base, peak, stop = tree_rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            peak[0] = max(peak[0], tree_rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out: dict[str, float] = {}
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak_mib"] = round(max(peak[0] - base, 0) / 2**20, 1)


def timed_ingest(source: str, out: Path, cfg: Config, executor: Any) -> dict[str, float]:
    """Wall and CPU seconds and peak tree RSS of one complete ingest, and its images."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, start = cpu_seconds(), time.perf_counter()
    with peak_tree_rss() as mem:
        manifest = ingest(source, str(out), cfg, executor=executor, force=True)
    return {"wall": round(time.perf_counter() - start, 2), "cpu": round(cpu_seconds() - cpu, 2),
            "peak_tree_mib": mem["peak_mib"], "images": manifest["meta"]["num_images"]}


def compare(source: str, work: Path, cfg: Config, executors: dict[str, Any],
            repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` wall time (with that run's CPU time and peak memory) and images/s
    of each side, alternating."""
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in executors}
    for _ in range(repeats):
        for side, executor in executors.items():
            runs[side].append(timed_ingest(source, work / side, cfg, executor))
    best = {side: min(r, key=lambda run: run["wall"]) for side, r in runs.items()}
    images = best["ray"]["images"]
    out: dict[str, Any] = {"images": images}
    for side, run in best.items():
        out.update({f"{side}_seconds": run["wall"], f"{side}_cpu_seconds": run["cpu"],
                    f"{side}_images_per_s": round(images / run["wall"]),
                    f"{side}_peak_tree_mib": run["peak_tree_mib"]})
    out["ratio"] = round(best["pool"]["wall"] / best["ray"]["wall"], 2)
    out["all_runs"] = runs
    return out


def peak_rss(archive: Path, work: Path) -> dict[str, float]:
    """Peak RSS of the archive's ingest (local executor) in a fresh interpreter, above its
    RSS after the imports."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(archive), str(work)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    peak = json.loads(result.stdout.strip().splitlines()[-1])
    return {"interpreter_mib": round(peak["interpreter_mib"], 1),
            "peak_mib": round(peak["peak_mib"], 1),
            "above_interpreter_mib": round(peak["peak_mib"] - peak["interpreter_mib"], 1)}


def check_costs(archive: Path, n: int = 4096) -> dict[str, float]:
    """CPU microseconds per image of ingest's check and of a full PIL decode (CIFAR JPEGs)."""
    from PIL import Image

    from sas_ray.core.data.images import check_image
    from sas_ray.core.data.sources import open_source

    data = [d for _, d in itertools.islice(open_source(str(archive)).stream(), n)]

    def full(d: bytes) -> None:
        with Image.open(io.BytesIO(d)) as im:
            im.load()

    out = {}
    for name, fn in (("check_image", check_image), ("full_decode", full)):
        start = time.process_time()
        for d in data:
            fn(d)
        out[f"{name}_us"] = round((time.process_time() - start) / n * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one repeat per side")
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: "
                        "all cores)")
    parser.add_argument("--workers", type=int, default=None,
                        help="baseline pool processes (default: Ray's CPUs)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default: 15)")
    args = parser.parse_args()
    if not args.archive.exists():
        raise SystemExit(f"CIFAR-10 archive not found at {args.archive}; pass --archive PATH")
    repeats = 1 if args.quick else args.repeats
    info = machine_info()
    load_start = round(os.getloadavg()[0], 2)
    cfg = Config()
    cfg.run.num_cpus = args.num_cpus
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # noqa: SIM112 (Ray reads this name)
    with tempfile.TemporaryDirectory(prefix="sasray-ingest-bench-") as tmp:
        work = Path(tmp)
        memory = peak_rss(args.archive, work / "peak")  # before Ray and the pool exist
        costs = check_costs(args.archive)
        ensure_ray(cfg.run)
        workers = args.workers or int(cluster_cpus())
        executors = {"pool": PoolExecutor(workers), "ray": RayExecutor(cfg)}
        for side, executor in executors.items():  # start Ray's workers, spawn the pool's
            timed_ingest("synthetic", work / f"warm-{side}", cfg, executor)
        with tarfile.open(args.archive) as tar:
            tar.extractall(work / "cifar10", filter="data")
        results = {
            "archive": compare(str(args.archive), work, cfg, executors, repeats),
            "directory": compare(str(work / "cifar10"), work, cfg, executors, repeats),
        }
        executors["pool"].pool.shutdown()
    load_end = round(os.getloadavg()[0], 2)
    cores = os.cpu_count() or 1
    results.update({
        "whole_archive": {"seconds": results["archive"]["ray_seconds"],
                          "images": results["archive"]["images"]},
        "ratio_ray_vs_plain": results["directory"]["ratio"],
        "peak_rss": memory,
        "check_per_image": costs,
        "targets": {"whole_archive_seconds_below": 60, "peak_rss_above_interpreter_mib": 1024},
        "baseline": f"process pool of {workers} (spawned), same ingest stage",
        "repeats": repeats,
        "ray_cpus": cluster_cpus(),
        "pool_workers": workers,
        "ray_worker_niceness": args.worker_niceness,
        "load_avg_1m_start": load_start,
        "load_avg_1m_end": load_end,
        "provisional": load_start > cores / 2,
        "machine": info,
        "command": "python -m benchmarks.ingest" + (" --quick" if args.quick else ""),
    })
    print(f"machine: {machine_line(info)}; load average {load_start} -> {load_end}"
          + (" (PROVISIONAL: the machine was busy)" if results["provisional"] else ""))
    print(f"{'source':<10} {'images':>7} {'pool s':>7} {'(cpu s)':>8} {'pool img/s':>11} "
          f"{'ray s':>7} {'(cpu s)':>8} {'ray img/s':>10} {'pool/ray':>9} "
          f"{'peak MiB pool/ray':>18}")
    for name in ("archive", "directory"):
        r = results[name]
        print(f"{name:<10} {r['images']:>7,} {r['pool_seconds']:>7.2f} "
              f"{r['pool_cpu_seconds']:>8.2f} {r['pool_images_per_s']:>11,} "
              f"{r['ray_seconds']:>7.2f} {r['ray_cpu_seconds']:>8.2f} "
              f"{r['ray_images_per_s']:>10,} {r['ratio']:>8.2f}x "
              f"{r['pool_peak_tree_mib']:>8.0f}/{r['ray_peak_tree_mib']:.0f}")
    above = memory["above_interpreter_mib"]
    print(f"archive ingest in one process: peak RSS {memory['peak_mib']:.0f} MiB, "
          f"{above:.0f} MiB above the interpreter (target < 1024: "
          f"{'met' if above < 1024 else 'NOT met'}); check {costs['check_image_us']} us/image "
          f"vs full decode {costs['full_decode_us']} us")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ingest{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
