"""GPU check: training, embedding and selection rates on one device, no Ray, in minutes.

Measured on ``--device`` (auto: CUDA when torch sees it), each with the code the pipeline runs:

- SimCLR steps (:func:`sas_ray.core.training.loop.fit` with :func:`method_step`): ResNet-18 at
  32 px and ResNet-50 at 224 px, fed by the real input path: encoded images (PNG at 32 px,
  JPEG larger than 224 px, resized and centre-cropped) through
  :class:`~sas_ray.core.training.prefetch.TrainInput`: decoded once and gathered at 32 px (a
  CIFAR-sized set fits in memory), decoded per batch at 224 px (an ImageNet-sized one does
  not), 2 batches ahead by one thread per core, pinned memory on CUDA; two views drawn on
  the device, bf16 autocast where supported, channels-last and cuDNN autotuning
  (:func:`prepare_module`). Reported: img/s
  over the epoch after a warm-up epoch; the views' time alone on a device-resident batch and
  its share of the step's time (the views run on the same stream, before the forward); the
  decoder's img/s alone with the same threads (above the step rate: the input keeps up);
  for JPEGs, the alternative the issue names, ``torchvision.io.decode_jpeg`` on the device
  (nvJPEG on CUDA) with the resize and centre crop there: img/s, for the same batches.
- Embedding (:func:`~sas_ray.core.embedding.mean_view_embeddings`, ResNet-50 at 224 px, 2
  views per image keyed by (seed, id), bf16 on CUDA) from the same decoder: img/s.
- SAS (:func:`~sas_ray.core.selection.sas.select_sas`, ``select.backend: torch`` on the
  device): one class of 100k rows, and 1M rows in k=100 classes (the classes given, no
  k-means), 128-d clustered rows; beside one blocked ``x @ x.T`` pass over each class on
  the device (the ratio: SAS's cost in such passes).
- GPU utilisation: ``nvidia-smi`` sampled every 0.25 s during each measured phase (when
  present).

Sized for under 8 minutes on one H100/H200-class GPU (``--budget-s`` skips what is left after
it, with a note). ``--device cpu --quick`` runs the same code at toy sizes in under 2 minutes
(the smoke test). Writes ``benchmarks/results/gpu.json`` (``gpu-quick.json`` with
``--quick``) naming the hardware. Needs torch, torchvision, numpy and Pillow (Python 3.11+,
torch >= 2.3).

Usage: ``python -m benchmarks.gpu [--device auto|cuda|cpu] [--quick] [--compile]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import Config, SelectConfig
from sas_ray.core.data.augment import SimCLRAugment
from sas_ray.core.embedding import mean_view_embeddings
from sas_ray.core.methods import build_method
from sas_ray.core.models.optim import build_optimizer
from sas_ray.core.seeding import example_keys, seed_model, step_keys
from sas_ray.core.selection.sas import select_sas
from sas_ray.core.training.loop import Callback, Precision, fit, method_step, prepare_module
from sas_ray.core.training.prefetch import TrainInput, decoded_batches

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class TrainCase:
    name: str
    arch: str
    width: float
    size: int  # training image side
    stored: int  # side of the encoded images (decoded, resized and cropped to size)
    batch: int
    warmup: int  # steps of the warm-up epoch
    steps: int  # steps of the measured epoch
    pool: int  # distinct encoded images (cycled)
    cached: bool  # decoded once (a CIFAR-sized set fits), else decoded per batch (ImageNet)


@dataclass(frozen=True)
class Sizes:
    train: tuple[TrainCase, ...]
    embed_images: int
    embed_batch: int
    sas_class_rows: int
    sas_rows: int
    sas_k: int
    dim: int = 128


FULL = Sizes(
    train=(TrainCase("resnet18_32px", "resnet18", 1.0, 32, 32, 512, 10, 40, 8192, True),
           TrainCase("resnet50_224px", "resnet50", 1.0, 224, 256, 256, 5, 15, 1024, False)),
    embed_images=2048, embed_batch=256, sas_class_rows=100_000, sas_rows=1_000_000, sas_k=100)
QUICK = Sizes(
    train=(TrainCase("resnet18_32px", "resnet18", 0.125, 32, 32, 16, 1, 3, 64, True),
           TrainCase("resnet50_32px_from_jpeg", "resnet50", 0.125, 32, 72, 8, 1, 2, 16, False)),
    embed_images=16, embed_batch=8, sas_class_rows=1000, sas_rows=5000, sas_k=5)


# ---------------------------------------------------------------- inputs
def encoded_images(n: int, side: int, seed: int) -> list[bytes]:
    """``n`` smooth-plus-noise RGB images (photo-like file sizes): PNG up to 64 px (as CIFAR's
    shards), JPEG (quality 90) above."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (max(2, side // 16), max(2, side // 16), 3), np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        if side <= 64:
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        else:
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def cycled(n: int, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` batches of ``batch`` positions into ``n`` rows (a shuffle, repeated)."""
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(n), batch * steps))
    return [order[s * batch:(s + 1) * batch] for s in range(steps)]


def source(pool: list[bytes], size: int, threads: int, pin: bool, cached: bool) -> TrainInput:
    """The training input over ``pool`` (:class:`TrainInput`, as the executors build it)."""
    return TrainInput(lambda positions: [pool[i] for i in positions], len(pool), size,
                      prefetch=2, threads=threads, pin=pin, cache_mb=1 << 20 if cached else 0)


# ---------------------------------------------------------------- GPU utilisation
class GpuMonitor:
    """Samples ``nvidia-smi`` (utilisation %, memory MiB) every ``period`` s while running."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                line = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                     "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=5).stdout.strip()
                util, mem = (float(v) for v in line.split(",")[:2])
                self.samples.append((util, mem))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def start(self) -> None:
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def stop(self) -> dict[str, Any] | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return None
        util = [u for u, _ in self.samples]
        return {"mean_pct": round(float(np.mean(util)), 1), "max_pct": max(util),
                "max_memory_mib": max(m for _, m in self.samples), "samples": len(util)}


class MeasuredEpoch(Callback):
    """Samples the GPU during epoch 1 (the measured one) of :func:`fit`."""

    def __init__(self) -> None:
        self.monitor = GpuMonitor()
        self.utilisation: dict[str, Any] | None = None

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 1:
            self.monitor.start()

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        if epoch == 1:
            self.utilisation = self.monitor.stop()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- phases
def train_case(case: TrainCase, device: torch.device, threads: int, compile: bool
               ) -> dict[str, Any]:
    """SimCLR steps over the real input path (module docstring)."""
    cfg = Config()
    cfg.model.arch, cfg.model.width, cfg.data.image_size = case.arch, case.width, case.size
    cfg.train.batch_size = case.batch
    pool = encoded_images(case.pool, case.stored, seed=1)
    seed_model(0)
    model = prepare_module(build_method(cfg), device, compile).to(device)
    optimizer, scheduler = build_optimizer(model, cfg.train, case.steps)
    precision = Precision.for_device(device, amp=True)
    augments = model.augments(case.size)
    step = method_step(augments, optimizer, precision)
    pin = device.type == "cuda"
    train_input = source(pool, case.size, threads, pin, case.cached)

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        steps = case.warmup if epoch == 0 else case.steps
        return train_input.batches(cycled(len(pool), case.batch, steps, epoch))

    measured = MeasuredEpoch()
    state = fit(model, batches, step, optimizer, scheduler, range(2), seed=0, device=device,
                callbacks=[measured])
    epoch = state.history[1]
    step_s = epoch["seconds"] / epoch["steps"]

    # the views alone, on a batch already on the device
    images = next(iter(batches(0))).to(device)
    keys = step_keys(0, 0, 0, 0, case.batch, device)
    model.views(images, augments, keys)
    synchronize(device)
    start = time.perf_counter()
    reps = max(3, case.steps // 2)
    for r in range(reps):
        model.views(images, augments, step_keys(0, 0, r, 0, case.batch, device))
    synchronize(device)
    views_s = (time.perf_counter() - start) / reps

    # the decoder alone, same threads (what an uncached set needs per epoch)
    start = time.perf_counter()
    decoded = sum(b.shape[0] for b in decoded_batches(
        ([pool[i] for i in pos] for pos in cycled(len(pool), case.batch, case.steps, 7)),
        case.size, prefetch=2, threads=threads, pin=pin))
    decode_rate = decoded / (time.perf_counter() - start)
    on_device = None if case.stored <= 64 else device_decode_rate(
        pool, case.size, cycled(len(pool), case.batch, case.steps, 7), device)
    return {"arch": case.arch, "width": case.width, "image_size": case.size,
            "stored_size": case.stored, "batch": case.batch, "steps": case.steps,
            "decoded_once": case.cached,
            "precision": str(precision.dtype).replace("torch.", "") if precision.dtype
            else "float32", "compile": compile, "decode_threads": threads,
            "images_per_s": round(epoch["images_per_s"], 1),
            "step_ms": round(1e3 * step_s, 2), "views_ms": round(1e3 * views_s, 2),
            "augmentation_share": round(views_s / step_s, 3),
            "decode_images_per_s": round(decode_rate, 1),
            "device_decode_images_per_s": on_device,
            "loss_last_epoch": round(epoch["loss"], 4),
            "gpu_utilisation": measured.utilisation}


def device_decode_rate(pool: list[bytes], size: int, batches: list[np.ndarray],
                       device: torch.device) -> float | str:
    """JPEG ``pool`` decoded by ``torchvision.io.decode_jpeg`` on ``device`` a batch at a time,
    each image resized (bilinear, antialiased) to cover ``size`` and centre-cropped there, as
    :func:`~sas_ray.core.data.images.decode_image` does on the CPU: img/s, or why it could
    not run (an old torchvision, no nvJPEG)."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in pool]

    def batch(positions: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(positions), 3, size, size), dtype=torch.uint8, device=device)
        for j, image in enumerate(decode_jpeg([data[i] for i in positions], device=device)):
            height, width = image.shape[1:]
            scale = max(size / height, size / width)
            h, w = max(size, round(height * scale)), max(size, round(width * scale))
            resized = F.interpolate(image[None].float(), size=(h, w), mode="bilinear",
                                    antialias=True, align_corners=False)[0]
            top, left = (h - size) // 2, (w - size) // 2
            out[j] = resized[:, top:top + size, left:left + size].round_().clamp_(0, 255)
        return out

    try:
        batch(batches[0])
        synchronize(device)
        start = time.perf_counter()
        decoded = sum(batch(positions).shape[0] for positions in batches)
        synchronize(device)
    except (RuntimeError, TypeError) as err:  # no batched decode_jpeg, or no nvJPEG
        return f"not measured: {type(err).__name__}: {err}"[:200]
    return round(decoded / (time.perf_counter() - start), 1)


def embed_phase(sizes: Sizes, case: TrainCase, device: torch.device, threads: int
                ) -> dict[str, Any]:
    """Mean view embeddings (2 views, keyed by (seed, id)) of decoded batches."""
    cfg = Config()
    cfg.model.arch, cfg.model.width, cfg.data.image_size = case.arch, case.width, case.size
    seed_model(0)
    encoder = prepare_module(build_method(cfg).encoder, device).to(device).eval()
    augment = SimCLRAugment(size=case.size)
    pool = encoded_images(min(sizes.embed_images, 512), case.stored, seed=2)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    steps = -(-sizes.embed_images // sizes.embed_batch)

    def run(steps: int) -> tuple[int, float]:
        done, start = 0, time.perf_counter()
        for images in decoded_batches(([pool[i] for i in pos] for pos in cycled(
                len(pool), sizes.embed_batch, steps, 3)), case.size, prefetch=2,
                threads=threads, pin=device.type == "cuda"):
            ids = torch.arange(done, done + images.shape[0])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                emb = mean_view_embeddings(encoder, images.to(device, non_blocking=True),
                                           augment, 2, "projection",
                                           example_keys(ids, 0).to(device))
            emb.cpu()
            done += images.shape[0]
        return done, time.perf_counter() - start

    run(1)  # warm-up (cuDNN autotuning)
    monitor = GpuMonitor()
    monitor.start()
    done, seconds = run(steps)
    return {"arch": case.arch, "width": case.width, "image_size": case.size, "views": 2,
            "batch": sizes.embed_batch, "images": done, "bf16": amp,
            "images_per_s": round(done / seconds, 1), "gpu_utilisation": monitor.stop()}


def clustered(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows of norm 0.9 near one of ``k`` random directions, and their classes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    latent = rng.permutation(np.arange(n) % k).astype(np.int64)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = slice(start, min(start + 100_000, n))
        chunk = centres[latent[rows]] + 1.5 * rng.standard_normal((len(latent[rows]), d),
                                                                  dtype=np.float32)
        x[rows] = 0.9 * chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, latent


def gram_pass_s(x: np.ndarray, device: torch.device, block: int = 8192) -> float:
    """Seconds of one blocked ``x @ x.T`` pass on ``device`` (each block reduced, not kept)."""
    t = torch.from_numpy(x).to(device)
    synchronize(device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for i in range(0, len(t), block):
        total += (t[i:i + block] @ t.T).sum()
    float(total)
    return time.perf_counter() - start


def sas_phase(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """SAS on the torch backend: one large class, then many classes."""
    cfg = SelectConfig(backend="torch", device=device.type)
    out: dict[str, Any] = {"backend": "torch", "device": device.type, "dim": sizes.dim}
    for name, n, k in (("one_class", sizes.sas_class_rows, 1),
                       ("many_classes", sizes.sas_rows, sizes.sas_k)):
        x, latent = clustered(n, sizes.dim, k, seed=4)
        if k == 1:
            latent[:] = 0
        monitor = GpuMonitor()
        monitor.start()
        start = time.perf_counter()
        ranking = select_sas(x, latent, None, 0, cfg)
        seconds = time.perf_counter() - start
        util = monitor.stop()
        gram_s = sum(gram_pass_s(x[latent == c], device) for c in range(k))
        out[name] = {"rows": n, "classes": k, "seconds": round(seconds, 2),
                     "ranked": len(ranking.order),
                     "gram_pass_s": round(gram_s, 3), "ratio_to_gram_pass": round(
                         seconds / gram_s, 2), "gpu_utilisation": util}
    return out


# ---------------------------------------------------------------- main
def hardware(device: torch.device) -> dict[str, Any]:
    info = machine_info()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
        if shutil.which("nvidia-smi"):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                capture_output=True, text=True).stdout.strip()
    else:
        info["device_name"] = f"CPU: {info['cpu']} ({info['cores']} cores)"
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="toy sizes (a smoke run)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    parser.add_argument("--threads", type=int, default=0,
                        help="decoding threads (0: every core)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip the phases that would start after this many seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                      else "cpu")
    device = torch.device(name)
    sizes = QUICK if args.quick else FULL
    threads = args.threads or len(os.sched_getaffinity(0))
    out = Path(args.out or RESULTS / ("gpu-quick.json" if args.quick else "gpu.json"))
    start = time.perf_counter()
    result: dict[str, Any] = {"hardware": hardware(device), "device": name,
                              "quick": args.quick, "sizes": dataclasses.asdict(sizes),
                              "train": {}, "notes": []}
    print(machine_line(result["hardware"]), f"| device {result['hardware']['device_name']}",
          flush=True)

    def due(phase: str) -> bool:
        if time.perf_counter() - start < args.budget_s:
            return True
        result["notes"].append(f"{phase} skipped: --budget-s {args.budget_s:g} spent")
        return False

    for case in sizes.train:
        if due(case.name):
            result["train"][case.name] = r = train_case(case, device, threads, args.compile)
            print(f"train {case.name}: {r['images_per_s']:.0f} img/s, step {r['step_ms']} ms, "
                  f"views {r['views_ms']} ms ({100 * r['augmentation_share']:.1f}%), decoder "
                  f"{r['decode_images_per_s']:.0f} img/s (decode_jpeg on the device: "
                  f"{r['device_decode_images_per_s']}), GPU {r['gpu_utilisation']}",
                  flush=True)
    if due("embed"):
        result["embed"] = r = embed_phase(sizes, sizes.train[-1], device, threads)
        print(f"embed {r['arch']} {r['image_size']} px: {r['images_per_s']:.0f} img/s",
              flush=True)
    if due("sas"):
        result["sas"] = r = sas_phase(sizes, device)
        for key in ("one_class", "many_classes"):
            print(f"sas {key} ({r[key]['rows']} rows, {r[key]['classes']} classes): "
                  f"{r[key]['seconds']} s (a blocked x @ x.T pass: {r[key]['gram_pass_s']} s)",
                  flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if device.type != "cuda":
        result["notes"].append("not a GPU run: CPU rates of the same code")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
