"""Embedding throughput: the Ray executor's actor pool against the local executor, in one run.

Both sides run the same stage, :func:`sas_ray.stages.embed.embed`, on the same train split with
the same encoder (a randomly initialised ``model.arch`` x ``model.width``; weights do not
change the cost), views, batches and per-example seeding, and at most the same total number
of torch threads; only the executor differs:

- local (:class:`~sas_ray.executors.local.LocalExecutor`): one process streams the planned
  batches through :func:`~sas_ray.stages.embed.decode_batch` (a thread, one batch ahead) and
  :class:`~sas_ray.stages.embed.EmbedBatch`. It runs with ``cores`` torch
  threads and with 1 thread, and the faster is the baseline: on a busy machine intra-op
  threads wait for each other at every operator (measured here under load: 2 threads at a
  third of the speed of 1), which would flatter the Ray path;
- Ray (:class:`~sas_ray.executors.ray.RayExecutor`): batch reader and decoder (CPU tasks) ->
  actor pool -> Parquet writer, with its default resources (on 2 cores: 2 actors x 1 thread).

Each side's fixed cost (planning, loading the encoder; for Ray also starting the actors,
which import torch) is measured as a whole run on a small data set, and its steady-state
rate is ``(N - n_small) / (t_full - t_small)``; ``ray.init`` is reported separately. Both
sides must write the same embeddings (checked). The target is a steady-state ratio
Ray/local >= 0.9 on 2 cores.

Usage: ``python -m benchmarks.embed [--images 10000] [--views 2] [--repeats 1]``; writes
``benchmarks/results/embed.json``. Runs alternate local/Ray and the best of ``--repeats`` is
kept. Other processes on the machine slow either side; the load average is recorded and a
note is printed when it exceeds the core count.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.core.models.heads import build_model
from sas_ray.executors.base import Executor
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray import RayExecutor
from sas_ray.executors.ray.session import ensure_ray
from sas_ray.io import storage
from sas_ray.io.artifacts import read_embeddings
from sas_ray.stages.embed import embed
from sas_ray.stages.ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"


def make_shards(out: str, images: int, cfg: Config) -> str:
    """Ingest ``images`` synthetic train images (plus a token test split) into ``out``."""
    data = Config()
    data.data.synthetic_classes = cfg.data.synthetic_classes
    data.data.synthetic_train_per_class = -(-images // data.data.synthetic_classes)
    data.data.synthetic_test_per_class = 1
    data.data.synthetic_size = cfg.data.image_size
    ingest("synthetic", out, data, executor=LocalExecutor(data))
    return out


def stage_run(executor: Executor, data: str, proxy: str, cfg: Config, out: str
              ) -> dict[str, Any]:
    """One :func:`embed` stage run on ``executor``; its wall time and the embeddings by id."""
    storage.delete(out)
    start = time.perf_counter()
    manifest = embed(cfg, data, proxy, out, executor=executor)
    seconds = time.perf_counter() - start
    emb = read_embeddings(out)
    return {"seconds": seconds, "images": int(emb.ids.size), "emb": emb.x,
            "threads": manifest["meta"]["threads"], "workers": manifest["meta"]["workers"]}


def rates(full: list[dict[str, Any]], small: list[dict[str, Any]]) -> dict[str, Any]:
    """Best full and small run of one side; steady-state rate (None when noise makes the
    small run slower than the full one) and end-to-end rate."""
    best, fixed = min(full, key=lambda r: r["seconds"]), min(r["seconds"] for r in small)
    n, n_small = best["images"], small[0]["images"]
    steady = (n - n_small) / (best["seconds"] - fixed) if best["seconds"] > fixed else None
    return {"threads": best["threads"], "workers": best["workers"],
            "stage_startup_s": round(fixed, 2), "seconds": round(best["seconds"], 2),
            "steady_images_per_s": steady and round(steady, 1),
            "end_to_end_images_per_s": round(n / best["seconds"], 1),
            "all_seconds": [round(r["seconds"], 2) for r in full],
            "all_startup_seconds": [round(r["seconds"], 2) for r in small]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--small-images", type=int, default=256,
                        help="size of the data set whose run measures a stage's fixed cost")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "embed.json"))
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    cfg = Config()
    cfg.embed.views, cfg.embed.batch_size = args.views, args.batch_size
    cfg.embed.num_actors = args.num_actors
    cfg.run.num_cpus = cores
    threads = {t: copy.deepcopy(cfg) for t in sorted({cores, 1}, reverse=True)}
    for t, c in threads.items():
        c.embed.threads = t
    machine = machine_info()
    print(machine_line(machine))
    with tempfile.TemporaryDirectory(prefix="sas-ray-bench-embed-") as tmp:
        torch.manual_seed(0)
        proxy = os.path.join(tmp, "proxy.pt")
        save_encoder(proxy, build_model(args.arch, width=args.width), cfg)
        big = make_shards(os.path.join(tmp, "big"), args.images, cfg)
        small = make_shards(os.path.join(tmp, "small"), args.small_images, cfg)

        start = time.perf_counter()
        ensure_ray(cfg.run)
        ray_init = time.perf_counter() - start
        ray_ex = RayExecutor(cfg)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            side: {"full": [], "small": []} for side in ("ray", *(f"local-{t}" for t in threads))}
        for _ in range(args.repeats):
            for side, executor, side_cfg in [
                    *((f"local-{t}", LocalExecutor(c), c) for t, c in threads.items()),
                    ("ray", ray_ex, cfg)]:
                for size, data in (("small", small), ("full", big)):
                    runs[side][size].append(stage_run(executor, data, proxy, side_cfg,
                                                      os.path.join(tmp, f"emb-{size}")))
        sides = {side: rates(r["full"], r["small"]) for side, r in runs.items()}
        locals_ = [sides[f"local-{t}"] for t in threads]
        best = max(locals_, key=lambda r: r["steady_images_per_s"] or 0.0)
        emb_ray = min(runs["ray"]["full"], key=lambda r: r["seconds"])["emb"]
        emb_local = runs[f"local-{best['threads']}"]["full"][0]["emb"]
        max_diff = float(np.abs(emb_ray - emb_local).max())
        identical = emb_ray.tobytes() == emb_local.tobytes()

    ray = sides["ray"]
    n = args.images
    load_after = round(os.getloadavg()[0], 2)
    steady = ray["steady_images_per_s"] and best["steady_images_per_s"] and \
        round(ray["steady_images_per_s"] / best["steady_images_per_s"], 3)
    result = {
        "machine": machine, "load_avg_1m_after": load_after,
        "settings": {"images": runs["ray"]["full"][0]["images"], "views": args.views,
                     "batch_size": args.batch_size, "arch": args.arch, "width": args.width,
                     "num_actors": args.num_actors, "threads_total": cores,
                     "repeats": args.repeats, "small_images": runs["ray"]["small"][0]["images"]},
        "local": best, "local_all": locals_, "ray": {"ray_init_s": round(ray_init, 2), **ray},
        "ratio_steady": steady,
        "ratio_end_to_end": round(ray["end_to_end_images_per_s"]
                                  / best["end_to_end_images_per_s"], 3),
        "max_abs_diff": max_diff, "identical": identical,
    }
    print(f"{n:,} images, {args.views} view(s), {args.arch} x{args.width}, batch "
          f"{args.batch_size}, {cores} threads in total")

    def line(name: str, r: dict[str, Any]) -> str:
        rate = r["steady_images_per_s"]
        text = f"{rate:8.1f} images/s steady" if rate else "steady rate not measurable"
        return (f"{name:<13}: {text}, {r['end_to_end_images_per_s']:.1f} end to end "
                f"({r['seconds']:.1f} s; stage startup {r['stage_startup_s']:.1f} s; "
                f"{r['workers']} x {r['threads']} thread(s))")

    for r in locals_:
        print(line("local", r))
    print(line("Ray", ray) + f", ray.init {ray_init:.1f} s")
    ratio_text = f"{steady:.2f}x" if steady else "n/a"
    print(f"ratio Ray/best local: {ratio_text} steady state (target >= 0.9), "
          f"{result['ratio_end_to_end']:.2f}x end to end; embeddings "
          f"{'identical' if identical else f'differ by up to {max_diff:.1e}'}")
    if max(machine["load_avg_1m"], load_after) > cores:
        print(f"note: load average {machine['load_avg_1m']} -> {load_after} exceeds {cores} "
              "cores: other processes shared the CPUs, so both rates are lower and noisier "
              "than on an idle machine")
    if max_diff > 1e-4:
        raise SystemExit(f"the two executors disagree (max |diff| {max_diff:.1e})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
