"""SimCLR training throughput: the Ray Train loop against a plain PyTorch loop, in one run.

Both loops train the same model (``--arch`` x ``--width``, CIFAR stem) on the same synthetic
train split with the same global batch, augmentations, optimiser and torch threads:

- plain: one process, ``torch.set_num_threads(threads)``, reads the shard table once, then
  per batch decodes the encoded images, draws two views and takes a step
  (:func:`sas_ray.core.training.loop.fit`, the same global shuffle per epoch);
- Ray: :func:`sas_ray.executors.ray.train.fit` with one worker of ``threads`` CPUs (the
  encoded images in Ray's object store; it decodes, augments and steps with the same core
  loop), or ``--workers`` workers splitting the same global batch.

Images/s are measured over the epochs after the first (warm-up) in both loops. Ray's
startup (``ray.init``, starting the trainer and workers, checkpoint writes: wall time
outside training epochs) is reported separately. Target: Ray/plain >= 0.85. The plain
loop runs before and after the Ray loop and the mean is used, to even out load drift.
Also reported: the share of an epoch spent decoding images (why the workers decode their
batches themselves rather than in extra Ray Data tasks, which would need CPUs of their own),
and the vectorised per-image augmentation against per-image ``torchvision.transforms.v2``.

Usage: ``python -m benchmarks.train [--images 1024] [--epochs 3] [--batch 128]``; writes
``benchmarks/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config
from sas_ray.core.data.augment import IMAGENET_MEAN, IMAGENET_STD, SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.methods import build_method
from sas_ray.core.models.optim import build_optimizer
from sas_ray.core.seeding import seed_model
from sas_ray.core.training.loop import AfterStep, Precision, fit, method_step
from sas_ray.core.training.order import epoch_batches, steps_per_epoch
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray.session import ensure_ray
from sas_ray.executors.ray.train import fit as ray_fit
from sas_ray.io.shards import read_table
from sas_ray.stages.ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.run.num_cpus = max(2, args.threads * args.workers)
    cfg.model.arch, cfg.model.width = args.arch, args.width
    cfg.train.epochs, cfg.train.batch_size = args.epochs, args.batch
    cfg.train.num_workers = args.workers
    cfg.train.cpus_per_worker = float(args.threads)
    cfg.train.use_gpu = "false"
    return cfg


def plain_loop(cfg: Config, data: str, threads: int) -> dict[str, Any]:
    """The baseline: the core loop (:func:`sas_ray.core.training.loop.fit`) in this process, no
    Ray, over the same global shuffle per epoch, timing the decoding of each batch."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    encoded = read_table(data, split="train", columns=["id", "image"]).column("image")
    seed_model(cfg.run.seed)
    model = build_method(cfg)
    batch = cfg.train.batch_size
    optimizer, scheduler = build_optimizer(model, cfg.train, steps_per_epoch(len(encoded), batch))
    step = method_step(model.augments(cfg.data.image_size), optimizer,
                       Precision.for_device(torch.device("cpu"), amp=False))
    startup = time.perf_counter() - start
    decode_s: list[float] = []

    def batches(epoch: int) -> Any:
        decode_s.append(0.0)
        for rows in epoch_batches(len(encoded), batch, cfg.run.seed, epoch):
            t = time.perf_counter()
            images = to_nchw(decode_images(encoded.take(rows).to_pylist(),
                                           size=cfg.data.image_size))
            decode_s[-1] += time.perf_counter() - t
            yield images

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

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "shards")
        ingest_cfg = Config()
        ingest_cfg.data.synthetic_train_per_class = -(-args.images // 4)
        ingest_cfg.data.synthetic_test_per_class = 1
        ingest("synthetic", data, ingest_cfg, executor=LocalExecutor(ingest_cfg))

        plain_before = plain_loop(cfg, data, args.threads * args.workers)
        start = time.perf_counter()
        ensure_ray(cfg.run)
        ray_init_s = time.perf_counter() - start
        ray_run = ray_fit(cfg, data, os.path.join(tmp, "run"))
        plain_after = plain_loop(cfg, data, args.threads * args.workers)

    plain_rate = (steady_rate(plain_before["epochs"]) + steady_rate(plain_after["epochs"])) / 2
    ray_rate = steady_rate(ray_run["history"])
    aug = augment_rates(cfg.data.image_size, args.batch)
    result = {
        "settings": vars(args) | {"image_size": cfg.data.image_size},
        "plain": {"images_per_s": plain_rate,
                  "decode_share": sum(e["decode_s"] for e in plain_before["epochs"][1:])
                  / sum(e["seconds"] for e in plain_before["epochs"][1:]),
                  "images_per_s_before_after": [steady_rate(plain_before["epochs"]),
                                                steady_rate(plain_after["epochs"])],
                  "startup_s": plain_before["startup_s"],
                  "loss_last_epoch": plain_before["epochs"][-1]["loss"]},
        "ray": {"images_per_s": ray_rate, "ray_init_s": ray_init_s,
                "startup_s": ray_run["startup_seconds"], "wall_s": ray_run["seconds"],
                "loss_last_epoch": ray_run["history"][-1]["loss"]},
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
    print(f"decoding takes {100 * result['plain']['decode_share']:.1f}% of a plain epoch "
          "(the Ray workers decode in-process too)")
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
