"""Replicate the SAS paper's claims on CIFAR-10 with the Ray-free core of sas-ray.

    python -m benchmarks.replicate --scale cpu --time-budget 60 --out runs/replicate-cpu
    python -m benchmarks.replicate --scale gpu --device cuda --out runs/replicate-gpu
    python -m benchmarks.replicate --out runs/replicate-cpu --report-only

Steps (everything cached or resumable under ``--out``):

1. Read CIFAR-10 from the ImageFolder tar (:mod:`sas_ray.core.data.sources`), decode with
   :func:`sas_ray.core.data.images.decode_images`; the pool is a stratified subset of the train
   split (or all of it), the test split is only ever used for the final evaluation.
2. Proxy: a short SimCLR run (:mod:`sas_ray.core.training.loop`) of a narrow ResNet on the pool.
3. Embeddings: mean unit-normalised projections of ``views`` augmented views per image.
4. Latent classes (:mod:`sas_ray.core.selection.latent`): true labels, 1% labels + linear
   classifier, k-means.
5. Rankings from :data:`sas_ray.core.selection.registry.SELECTORS`; a subset is a prefix.
6. SimCLR on every (latent, strategy, fraction, seed) subset with the same epochs, then
   linear probe + kNN (:mod:`sas_ray.core.evaluation`) at the final epoch on the test split.
   Each run writes ``runs/<name>.json`` atomically and is skipped when present.
7. Forgetting events (Toneva et al.) of a small supervised ResNet on the pool images
   (:func:`sas_ray.core.selection.supervised.forgetting_events`); SimCLR on the least vs the most
   forgettable examples of each class, and the Spearman correlation of SAS's within-class
   order with the forgetting counts.
8. ``report.md`` with an accuracy-vs-fraction plot per latent method (and, with ``--doc``,
   the block between the replicate markers of a Markdown file, its plots in the folder named
   like the file) from whatever runs have finished: ``--report-only`` just rewrites it.

Runs are taken in priority order (latent labels: full data, then sas / random /
sas-reference at the first two fractions; then the forgetting comparison; then the other
baselines, fractions and latent methods), seeds innermost-first so that a cut-off
``--time-budget`` leaves every tier with as many seeds as possible. Imports no Ray,
pyarrow or PyYAML: it runs where only torch, torchvision, numpy and PIL are installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.machine import machine_info, machine_line
from sas_ray.config import EvalConfig, LatentConfig, SelectConfig, TrainConfig
from sas_ray.core.data.augment import SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.data.sources import imagefolder_tar
from sas_ray.core.embedding import mean_view_embeddings
from sas_ray.core.evaluation import evaluate_encoder
from sas_ray.core.models.backbones import build_backbone
from sas_ray.core.models.checkpoint import load_encoder, save_encoder
from sas_ray.core.models.heads import Encoder, build_model
from sas_ray.core.models.optim import build_optimizer
from sas_ray.core.selection.latent import latent_classes
from sas_ray.core.selection.ranking import Ranking
from sas_ray.core.selection.registry import get_selector
from sas_ray.core.selection.supervised import forgetting_events, rank_by_scores
from sas_ray.core.training.loop import Precision, train_epoch
from sas_ray.errors import SasRayError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
LATENTS = ("labels", "few-labels", "kmeans")
CORE = ("sas", "random", "sas-reference")  # the first tier's strategies
FULL = "full"
FORGET_LEAST, FORGET_MOST = "cnn-forgetting-least", "cnn-forgetting-most"
CORRELATED = ["sas", "sas-reference", "prototypes-easy", "random-balanced"]  # vs forgetting
WEAK_RHO = 0.1  # a significant Spearman rho below this is reported as a sign-only agreement
ANY_LATENT = "any"  # key of runs that do not depend on latent classes (full, random)
DOC_BEGIN, DOC_END = "<!-- BEGIN replicate report -->", "<!-- END replicate report -->"


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class Scale:
    """Everything that determines the results (the fingerprint of ``--out``)."""

    pool: int | None  # stratified train images the selection ranks; None: all 50,000
    test: int | None  # stratified test images for evaluation; None: all 10,000
    image_size: int
    arch: str  # SimCLR encoder trained on every subset
    width: float
    proxy_arch: str
    proxy_width: float
    proxy_epochs: int
    epochs: int
    batch_size: int
    lr: float
    temperature: float
    views: int  # augmented views averaged per embedding
    forget_arch: str  # supervised classifier whose forgetting events are counted
    forget_width: float
    forget_epochs: int
    forget_batch_size: int
    forget_lr: float
    label_fraction: float  # few-labels latent classes
    kmeans_k: int
    probe_l2_grid: tuple[float, ...]


@dataclass(frozen=True)
class Plan:
    """What to run (does not change the results of a run, only which runs exist)."""

    seeds: list[int]
    fractions: list[float]
    strategies: list[str]
    latents: list[str]
    forgetting_fraction: float | None  # None: no forgetting comparison
    time_budget_min: float | None


SCALES: dict[str, Scale] = {
    # 2 shared CPU cores (about 100-200 img/s with one torch thread): ResNet-10 at 1/8 width,
    # 32 px, a 2,000-image pool, 10 epochs per subset; the priority runs fit in about an hour.
    "cpu": Scale(pool=2000, test=2000, image_size=32, arch="resnet10", width=0.125,
                 proxy_arch="resnet10", proxy_width=0.125, proxy_epochs=20, epochs=10,
                 batch_size=128, lr=1e-3, temperature=0.5, views=2, forget_arch="resnet10",
                 forget_width=0.125, forget_epochs=15, forget_batch_size=128, forget_lr=0.05,
                 label_fraction=0.01, kmeans_k=10, probe_l2_grid=(1e-4, 1e-3, 1e-2)),
    # one GPU: ResNet-18 at full width on all of CIFAR-10 train (reference recipe: Adam 1e-3,
    # batch 512, temperature 0.5); proxy ResNet-10 at half width.
    "gpu": Scale(pool=None, test=None, image_size=32, arch="resnet18", width=1.0,
                 proxy_arch="resnet10", proxy_width=0.5, proxy_epochs=40, epochs=200,
                 batch_size=512, lr=1e-3, temperature=0.5, views=4, forget_arch="resnet18",
                 forget_width=0.5, forget_epochs=30, forget_batch_size=128, forget_lr=0.05,
                 label_fraction=0.01, kmeans_k=10, probe_l2_grid=(1e-5, 1e-4, 1e-3, 1e-2)),
}
DEFAULT_PLAN = {
    "seeds": [0, 1, 2],
    "fractions": [0.2, 0.4, 0.6, 0.8],
    "strategies": ["sas", "sas-reference", "random", "random-balanced", "prototypes-easy",
                   "kcenter", "semdedup"],
    "latents": list(LATENTS),
    "forgetting_fraction": 0.4,
}


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``path`` via a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- data
@dataclass
class Data:
    """Decoded pool (selection + SimCLR + probe training) and test images."""

    pool_images: np.ndarray  # (n, H, W, 3) uint8
    pool_labels: np.ndarray  # (n,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def stratified(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of ``size`` rows with (nearly) equal counts per class; all rows for
    ``size=None``. Class c gets ``floor(size / K)`` rows plus one for the first
    ``size mod K`` classes."""
    if size is None or size >= labels.shape[0]:
        return np.arange(labels.shape[0])
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per, extra = divmod(size, classes.size)
    rows = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        take = per + (i < extra)
        if take > members.size:
            raise SasRayError(f"class {c} has {members.size} images, fewer than the {take} a "
                              f"stratified subset of {size} needs; pass a smaller --pool")
        rows.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(rows))


def load_cifar10(path: Path, pool: int | None, test: int | None) -> Data:
    """The pool (stratified subset of train, seed 0) and test images of the CIFAR-10 tar."""
    if not path.is_file():
        raise SasRayError(f"CIFAR-10 archive {path} does not exist; pass --data pointing at "
                          "cifar10-jpeg.tar.gz (see ../shared/datasets/README.md)")
    src = imagefolder_tar(str(path))
    split = {name: [it for it in src.items if it.split == name] for name in ("train", "test")}
    if not split["train"] or not split["test"]:
        raise SasRayError(f"{path} needs train/<class>/ and test/<class>/ folders; found "
                          f"{len(split['train'])} train and {len(split['test'])} test images")
    out = {}
    for name, size in (("train", pool), ("test", test)):
        items = split[name]
        labels = np.array([it.label for it in items], dtype=np.int64)
        rows = stratified(labels, size, seed=0)
        images = decode_images([items[i].payload for i in rows])
        out[name] = (images, labels[rows])
    return Data(pool_images=out["train"][0], pool_labels=out["train"][1],
                test_images=out["test"][0],
                test_labels=out["test"][1], class_names=list(src.class_names))


# ---------------------------------------------------------------- training
def index_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of row indices in batches; a last batch of one row is dropped (batch
    norm cannot train on it)."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    return [b for b in batches if b.numel() >= 2]


def train_simclr(images: torch.Tensor, arch: str, width: float, scale: Scale, epochs: int,
                 seed: int, device: torch.device, what: str) -> tuple[Encoder, list[dict]]:
    """SimCLR (reference recipe: Adam, constant lr, NT-Xent) on uint8 ``images (n, 3, H, W)``
    (already on ``device``) for ``epochs`` epochs; returns the model and per-epoch stats."""
    n = images.shape[0]
    batch_size = min(scale.batch_size, n)
    torch.manual_seed(seed)
    model = build_model(arch, width=width, stem="cifar", image_size=scale.image_size).to(device)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=scale.lr,
                      temperature=scale.temperature)
    optimizer, scheduler = build_optimizer(model, cfg, len(index_batches(n, batch_size,
                                                                         torch.Generator())))
    augment = SimCLRAugment(size=scale.image_size)
    precision = Precision.for_device(device, amp=True)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        batches = (images[idx.to(device)] for idx in index_batches(n, batch_size, generator))
        stats = fit(model, lambda _, b=batches: b,
                    simclr_step(augment, optimizer, scale.temperature, precision), optimizer,
                    scheduler, range(epoch, epoch + 1), seed=seed, device=device).history[-1]
        stats = {k: stats[k] for k in ("loss", "images", "images_per_s", "seconds", "steps",
                                       "lr")}
        if not math.isfinite(stats["loss"]):
            raise SasRayError(f"{what}: SimCLR loss is {stats['loss']} at epoch {epoch}; lower "
                              "the learning rate (Scale.lr) or check the data")
        history.append({"epoch": epoch, **{k: round(v, 5) for k, v in stats.items()}})
    log(f"{what}: {n} images x {epochs} epochs, loss {history[0]['loss']:.3f} -> "
        f"{history[-1]['loss']:.3f}, {np.mean([h['images_per_s'] for h in history]):.0f} img/s")
    return model, history


def classifier(arch: str, width: float, num_classes: int) -> nn.Module:
    """A CIFAR-stem ResNet with a linear classifier, for the forgetting counts."""
    backbone = build_backbone(arch, width=width, stem="cifar")
    return nn.Sequential(backbone, nn.Linear(backbone.feature_dim, num_classes))


# ---------------------------------------------------------------- cached stages
class Stages:
    """Proxy, embeddings, latent classes, forgetting counts and rankings, cached in
    ``out/cache`` under fingerprints of their settings."""

    def __init__(self, data: Data, scale: Scale, data_fp: str, out: Path,
                 device: torch.device) -> None:
        self.data, self.scale, self.device = data, scale, device
        self.cache = out / "cache"
        self.pool_u8 = to_nchw(data.pool_images).to(device)
        s = scale
        self.proxy_fp = fingerprint(["proxy", data_fp, s.proxy_arch, s.proxy_width,
                                     s.proxy_epochs, s.batch_size, s.lr, s.temperature,
                                     s.image_size])
        self.embed_fp = fingerprint(["embed", self.proxy_fp, s.views])
        self.forget_fp = fingerprint(["forget", data_fp, s.forget_arch, s.forget_width,
                                      s.forget_epochs, s.forget_batch_size, s.forget_lr])
        self.timings: dict[str, float] = {}
        self.agreement: dict[str, dict[str, float] | None] = {}
        self._partitions: dict[str, np.ndarray] = {}
        self._rankings: dict[tuple[str, str, int], Ranking] = {}

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        return value

    def proxy(self) -> Encoder:
        path = self.cache / f"proxy-{self.proxy_fp}.pt"
        if path.exists():
            return load_encoder(str(path)).to(self.device)
        s = self.scale
        model, history = self._timed("proxy_train_s", lambda: train_simclr(
            self.pool_u8, s.proxy_arch, s.proxy_width, s, s.proxy_epochs, 0, self.device,
            "proxy"))
        save_encoder(str(path), model, meta={"history": history})
        return model

    def embeddings(self) -> np.ndarray:
        """``(n, 128)`` float32 mean unit projections of ``views`` augmented views."""
        path = self.cache / f"embeddings-{self.embed_fp}.npy"
        if path.exists():
            return np.load(path)
        model = self.proxy().eval()
        augment = SimCLRAugment(size=self.scale.image_size)
        torch.manual_seed(0)

        def run() -> np.ndarray:
            parts = [mean_view_embeddings(model, batch, augment, self.scale.views,
                                          "projection").cpu()
                     for batch in self.pool_u8.split(512)]
            return torch.cat(parts).numpy().astype(np.float32)

        emb = self._timed("embed_s", run)
        write_atomic(path, _npy_bytes(emb))
        return emb

    def partition(self, method: str) -> np.ndarray:
        """Latent class per pool row (its agreement with the labels goes to ``agreement``)."""
        if method not in self._partitions:
            cfg = LatentConfig(method=method, k=self.scale.kmeans_k,
                               label_fraction=self.scale.label_fraction)
            part = latent_classes(self.embeddings(), self.data.pool_labels, cfg, seed=0)
            self._partitions[method] = part.classes
            self.agreement[method] = part.agreement
        return self._partitions[method]

    def forgetting(self) -> np.ndarray:
        """Forgetting events per pool image of a supervised ResNet (no augmentation)."""
        path = self.cache / f"forgetting-{self.forget_fp}.npy"
        if path.exists():
            return np.load(path)
        s = self.scale
        inputs = SimCLRAugment(size=s.image_size).plain(self.pool_u8)
        targets = torch.from_numpy(self.data.pool_labels).to(self.device)
        factory = partial(classifier, s.forget_arch, s.forget_width,
                          len(self.data.class_names))
        events = self._timed("forgetting_s", lambda: forgetting_events(
            inputs, targets, factory, epochs=s.forget_epochs, batch_size=s.forget_batch_size,
            lr=s.forget_lr, seed=0))
        write_atomic(path, _npy_bytes(events))
        return events

    def ranking(self, latent: str, strategy: str, seed: int) -> Ranking:
        key = (latent, strategy, seed)
        if key not in self._rankings:
            labels = self.data.pool_labels
            if strategy in (FORGET_LEAST, FORGET_MOST):
                classes = self.partition(latent)
                rank = rank_by_scores(self.embeddings(), classes,
                                      self.forgetting().astype(np.float64), seed,
                                      descending=strategy == FORGET_MOST)
            else:
                classes = (self.partition(latent) if latent != ANY_LATENT
                           else np.zeros_like(labels))
                start = time.perf_counter()
                rank = get_selector(strategy)(self.embeddings(), classes, None, seed,
                                              SelectConfig(), labels)
                self.timings[f"select_{strategy}_{latent}_s"] = round(
                    time.perf_counter() - start, 3)
            self._rankings[key] = rank
        return self._rankings[key]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ---------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunKey:
    latent: str
    strategy: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.latent}__{self.strategy}__f{self.fraction:g}__s{self.seed}"


def run_key(latent: str, strategy: str, fraction: float, seed: int) -> RunKey:
    """Canonical key: full data and uniform random do not depend on latent classes."""
    if strategy == FULL:
        return RunKey(ANY_LATENT, FULL, 1.0, seed)
    if strategy == "random":
        return RunKey(ANY_LATENT, strategy, fraction, seed)
    return RunKey(latent, strategy, fraction, seed)


def plan_runs(plan: Plan) -> list[RunKey]:
    """Runs in priority order (see the module docstring), without duplicates."""
    primary, others = plan.latents[0], plan.latents[1:]
    head, rest = plan.fractions[:2], plan.fractions[2:]
    core = [s for s in CORE if s in plan.strategies]
    extra = [s for s in plan.strategies if s not in CORE]
    tiers: list[list[RunKey]] = []
    for seed in plan.seeds:
        tiers.append([run_key(primary, FULL, 1.0, seed)]
                     + [run_key(primary, s, f, seed) for f in head for s in core])
    if plan.forgetting_fraction is not None:
        f = plan.forgetting_fraction
        for seed in plan.seeds:
            tiers.append([run_key(primary, s, f, seed)
                          for s in (FORGET_LEAST, FORGET_MOST, "sas", "random")])
    for seed in plan.seeds:
        tiers.append([run_key(primary, s, f, seed) for f in head for s in extra])
    for seed in plan.seeds:
        tiers.append([run_key(primary, s, f, seed) for f in rest for s in plan.strategies])
    for latent in others:
        for seed in plan.seeds:
            tiers.append([run_key(latent, s, f, seed) for f in plan.fractions
                          for s in plan.strategies if s != "random"])
    seen: dict[RunKey, None] = {}
    for tier in tiers:
        for key in tier:
            seen.setdefault(key, None)
    return list(seen)


def run_one(key: RunKey, stages: Stages, scale: Scale) -> dict[str, Any]:
    """Select, train SimCLR on the subset, evaluate at the final epoch; the run's record."""
    data = stages.data
    if key.strategy == FULL:
        rows = np.arange(data.pool_labels.shape[0])
    else:
        rows = stages.ranking(key.latent, key.strategy, key.seed).cut(key.fraction)
    start = time.perf_counter()
    model, history = train_simclr(stages.pool_u8[torch.from_numpy(rows).to(stages.device)],
                                  scale.arch, scale.width, scale, scale.epochs, key.seed,
                                  stages.device, key.name)
    train_s = time.perf_counter() - start
    cfg = EvalConfig(probe="lbfgs", probe_l2_grid=list(scale.probe_l2_grid))
    result = evaluate_encoder(model, data.pool_images, data.pool_labels, data.test_images,
                              data.test_labels, cfg, seed=key.seed, device=stages.device)
    counts = np.bincount(data.pool_labels[rows], minlength=len(data.class_names))
    return {**dataclasses.asdict(key), "n_train": int(rows.size),
            "class_counts": counts.tolist(), "linear_acc": result["linear_acc"],
            "knn_acc": result["knn_acc"], "probe_l2": result["probe_l2"],
            "linear_train_acc": result["linear_train_acc"],
            "final_loss": history[-1]["loss"], "train_s": round(train_s, 2),
            "eval_s": round(result["seconds"], 2),
            "images_per_s": round(float(np.mean([h["images_per_s"] for h in history])), 1)}


# ---------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; nan for one value) and count."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, int(a.size)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if not math.isfinite(t):
        return 0.0 if math.isinf(t) else math.nan
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a: list[float], b: list[float]) -> dict[str, float]:
    """Welch's t-test of mean(a) - mean(b): gap, pooled std, t, df, two-sided p."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    gap = ma - mb
    pooled = math.sqrt((sa**2 + sb**2) / 2) if na > 1 and nb > 1 else math.nan
    if na < 2 or nb < 2:
        return {"gap": gap, "pooled_std": pooled, "t": math.nan, "df": math.nan, "p": math.nan}
    va, vb = sa**2 / na, sb**2 / nb
    if va + vb == 0:
        return {"gap": gap, "pooled_std": 0.0, "t": math.copysign(math.inf, gap) if gap else 0.0,
                "df": na + nb - 2.0, "p": 0.0 if gap else 1.0}
    t = gap / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return {"gap": gap, "pooled_std": pooled, "t": t, "df": df, "p": t_pvalue(t, df)}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho (Pearson correlation of average ranks) and its two-sided p-value from
    ``t = rho sqrt((n - 2) / (1 - rho^2))`` with n - 2 degrees of freedom."""
    rx, ry = average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    rho = float((rx * ry).sum() / denom) if denom > 0 else math.nan
    n = x.shape[0]
    if not math.isfinite(rho) or n < 3:
        return rho, math.nan
    t = rho * math.sqrt((n - 2) / max(1e-300, 1 - rho * rho))
    return rho, t_pvalue(t, n - 2)


def within_class_position(ranking: Ranking) -> np.ndarray:
    """Per row: its position in its latent class's order, scaled to [0, 1] (0 = first)."""
    n = ranking.order.shape[0]
    classes = ranking.latent[ranking.order]
    position = np.empty(n, dtype=np.float64)
    for c in np.unique(classes):
        rows = ranking.order[classes == c]  # this class's rows in rank order
        position[rows] = np.arange(rows.size) / max(1, rows.size - 1)
    return position


# ---------------------------------------------------------------- report
def fmt(m: float, s: float, n: int) -> str:
    if n == 0:
        return "-"
    return f"{m:.2f} ± {s:.2f} ({n})" if n > 1 else f"{m:.2f} (1)"


def load_results(out: Path) -> dict[RunKey, dict[str, Any]]:
    results = {}
    for path in sorted((out / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        results[RunKey(r["latent"], r["strategy"], r["fraction"], r["seed"])] = r
    return results


def collect(results: dict[RunKey, dict], latent: str, strategy: str, fraction: float,
            metric: str) -> list[float]:
    key_latent = ANY_LATENT if strategy in (FULL, "random") else latent
    frac = 1.0 if strategy == FULL else fraction
    return [r[metric] for k, r in results.items()
            if k.latent == key_latent and k.strategy == strategy
            and math.isclose(k.fraction, frac)]


def gap_row(results: dict[RunKey, dict], latent: str, a: str, b: str, f: float,
            metric: str) -> str | None:
    va, vb = collect(results, latent, a, f, metric), collect(results, latent, b, f, metric)
    if not va or not vb:
        return None
    w = welch(va, vb)
    noise = "-" if math.isnan(w["pooled_std"]) else \
        ("yes" if abs(w["gap"]) > 2 * w["pooled_std"] else "no")
    p = "-" if math.isnan(w["p"]) else f"{w['p']:.3f}"
    std = "-" if math.isnan(w["pooled_std"]) else f"{w['pooled_std']:.2f}"
    return (f"| {a} − {b} | {f:g} | {metric} | {w['gap']:+.2f} | {std} | {noise} | {p} | "
            f"{len(va)} / {len(vb)} |")


def verdict_sas_vs_random(results: dict[RunKey, dict], latent: str,
                          fractions: list[float]) -> str:
    rows = []
    for f in fractions:
        va = collect(results, latent, "sas", f, "linear_acc")
        vb = collect(results, latent, "random", f, "linear_acc")
        if len(va) < 2 or len(vb) < 2:
            continue
        w = welch(va, vb)
        status = ("SAS better" if w["gap"] > 0 and w["p"] < 0.05 else
                  "SAS worse" if w["gap"] < 0 and w["p"] < 0.05 else "no significant difference")
        rows.append(f"{f:g}: {w['gap']:+.2f} points, p = {w['p']:.3f} ({status})")
    if not rows:
        return "not tested (fewer than 2 seeds of sas and random)"
    better = all("SAS better" in r for r in rows)
    head = "reproduced" if better else "not reproduced at this scale"
    return f"{head} — " + "; ".join(rows)


def report(results: dict[RunKey, dict[str, Any]], settings: dict[str, Any],
           plots: dict[str, str]) -> str:
    """The Markdown report of the finished runs ``results``; ``plots`` maps a latent method to
    the link of its accuracy-vs-fraction plot."""
    scale, plan = settings["scale"], settings["plan"]
    fractions, latents = plan["fractions"], plan["latents"]
    strategies = plan["strategies"]
    lines = ["## Setup", ""]
    for i, run in enumerate(settings["invocations"], 1):
        lines += [f"- Invocation {i}: `{run['command']}`",
                  f"  on {run['machine_line']}; device {run['device']}"]
    lines += [
          f"- Data: CIFAR-10 JPEG tar; pool = {settings['pool_size']} train images "
          f"({'stratified subset, seed 0' if scale['pool'] else 'all of train'}), test = "
          f"{settings['test_size']} test images "
          f"({'stratified subset' if scale['test'] else 'all of test'}), "
          f"{scale['image_size']} px.",
          f"- Proxy: {scale['proxy_arch']} width {scale['proxy_width']}, SimCLR "
          f"{scale['proxy_epochs']} epochs on the pool; embeddings = mean unit projection "
          f"of {scale['views']} augmented views.",
          f"- SimCLR on each subset: {scale['arch']} width {scale['width']}, "
          f"{scale['epochs']} epochs (same for every fraction, so fewer steps on smaller "
          f"subsets), batch {scale['batch_size']}, Adam lr {scale['lr']}, temperature "
          f"{scale['temperature']}; evaluated once, at the final epoch.",
          f"- Evaluation: L-BFGS linear probe on frozen backbone features of the whole pool "
          f"(L2 chosen from {scale['probe_l2_grid']} on 10% of the pool, never on test) and "
          "weighted kNN (k = 200, t = 0.1); accuracies in % on the test images.",
          f"- Latent classes: true labels; {scale['label_fraction']:.0%} labels + linear "
          f"classifier on the embeddings; k-means (k = {scale['kmeans_k']}).",
          f"- Forgetting counts: {scale['forget_arch']} width {scale['forget_width']} "
          f"classifier, SGD lr {scale['forget_lr']}, {scale['forget_epochs']} epochs, batch "
          f"{scale['forget_batch_size']}, no augmentation.",
          f"- Seeds {plan['seeds']}; a seed sets the SimCLR initialisation and augmentations "
          "and the random selectors; proxy, embeddings and latent classes use seed 0.",
          f"- Stage times (s): {json.dumps(settings.get('timings', {}))}",
          f"- Runs finished: {len(results)} of {settings.get('planned', '?')} planned.", ""]
    for latent in latents:
        if latent != latents[0] and not any(k.latent == latent for k in results):
            continue
        agree = settings.get("agreement", {}).get(latent)
        agree_txt = (f" (purity {agree['purity']:.3f}, NMI {agree['nmi']:.3f} against the "
                     "true labels)" if agree else "")
        lines += [f"## Latent classes: {latent}{agree_txt}", ""]
        if latent in plots:
            lines += [f"![accuracy vs fraction, latent classes: {latent}]({plots[latent]})", ""]
        shown = [f for f in fractions if any(collect(results, latent, s, f, "linear_acc")
                                             for s in strategies)]
        for metric, title in (("linear_acc", "Linear probe"), ("knn_acc", "kNN")):
            header = "| strategy | " + " | ".join(f"{f:.0%}" for f in shown) + " | 100% |"
            lines += [f"{title} accuracy (%), mean ± std over seeds (number of seeds):", "",
                      header, "|" + "---|" * (len(shown) + 2)]
            for s in strategies:
                cells = [fmt(*mean_std(v)) if (v := collect(results, latent, s, f, metric))
                         else "-" for f in shown]
                if any(c != "-" for c in cells):
                    lines.append(f"| {s} | " + " | ".join(cells) + " | |")
            full = collect(results, latent, FULL, 1.0, metric)
            lines.append("| full data | " + " | ".join("" for _ in shown) + " | "
                         + (fmt(*mean_std(full)) if full else "-") + " |")
            lines.append("")
        gap_lines = [g for f in fractions for metric in ("linear_acc", "knn_acc")
                     for other in ("random", "random-balanced", "sas-reference")
                     if (g := gap_row(results, latent, "sas", other, f, metric))]
        if gap_lines:
            lines += ["Differences (points); noise check: |gap| > 2 × pooled std; p: Welch "
                      "t-test, two-sided:", "",
                      "| comparison | fraction | metric | gap | pooled std | > 2 std | p | "
                      "seeds |", "|---|---|---|---|---|---|---|---|", *gap_lines, ""]
    f = plan.get("forgetting_fraction")
    primary = latents[0]
    if f is not None:
        lines += [f"## Forgetting (fraction {f:.0%}, latent {primary})", ""]
        lines += ["| subset | linear | kNN |", "|---|---|---|"]
        for s in (FORGET_LEAST, FORGET_MOST, "sas", "random"):
            cells = [fmt(*mean_std(v)) if (v := collect(results, primary, s, f, m)) else "-"
                     for m in ("linear_acc", "knn_acc")]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
        gaps = [g for m in ("linear_acc", "knn_acc") for a, b in
                ((FORGET_LEAST, FORGET_MOST), ("sas", FORGET_MOST), ("sas", FORGET_LEAST))
                if (g := gap_row(results, primary, a, b, f, m))]
        if gaps:
            lines += ["| comparison | fraction | metric | gap | pooled std | > 2 std | p | "
                      "seeds |", "|---|---|---|---|---|---|---|---|", *gaps, ""]
        corr = settings.get("forgetting_correlation")
        if corr:
            lines += ["Spearman rank correlation with the forgetting counts (positive: "
                      "examples a strategy ranks late are forgotten more often, i.e. it "
                      "prefers unforgettable examples):", "",
                      "| ranking | rho (all rows, within-class position) | p | mean rho "
                      "within classes | min / max over classes | overlap of its "
                      f"{f:.0%} subset with the least-forgettable {f:.0%} |",
                      "|---|---|---|---|---|---|"]
            for name, c in corr.items():
                lines.append(f"| {name} | {c['rho']:+.3f} | {c['p']:.2g} | "
                             f"{c['rho_within_mean']:+.3f} | {c['rho_within_min']:+.3f} / "
                             f"{c['rho_within_max']:+.3f} | {c['overlap']:.3f} (chance "
                             f"{f:.3f}) |")
            events = corr[next(iter(corr))]["events_summary"]
            lines += ["", f"Forgetting events per pool image: {events}.", ""]
    lines += ["## Mechanical verdicts", "",
              "Criterion: a claim is *reproduced* when the effect has the paper's sign with "
              "Welch p < 0.05 over seeds at every tested fraction; otherwise *not reproduced "
              "at this scale*; *not tested* without at least 2 seeds per side.", ""]
    for latent in latents:
        lines.append(f"- SAS beats random ({latent} latent classes; linear probe): "
                     f"{verdict_sas_vs_random(results, latent, fractions)}")
    if f is not None:
        va = collect(results, primary, FORGET_LEAST, f, "linear_acc")
        vb = collect(results, primary, FORGET_MOST, f, "linear_acc")
        if len(va) > 1 and len(vb) > 1:
            w = welch(va, vb)
            ok = w["gap"] > 0 and w["p"] < 0.05
            lines.append(f"- Least-forgettable subset beats most-forgettable ({f:.0%}): "
                         f"{'reproduced' if ok else 'not reproduced at this scale'} — "
                         f"{w['gap']:+.2f} points, p = {w['p']:.3f}")
        else:
            lines.append("- Least-forgettable subset beats most-forgettable: not tested")
        corr = settings.get("forgetting_correlation", {}).get("sas")
        if corr:
            ok = corr["rho"] > 0 and corr["p"] < 0.05
            status = ("not reproduced at this scale" if not ok else "reproduced"
                      if corr["rho"] >= WEAK_RHO else
                      f"reproduced in sign only (rho < {WEAK_RHO}: a very weak association)")
            lines.append(f"- SAS prefers unforgettable examples (Spearman rho > 0): {status} — "
                         f"rho {corr['rho']:+.3f}, p = {corr['p']:.2g}; its {f:.0%} subset "
                         f"shares {corr['overlap']:.3f} of its rows with the least-forgettable "
                         f"{f:.0%} (chance {f:.3f})")
    return "\n".join(lines) + "\n"


def draw_plots(out: Path, results: dict[RunKey, dict[str, Any]],
               settings: dict[str, Any]) -> dict[str, Path]:
    """``out/plots/accuracy_vs_fraction-<latent>.png`` per latent method with finished runs,
    drawn by :func:`sas_ray.analysis.report.plot` (mean ± std over seeds, full data as a line);
    none where pandas or matplotlib is not installed (a GPU machine may lack them)."""
    try:
        from sas_ray.analysis.report import TrialRecord, plot, summarize
    except ImportError as err:
        log(f"plots skipped ({err}); pip install pandas matplotlib to draw them")
        return {}
    paths = {}
    for latent in settings["plan"]["latents"]:
        if not any(k.latent == latent for k in results):
            continue
        records = [TrialRecord(k.strategy, k.fraction, k.seed, "TERMINATED",
                               {"linear_acc": r["linear_acc"], "knn_acc": r["knn_acc"],
                                "train_time_s": r["train_s"]})
                   for k, r in results.items() if k.latent in (latent, ANY_LATENT)
                   and k.strategy not in (FORGET_LEAST, FORGET_MOST)]
        path = out / "plots" / f"accuracy_vs_fraction-{latent}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png")
        plot(summarize(records), str(tmp), title=f"CIFAR-10, latent classes: {latent}")
        os.replace(tmp, path)
        paths[latent] = path
    return paths


def write_reports(out: Path, settings: dict[str, Any], doc: Path | None) -> str:
    """``out/report.md`` with its plots; with ``doc``, also the report block of ``doc``, its
    plots copied to the folder named like ``doc`` next to it. Returns the report."""
    results = load_results(out)
    plots = draw_plots(out, results, settings)
    text = report(results, settings, {k: f"plots/{p.name}" for k, p in plots.items()})
    write_atomic(out / "report.md", text)
    if doc is not None:
        folder = doc.parent / doc.stem
        splice_doc(doc, report(results, settings,
                               {k: f"{folder.name}/{p.name}" for k, p in plots.items()}))
        for p in plots.values():
            write_atomic(folder / p.name, p.read_bytes())
    return text


def splice_doc(doc: Path, text: str) -> None:
    """Replace the block between the replicate markers of ``doc`` with ``text``."""
    if not doc.is_file():
        raise SasRayError(f"--doc {doc} does not exist; create it with the lines {DOC_BEGIN} "
                          f"and {DOC_END} where the report goes")
    content = doc.read_text()
    start, end = content.find(DOC_BEGIN), content.find(DOC_END)
    if start < 0 or end < start:
        raise SasRayError(f"--doc {doc} lacks the markers {DOC_BEGIN} ... {DOC_END}; add them "
                          "where the report goes")
    new = content[:start + len(DOC_BEGIN)] + "\n" + text + content[end:]
    write_atomic(doc, new)


def forgetting_correlation(stages: Stages, latent: str, fraction: float,
                           strategies: list[str]) -> dict[str, dict[str, Any]]:
    """Spearman rho between each ranking's within-class position and forgetting events."""
    events = stages.forgetting().astype(np.float64)
    classes = stages.partition(latent)
    least = set(stages.ranking(latent, FORGET_LEAST, 0).cut(fraction).tolist())
    out = {}
    for name in strategies:
        rank = stages.ranking(latent, name, 0)
        position = within_class_position(rank)
        rho, p = spearman(position, events)
        per_class = [spearman(position[classes == c], events[classes == c])[0]
                     for c in np.unique(classes)]
        chosen = rank.cut(fraction)
        values, counts = np.unique(events, return_counts=True)
        out[name] = {"rho": rho, "p": p, "rho_within_mean": float(np.nanmean(per_class)),
                     "rho_within_min": float(np.nanmin(per_class)),
                     "rho_within_max": float(np.nanmax(per_class)),
                     "overlap": len(least.intersection(chosen.tolist())) / chosen.size,
                     "events_summary": {"mean": round(float(events.mean()), 3),
                                        "zero_share": round(float((events == 0).mean()), 3),
                                        "never_learned": int(counts[values == stages.scale
                                                                    .forget_epochs].sum())}}
    return out


# ---------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replicate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--out", help="results directory (default runs/replicate-<scale>)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 ImageFolder tar")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--time-budget", type=float, help="minutes; runs that would not finish "
                   "in time are left out (default: no limit)")
    p.add_argument("--seeds", help="comma list (default 0,1,2)")
    p.add_argument("--fractions", help="comma list (default 0.2,0.4,0.6,0.8)")
    p.add_argument("--strategies", help="comma list of registry names")
    p.add_argument("--latent", help="comma list of labels,few-labels,kmeans (first = primary)")
    p.add_argument("--forgetting-fraction", type=float, help="default 0.4; 0 turns the "
                   "forgetting comparison off")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--doc", help="also write the report between the replicate markers of "
                   "this Markdown file")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the finished runs and exit")
    for name in ("pool", "test", "epochs", "proxy-epochs", "batch-size", "views",
                 "forget-epochs"):
        p.add_argument(f"--{name}", type=int, help="override the scale preset")
    p.add_argument("--pool-all", action="store_true", help="use all train images as the pool")
    p.add_argument("--width", type=float, help="override the preset's encoder width")
    p.add_argument("--proxy-width", type=float, help="override the preset's proxy width")
    p.add_argument("--arch", help="override the preset's encoder architecture")
    return p.parse_args(argv)


def _list(text: str | None, default: list, cast: Callable[[str], Any]) -> list:
    if text is None:
        return list(default)
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise SasRayError(f"cannot read the list {text!r} ({err}); pass comma-separated "
                          "values such as 0.2,0.4") from err


def merge_plans(old: dict[str, Any] | None, new: Plan) -> Plan:
    """The union of an earlier invocation's plan and this one's (what the report covers):
    the earlier primary latent stays first, the forgetting fraction is kept."""
    if old is None:
        return new

    def union(a: list, b: list) -> list:
        return list(dict.fromkeys([*a, *b]))

    return Plan(seeds=sorted(union(old["seeds"], new.seeds)),
                fractions=sorted(union(old["fractions"], new.fractions)),
                strategies=union(old["strategies"], new.strategies),
                latents=union(old["latents"], new.latents),
                forgetting_fraction=(new.forgetting_fraction if new.forgetting_fraction
                                     is not None else old["forgetting_fraction"]),
                time_budget_min=new.time_budget_min)


def build_settings(args: argparse.Namespace) -> tuple[Scale, Plan]:
    scale = SCALES[args.scale]
    overrides = {"pool": args.pool, "test": args.test, "epochs": args.epochs,
                 "proxy_epochs": args.proxy_epochs, "batch_size": args.batch_size,
                 "views": args.views, "forget_epochs": args.forget_epochs, "width": args.width,
                 "proxy_width": args.proxy_width, "arch": args.arch}
    scale = dataclasses.replace(scale, **{k: v for k, v in overrides.items() if v is not None})
    if args.pool_all:
        scale = dataclasses.replace(scale, pool=None)
    f_forget = (DEFAULT_PLAN["forgetting_fraction"] if args.forgetting_fraction is None
                else args.forgetting_fraction or None)
    plan = Plan(seeds=_list(args.seeds, DEFAULT_PLAN["seeds"], int),
                fractions=_list(args.fractions, DEFAULT_PLAN["fractions"], float),
                strategies=_list(args.strategies, DEFAULT_PLAN["strategies"], str),
                latents=_list(args.latent, DEFAULT_PLAN["latents"], str),
                forgetting_fraction=f_forget, time_budget_min=args.time_budget)
    for f in [*plan.fractions, *([f_forget] if f_forget else [])]:
        if not 0 < f < 1:
            raise SasRayError(f"fraction {f} is out of range (0, 1); pass fractions such as "
                              "0.2,0.4 (full data is always run)")
    for s in plan.strategies:
        get_selector(s)
    bad = [m for m in plan.latents if m not in LATENTS]
    if bad or not plan.latents:
        raise SasRayError(f"unknown latent method(s) {bad}; pass --latent with some of "
                          f"{','.join(LATENTS)}")
    if not plan.seeds:
        raise SasRayError("--seeds is empty; pass e.g. --seeds 0,1,2")
    return scale, plan


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SasRayError(f"--device {name} asked for, but torch sees no GPU; pass --device cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or ROOT / "runs" / f"replicate-{args.scale}")
    settings_path = out / "settings.json"
    if args.report_only:
        if not settings_path.exists():
            raise SasRayError(f"{out} holds no replication (no settings.json); run without "
                              "--report-only first")
        settings = json.loads(settings_path.read_text())
        print(write_reports(out, settings, args.doc and Path(args.doc)))
        return 0
    scale, plan = build_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data_path = Path(args.data)
    wall_start = time.perf_counter()
    data = load_cifar10(data_path, scale.pool, scale.test)
    log(f"loaded {data.pool_labels.size} pool and {data.test_labels.size} test images from "
        f"{data_path} in {time.perf_counter() - wall_start:.1f} s")
    data_fp = fingerprint(["cifar10", data_path.name, data_path.stat().st_size, scale.pool,
                           scale.test])
    run_fp = fingerprint(dataclasses.asdict(scale) | {"data": data_fp})
    old: dict[str, Any] = {}
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if old.get("fingerprint") != run_fp:
            raise SasRayError(f"{out} holds runs made with other settings (scale fingerprint "
                              f"{old.get('fingerprint')} vs {run_fp}); pass a new --out or the "
                              "same scale options")
    info = machine_info()
    keys = plan_runs(plan)
    merged = merge_plans(old.get("plan"), plan)
    command = "python -m benchmarks.replicate " + " ".join(sys.argv[1:] if argv is None
                                                            else argv)
    settings: dict[str, Any] = {
        **old, "fingerprint": run_fp, "scale": dataclasses.asdict(scale),
        "plan": dataclasses.asdict(merged),
        "invocations": [*old.get("invocations", []),
                        {"command": command, "machine_line": machine_line(info),
                         "device": str(device)}],
        "pool_size": int(data.pool_labels.size), "test_size": int(data.test_labels.size),
        "planned": len(plan_runs(merged))}
    stages = Stages(data, scale, data_fp, out, device)
    stages.timings.update(old.get("timings", {}))  # stage times of earlier invocations
    stages.agreement.update(old.get("agreement", {}))

    def save_settings() -> None:
        settings["timings"] = stages.timings
        settings["agreement"] = stages.agreement
        write_atomic(settings_path, json.dumps(settings, indent=1, default=str))
        write_reports(out, settings, args.doc and Path(args.doc))

    stages.embeddings()
    for method in plan.latents:
        stages.partition(method)
    if plan.forgetting_fraction is not None:
        stages.forgetting()
        settings["forgetting_correlation"] = forgetting_correlation(
            stages, plan.latents[0], plan.forgetting_fraction, CORRELATED)
    save_settings()
    budget = plan.time_budget_min * 60 if plan.time_budget_min else math.inf
    per_image_s = stages.timings.get("proxy_train_s", 0.0) / max(
        1, data.pool_labels.size * scale.proxy_epochs) * (scale.width / scale.proxy_width) ** 2
    eval_s, skipped = 0.0, []
    for i, key in enumerate(keys):
        path = out / "runs" / f"{key.name}.json"
        if path.exists():
            continue
        n = data.pool_labels.size if key.strategy == FULL else round(key.fraction
                                                                      * data.pool_labels.size)
        estimate = n * scale.epochs * per_image_s + eval_s
        elapsed = time.perf_counter() - wall_start
        if elapsed + estimate > budget:
            skipped.append(key.name)
            continue
        log(f"run {i + 1}/{len(keys)} {key.name} (estimated {estimate:.0f} s)")
        record = run_one(key, stages, scale)
        record["settings"] = run_fp
        write_atomic(path, json.dumps(record, indent=1))
        per_image_s = record["train_s"] / (record["n_train"] * scale.epochs)
        eval_s = record["eval_s"]
        log(f"  linear {record['linear_acc']:.2f}%  kNN {record['knn_acc']:.2f}%  "
            f"train {record['train_s']:.0f} s  eval {record['eval_s']:.0f} s")
        save_settings()
    if skipped:
        log(f"time budget: {len(skipped)} planned runs left out, e.g. {skipped[:3]}")
    settings["skipped_for_time"] = skipped
    save_settings()
    log(f"done in {(time.perf_counter() - wall_start) / 60:.1f} min; report: {out / 'report.md'}")
    return 0


def _entry() -> int:
    try:
        return main()
    except SasRayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_entry())

