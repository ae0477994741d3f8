"""glibc's default malloc against :func:`~sas_ray.core.memory.keep_freed_memory`, in one run.

Three workloads, each run for ``--seconds`` in a fresh process per side (so one side's heap
cannot help the other), the two sides interleaved and each workload run ``--repeats`` times:

* ``train-b128`` / ``train-b256``: SimCLR steps (:func:`~sas_ray.core.training.loop.
  method_step`: two keyed views, forward, backward, SGD) of ResNet-10 x0.25 on 32 px images,
  batch 128 / 256, the settings of ``configs/replicate_cifar10_cpu.yaml`` and its pilot;
* ``embed-224``: the embed stage's work per batch
  (:func:`~sas_ray.core.embedding.mean_view_embeddings`: two keyed views, eval forward) of
  ResNet-18 at 224 px, batch 32.

Per run: img/s after warm-up steps (the heap reaches its size in the first few), minor page
faults per step, kernel and user CPU seconds, peak resident set (VmHWM). Both sides use
``torch.set_num_threads(cores)``. The ratio is keep / default img/s (best run of each side).

Usage: ``python -m benchmarks.memory [--quick]``; writes ``benchmarks/results/memory.json``
(``memory-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks.machine import machine_info
from benchmarks.selection import RESULTS, peak_rss

WORKLOADS = ("train-b128", "train-b256", "embed-224")
WARMUP_STEPS = 5


def workload(name: str) -> tuple[Any, int]:
    """A function running one step of ``name``, and the images per step."""
    import torch

    from sas_ray.config import Config, apply
    from sas_ray.core.data.augment import SimCLRAugment
    from sas_ray.core.embedding import mean_view_embeddings
    from sas_ray.core.methods.registry import build_method
    from sas_ray.core.training.loop import Precision, method_step

    torch.manual_seed(0)
    if name.startswith("train"):
        batch = int(name.removeprefix("train-b"))
        cfg = apply(Config(), {"model.arch": "resnet10", "model.width": 0.25,
                               "data.image_size": 32})
        method = build_method(cfg)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
        step = method_step([SimCLRAugment(size=32)] * 2, optimizer, Precision(torch.device("cpu")))
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        keys = torch.arange(batch)
        return lambda i: step(method, images, keys + i * batch), batch
    cfg = apply(Config(), {"model.arch": "resnet18", "data.image_size": 224})
    encoder = build_method(cfg).encoder.eval()
    augment = SimCLRAugment(size=224)
    images = torch.randint(0, 256, (32, 3, 256, 256), dtype=torch.uint8)

    def embed(i: int) -> None:
        with torch.no_grad():
            mean_view_embeddings(encoder, images, augment, 2, "backbone", torch.arange(32) + i)

    return embed, 32


def child(name: str, keep: bool, seconds: float) -> dict[str, Any]:
    """One side of one workload, in this (fresh) process."""
    import torch

    from sas_ray.core import machine
    from sas_ray.core.memory import keep_freed_memory

    torch.set_num_threads(machine.cores())
    kept = keep_freed_memory() if keep else False
    run, per_step = workload(name)
    for i in range(WARMUP_STEPS):
        run(i)
    before, start, steps = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run(WARMUP_STEPS + steps)
        steps += 1
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"workload": name, "keep": keep, "kept": kept, "steps": steps,
            "images_per_s": steps * per_step / wall,
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "system_s": after.ru_stime - before.ru_stime,
            "user_s": after.ru_utime - before.ru_utime, "wall_s": wall,
            "peak_rss_mib": peak_rss() / 2**20}


def measure(name: str, keep: bool, seconds: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", name,
                          "--keep" if keep else "--default", "--seconds", str(seconds)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per run, one repeat")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    side.add_argument("--default", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.keep, args.seconds)))
        return
    seconds, repeats = (3.0, 1) if args.quick else (args.seconds, args.repeats)
    info = machine_info()
    runs = [measure(name, keep, seconds) for _ in range(repeats) for name in WORKLOADS
            for keep in (False, True)]
    results: dict[str, Any] = {}
    for name in WORKLOADS:
        sides = {}
        for keep, label in ((False, "default"), (True, "keep")):
            mine = [r for r in runs if r["workload"] == name and r["keep"] == keep]
            sides[label] = max(mine, key=lambda r: r["images_per_s"])
        ratio = sides["keep"]["images_per_s"] / sides["default"]["images_per_s"]
        results[name] = sides | {"ratio_keep_over_default": ratio}
        d, k = sides["default"], sides["keep"]
        print(f"{name}: default {d['images_per_s']:.1f} img/s ({d['minor_faults_per_step']:.0f} "
              f"faults/step, {d['system_s']:.1f} s kernel, peak {d['peak_rss_mib']:.0f} MiB) vs "
              f"keep {k['images_per_s']:.1f} img/s ({k['minor_faults_per_step']:.0f} faults/step, "
              f"{k['system_s']:.1f} s kernel, peak {k['peak_rss_mib']:.0f} MiB): {ratio:.2f}x")
    info["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    out = RESULTS / f"memory{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"machine": info, "settings": {
        "seconds": seconds, "repeats": repeats, "warmup_steps": WARMUP_STEPS},
        "workloads": results, "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
