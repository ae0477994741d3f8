"""SimCLR training throughput: the Ray Train loop against a plain PyTorch loop, and the new
training input path against today's, in one run.

Both loops train the same model (``--arch`` x ``--width``, CIFAR stem) on the same synthetic
train split with the same global batch, augmentations, optimiser and torch threads:

- plain: one process, ``torch.set_num_threads(threads)``, reads the shard table once, then
  per batch decodes the encoded images, draws two views and takes a step
  (:func:`sas_ray.core.training.loop.fit`, the same global shuffle per epoch);
- Ray: :func:`sas_ray.executors.ray.train.fit` with one worker of ``threads`` CPUs (the
  encoded images in Ray's object store; it decodes, augments and steps with the same core
  loop), or ``--workers`` workers splitting the same global batch.

Every loop keeps freed memory (:func:`~sas_ray.core.memory.keep_freed_memory`, as the
executors' training processes do; this process and the Ray worker), so the ratios isolate
Ray and the input path (``benchmarks.memory`` measures glibc's default apart).
Images/s are measured over the epochs after the first (warm-up) in both loops. Ray's
startup (``ray.init``, starting the trainer and workers, checkpoint writes: wall time
outside training epochs) is reported separately. Target: Ray/plain >= 0.85. The plain
loop runs before and after the Ray loop and the mean is used, to even out load drift.
The input path: the plain loop runs once more with *today's* input path, i.e. the code at
commit :data:`TODAY` (loaded from git): each batch decoded in the step's thread, then views
from the gather-based augmentation with a CPU generator (``nonzero`` per colour op). The new
path (:class:`~sas_ray.core.training.prefetch.TrainInput`, as both executors use it) decodes
the rows once when they fit in ``train.decoded_cache_mb`` (they do here), else
``train.prefetch`` batches ahead in a thread, and draws the views from per-image keys
without gathers. Both train the same model on the same batches; their img/s ratio is
reported (the new path's rate: the mean of its runs before and after Ray; at 32 px on a CPU
the model's step dominates, the views are ~4% of it), and, at 224 px on one core
(``torch.set_num_threads(1)``, decoding in the same thread), decode + two views per image for
both (target: new >= 2x today's).

Also reported: the share of an epoch spent decoding images in today's path, and the
vectorised per-image augmentation against per-image ``torchvision.transforms.v2``.

Usage: ``python -m benchmarks.train [--images 1024] [--epochs 3] [--batch 128]``; writes
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.core.data.augment import IMAGENET_MEAN, IMAGENET_STD, SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.memory import keep_freed_memory
from sas_ray.core.methods import build_method
from sas_ray.core.models.optim import build_optimizer
from sas_ray.core.seeding import seed_model
from sas_ray.core.training.loop import AfterStep, Precision, fit, method_step
from sas_ray.core.training.order import epoch_batches, steps_per_epoch
from sas_ray.core.training.prefetch import TrainInput, decoded_batches
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray.session import ensure_ray
from sas_ray.executors.ray.train import fit as ray_fit
from sas_ray.io.shards import read_table
from sas_ray.stages.ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TODAY = "a30499b"  # the last commit before keyed device-side views and prefetched decoding


def todays_augment() -> ModuleType | None:
    """``sas_ray/core/data/augment.py`` as it was at :data:`TODAY` (None outside a git
    checkout that has it)."""
    try:
        source = subprocess.run(["git", "show", f"{TODAY}:sas_ray/core/data/augment.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "todays_augment.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("todays_augment", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["todays_augment"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class TodaysViews:
    """Today's augmentation behind the new call ``aug(images, keys)``: the keys are ignored,
    the parameters come from one CPU generator per loop (as the old loop's)."""

    def __init__(self, old: ModuleType, new: SimCLRAugment, generator: torch.Generator) -> None:
        fields = {k: getattr(new, k) for k in old.SimCLRAugment.__dataclass_fields__}
        self.aug, self.generator = old.SimCLRAugment(**fields), generator

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.aug(images, self.generator)


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.run.num_cpus = max(2, args.threads * args.workers)
    cfg.model.arch, cfg.model.width = args.arch, args.width
    cfg.train.epochs, cfg.train.batch_size = args.epochs, args.batch
    cfg.train.num_workers = args.workers
    cfg.train.cpus_per_worker = float(args.threads)
    cfg.train.use_gpu = "false"
    return cfg


def plain_loop(cfg: Config, data: str, threads: int, today: ModuleType | None = None
               ) -> dict[str, Any]:
    """The baseline: the core loop (:func:`sas_ray.core.training.loop.fit`) in this process, no
    Ray, over the same global shuffle per epoch: with the new input path, or with today's
    (``today``: the old augmentation module; each batch decoded in the loop, timed)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    encoded = read_table(data, split="train", columns=["id", "image"]).column("image")
    seed_model(cfg.run.seed)
    model = build_method(cfg)
    batch, size = cfg.train.batch_size, cfg.data.image_size
    optimizer, scheduler = build_optimizer(model, cfg.train, steps_per_epoch(len(encoded), batch))
    augments = model.augments(size)
    if today is not None:
        generator = torch.Generator().manual_seed(cfg.run.seed)
        augments = [TodaysViews(today, a, generator) for a in augments]
    step = method_step(augments, optimizer, Precision.for_device(torch.device("cpu"), amp=False))
    startup = time.perf_counter() - start
    decode_s: list[float] = []

    def rows(epoch: int) -> Any:
        return (encoded.take(r).to_pylist()
                for r in epoch_batches(len(encoded), batch, cfg.run.seed, epoch))

    source = TrainInput(lambda positions: encoded.take(positions).to_pylist(), len(encoded),
                        size, prefetch=cfg.train.prefetch, cache_mb=cfg.train.decoded_cache_mb)

    def batches(epoch: int) -> Any:
        decode_s.append(0.0)
        if today is None:
            yield from source.batches(epoch_batches(len(encoded), batch, cfg.run.seed, epoch))
            return
        for images in rows(epoch):
            t = time.perf_counter()
            decoded = to_nchw(decode_images(images, size=size))
            decode_s[-1] += time.perf_counter() - t
            yield decoded

    after = AfterStep(model, steps_per_epoch(len(encoded), batch), cfg.train.epochs)
    state = fit(model, batches, step, optimizer, scheduler, range(cfg.train.epochs),
                seed=cfg.run.seed, device=torch.device("cpu"), callbacks=[after])
    epochs = [m | {"decode_s": d} for m, d in zip(state.history, decode_s, strict=True)]
    return {"startup_s": startup, "epochs": epochs}


def steady_rate(epochs: list[dict[str, Any]]) -> float:
    """Images/s over the epochs after the first."""
    later = epochs[1:] or epochs
    return sum(e["images"] for e in later) / sum(e["seconds"] for e in later)


def augment_rates(size: int, batch: int) -> dict[str, float]:
    """Images/s of the vectorised augmentation vs. per-image torchvision.transforms.v2."""
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    ours = SimCLRAugment(size=size)
    reference = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def rate(fn: Any, repeats: int = 3) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return repeats * batch / (time.perf_counter() - start)

    return {"vectorised": rate(lambda: ours(images)),
            "per_image_v2": rate(lambda: torch.stack([reference(im) for im in images]))}


def input_rates_224(today: ModuleType, n: int = 64, repeats: int = 5) -> dict[str, float]:
    """Decode + two views per image at 224 px on one core, img/s of CPU time (the calling
    thread's, so that other processes' load counts less): today's (serial ``decode_images``,
    gather-based views from a CPU generator) and the new path (:func:`decoded_batches`
    without prefetch, keyed views), interleaved, best of ``repeats``. JPEGs of 256 x 320."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((320, 256), Image.BICUBIC))
        buf = io.BytesIO()
        Image.fromarray(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255)
                        .astype(np.uint8)).save(buf, format="JPEG", quality=90)
        encoded.append(buf.getvalue())
    old, new = today.SimCLRAugment(size=224), SimCLRAugment(size=224)
    gen, keys = torch.Generator().manual_seed(0), torch.arange(n)

    def todays() -> None:
        x = to_nchw(decode_images(encoded, size=224))
        old.views(x, 2, gen)

    def news() -> None:
        (x,) = decoded_batches([encoded], 224, prefetch=0)
        new.views(x, 2, keys)

    best = {"today": 0.0, "new": 0.0}
    for _ in range(repeats):  # interleaved, best of: load changes slowly
        for name, fn in (("today", todays), ("new", news)):
            start = time.thread_time()  # this thread's CPU time: all the work runs in it
            fn()
            best[name] = max(best[name], n / (time.thread_time() - start))
    torch.set_num_threads(threads)
    return best | {"ratio": best["new"] / best["today"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="synthetic train images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="global batch size")
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--out", default=str(RESULTS / "train.json"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    machine = machine_info()
    print(machine_line(machine))
    cfg = make_config(args)
    keep_freed_memory()

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "shards")
        ingest_cfg = Config()
        ingest_cfg.data.synthetic_train_per_class = -(-args.images // 4)
        ingest_cfg.data.synthetic_test_per_class = 1
        ingest("synthetic", data, ingest_cfg, executor=LocalExecutor(ingest_cfg))

        today = todays_augment()
        plain_before = plain_loop(cfg, data, args.threads * args.workers)
        plain_today = None if today is None else plain_loop(cfg, data,
                                                            args.threads * args.workers, today)
        start = time.perf_counter()
        ensure_ray(cfg.run)
        ray_init_s = time.perf_counter() - start
        ray_run = ray_fit(cfg, data, os.path.join(tmp, "run"))
        plain_after = plain_loop(cfg, data, args.threads * args.workers)

    plain_rate = (steady_rate(plain_before["epochs"]) + steady_rate(plain_after["epochs"])) / 2
    ray_rate = steady_rate(ray_run["history"])
    aug = augment_rates(cfg.data.image_size, args.batch)
    todays_path = None
    if plain_today is not None:
        later = plain_today["epochs"][1:]
        today_rate = steady_rate(plain_today["epochs"])
        todays_path = {"commit": TODAY, "images_per_s": today_rate,
                       "decode_share": sum(e["decode_s"] for e in later)
                       / sum(e["seconds"] for e in later),
                       "ratio_new_over_today": plain_rate / today_rate,
                       "loss_last_epoch": plain_today["epochs"][-1]["loss"],
                       "input_224px_one_core": input_rates_224(today)}
    result = {
        "settings": vars(args) | {"image_size": cfg.data.image_size},
        "plain": {"images_per_s": plain_rate, "input_path": "new (prefetched, keyed views)",
                  "images_per_s_before_after": [steady_rate(plain_before["epochs"]),
                                                steady_rate(plain_after["epochs"])],
                  "startup_s": plain_before["startup_s"],
                  "loss_last_epoch": plain_before["epochs"][-1]["loss"]},
        "ray": {"images_per_s": ray_rate, "ray_init_s": ray_init_s,
                "startup_s": ray_run["startup_seconds"], "wall_s": ray_run["seconds"],
                "loss_last_epoch": ray_run["history"][-1]["loss"]},
        "plain_todays_input_path": todays_path,
        "ratio_ray_over_plain": ray_rate / plain_rate,
        "target_ratio": 0.85,
        "augment_images_per_s": aug,
        "machine": machine,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    print(f"\nSimCLR {args.arch} x{args.width}, {args.images} images, global batch {args.batch}, "
          f"{args.epochs} epochs, {args.workers} worker(s) x {args.threads} thread(s)")
    print(f"{'loop':<8}{'images/s':>10}{'startup s':>12}{'last loss':>11}")
    print(f"{'plain':<8}{plain_rate:>10.1f}{plain_before['startup_s']:>12.1f}"
          f"{result['plain']['loss_last_epoch']:>11.3f}")
    print(f"{'ray':<8}{ray_rate:>10.1f}{ray_init_s + ray_run['startup_seconds']:>12.1f}"
          f"{result['ray']['loss_last_epoch']:>11.3f}   (ray.init {ray_init_s:.1f} s + trainer "
          f"{ray_run['startup_seconds']:.1f} s)")
    print(f"ratio ray/plain: {result['ratio_ray_over_plain']:.2f} (target >= 0.85)")
    if todays_path is None:
        print(f"today's input path: not measured (no git commit {TODAY} here)")
    else:
        i224 = todays_path["input_224px_one_core"]
        print(f"today's input path ({TODAY}): {todays_path['images_per_s']:.1f} img/s, "
              f"decoding {100 * todays_path['decode_share']:.1f}% of its epoch; new/today "
              f"{todays_path['ratio_new_over_today']:.2f}x")
        print(f"decode + 2 views at 224 px, one core: today {i224['today']:.1f} img/s, new "
              f"{i224['new']:.1f} img/s ({i224['ratio']:.2f}x, target >= 2)")
    print(f"augmentation, batch {args.batch}: vectorised {aug['vectorised']:.0f} img/s, "
          f"per-image v2 {aug['per_image_v2']:.0f} img/s "
          f"({aug['vectorised'] / aug['per_image_v2']:.1f}x)")
    cores = machine["cores"]
    if max(machine["load_avg_1m"], result["load_avg_1m_after"]) > cores:
        print(f"note: load average {machine['load_avg_1m']} -> {result['load_avg_1m_after']} "
              f"exceeds {cores} cores: other processes slowed both loops")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
