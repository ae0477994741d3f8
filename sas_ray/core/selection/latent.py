"""Approximate latent classes of the unlabeled data, and their agreement with true labels.

Four ways (``latent.method``), as in the paper:

* ``labels``: the ground-truth labels (the upper bound).
* ``few-labels``: reveal ``label_fraction`` of the labels, stratified by class under the
  seed (at least one per class), fit a multinomial logistic regression (L-BFGS, L2) on the
  revealed proxy embeddings, and predict every row; revealed rows keep their true label.
* ``clip-zeroshot``: the class name whose CLIP prompt embedding is nearest to the row
  (:mod:`sas_ray.core.selection.zeroshot`; the rows must be a CLIP's image projections).
* ``kmeans`` (``latent.kmeans_impl``): with faiss installed (``auto``/``faiss``), Lloyd's
  k-means by faiss (its GPU index where faiss has GPUs) on a uniform sample of
  ``kmeans_points_per_centroid * k`` rows, started from k-means++ centres (Arthur &
  Vassilvitskii 2007) of a sub-sample, ``kmeans_n_init`` restarts keeping the lowest sample
  inertia; else (``minibatch``) mini-batch k-means (Sculley 2010) with the same seeding.
  Every row is then assigned to its nearest centre in blocks, and a centre left without rows
  takes the row farthest from its centre among clusters of two or more (repeated until none
  is empty), so there are exactly k classes. Both touch the data in samples, mini-batches
  and blocks only, so ``x`` may be a memory map.

Classes smaller than ``min_class_size`` are merged into the class whose mean unit
embedding is most similar (selection ranks within classes of at least two rows).
Labels are int64 with -1 for "unknown" throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sas_ray.config import LatentConfig
from sas_ray.core.selection.similarity import as_compute, check_embeddings, normalize_rows
from sas_ray.core.selection.zeroshot import zeroshot_classes
from sas_ray.errors import SasRayError

METHODS = ("labels", "few-labels", "kmeans", "clip-zeroshot")


@dataclass(frozen=True)
class Partition:
    """Latent class per row plus how it was obtained."""

    classes: np.ndarray  # (n,) int64
    method: str
    agreement: dict[str, float] | None  # purity and NMI against the known labels
    merged: dict[int, int] = field(default_factory=dict)  # small class -> class it joined

    @property
    def num_classes(self) -> int:
        return int(np.unique(self.classes).size)


# ---------------------------------------------------------------- agreement with labels
def contingency(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Counts ``table[a, b]`` of rows with predicted class a and true class b."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of rows whose true class is the majority true class of their predicted class."""
    return float(contingency(pred, true).max(axis=1).sum() / pred.shape[0])


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred: np.ndarray, true: np.ndarray) -> float:
    """Normalised mutual information ``I(P; T) / ((H(P) + H(T)) / 2)`` (arithmetic mean),
    in [0, 1]; 1 when both are a single class."""
    table = contingency(pred, true).astype(np.float64)
    h_p, h_t = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_p == 0.0 and h_t == 0.0:
        return 1.0
    joint = table / table.sum()
    outer = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())
    return max(0.0, mutual / ((h_p + h_t) / 2))


def agreement(classes: np.ndarray, labels: np.ndarray | None) -> dict[str, float] | None:
    """Purity and NMI on the rows with a known label; None when there are none."""
    if labels is None or not (labels >= 0).any():
        return None
    known = labels >= 0
    return {"purity": purity(classes[known], labels[known]),
            "nmi": nmi(classes[known], labels[known]), "rows": int(known.sum())}


# ---------------------------------------------------------------- k-means
def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``||x_i - c_j||^2`` for a block of rows, shape (b, k), clipped at 0."""
    d = (x * x).sum(axis=1, keepdims=True) - 2.0 * x @ centroids.T
    d += (centroids * centroids).sum(axis=1)
    return np.maximum(d, 0.0, out=d)


def assign_nearest(x: np.ndarray, centroids: np.ndarray,
                   block_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest centroid for every row, in row blocks."""
    n = x.shape[0]
    nearest = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    centroids = as_compute(centroids)
    for start in range(0, n, block_size):
        d = squared_distances(as_compute(x[start:start + block_size]), centroids)
        nearest[start:start + d.shape[0]] = d.argmin(axis=1)
        dist[start:start + d.shape[0]] = d[np.arange(d.shape[0]), nearest[start:start + d.shape[0]]]
    return nearest, dist


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): centres drawn with probability
    proportional to the squared distance to the nearest centre so far."""
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]), dtype=x.dtype)
    centers[0] = x[rng.integers(n)]
    closest = squared_distances(x, centers[:1])[:, 0].astype(np.float64)
    for i in range(1, k):
        total = closest.sum()
        pick = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[i] = x[pick]
        np.minimum(closest, squared_distances(x, centers[i:i + 1])[:, 0], out=closest)
    return centers


def check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise SasRayError(f"k-means needs 1 <= k <= n, got k={k} for {n} rows; pass a "
                          "smaller --latent.k")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_kmeans(x: np.ndarray, k: int, seed: int, *, iters: int = 20, n_init: int = 1,
                 points_per_centroid: int = 256, init_sample: int = 20000) -> np.ndarray:
    """Lloyd k-means centroids (k, d) by faiss on a uniform sample of
    ``points_per_centroid * k`` rows of ``x`` (n, d), from k-means++ centres of
    ``max(init_sample, k)`` of those; the restart of lowest sample inertia of ``n_init``.
    faiss splits a cluster that empties during the iterations (its default)."""
    import faiss

    n = x.shape[0]
    check_k(k, n)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, points_per_centroid * k), replace=False))
    fit = np.ascontiguousarray(as_compute(x[sample]), dtype=np.float32)
    best, best_obj = None, np.inf
    gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    for _ in range(n_init):
        seeds = fit[np.sort(rng.choice(fit.shape[0], size=min(fit.shape[0],
                                                              max(init_sample, k)),
                                       replace=False))]
        init = kmeans_plus_plus(seeds, k, rng)
        km = faiss.Kmeans(fit.shape[1], k, niter=iters, seed=int(rng.integers(2**31)),
                          max_points_per_centroid=fit.shape[0], min_points_per_centroid=1,
                          gpu=gpu, verbose=False)
        obj = km.train(fit, init_centroids=init)
        if obj < best_obj:
            best, best_obj = km.centroids.copy(), obj
    return best.astype(np.float64)


def fill_empty(nearest: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Give every empty cluster of 0..k-1 one row: the row farthest from its centre among
    clusters of two or more rows (ties: lowest row), one empty cluster at a time."""
    counts = np.bincount(nearest, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return nearest
    nearest, dist = nearest.copy(), dist.copy()
    for j in empty:
        movable = np.where(counts[nearest] >= 2, dist, -np.inf)
        row = int(np.argmax(movable))
        counts[nearest[row]] -= 1
        nearest[row], dist[row], counts[j] = j, 0.0, 1
    return nearest


def kmeans(x: np.ndarray, k: int, seed: int, *, iters: int = 100, batch_size: int = 4096,
           init_sample: int = 20000) -> np.ndarray:
    """Mini-batch k-means centroids (k, d) of ``x`` (n, d).

    Each step draws ``batch_size`` rows, assigns them to their nearest centroid and moves
    every centroid to the running mean of all rows assigned to it so far
    (``c <- c + (sum_batch - m c) / v`` with v the centroid's running count, m its batch
    count). Memory: O(k d + batch_size (d + k)) besides ``x``.
    """
    n = x.shape[0]
    check_k(k, n)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max(init_sample, k)), replace=False))
    centroids = kmeans_plus_plus(as_compute(x[sample]), k, rng).astype(np.float64)
    seen = np.zeros(k, dtype=np.float64)
    for _ in range(iters):
        batch = as_compute(x[np.sort(rng.integers(0, n, size=min(batch_size, n)))])
        nearest = squared_distances(batch, centroids.astype(batch.dtype)).argmin(axis=1)
        counts = np.bincount(nearest, minlength=k).astype(np.float64)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, batch)
        seen += counts
        hit = counts > 0
        centroids[hit] += (sums[hit] - counts[hit, None] * centroids[hit]) / seen[hit, None]
    return centroids


KMEANS: dict[str, Callable[[np.ndarray, LatentConfig, int], np.ndarray]] = {
    "faiss": lambda x, cfg, seed: faiss_kmeans(
        x, cfg.k, seed, iters=cfg.kmeans_lloyd_iters, n_init=cfg.kmeans_n_init,
        points_per_centroid=cfg.kmeans_points_per_centroid, init_sample=cfg.kmeans_init_sample),
    "minibatch": lambda x, cfg, seed: kmeans(
        x, cfg.k, seed, iters=cfg.kmeans_iters, batch_size=cfg.kmeans_batch_size,
        init_sample=cfg.kmeans_init_sample),
}


def kmeans_centroids(x: np.ndarray, cfg: LatentConfig, seed: int) -> np.ndarray:
    """Centroids (k, d) by ``latent.kmeans_impl`` (``auto``: faiss when installed)."""
    impl = cfg.kmeans_impl
    if impl == "auto":
        impl = "faiss" if faiss_available() else "minibatch"
    if impl == "faiss" and not faiss_available():
        raise SasRayError("latent.kmeans_impl faiss but faiss is not installed; pip install "
                          "faiss-cpu, or pass --latent.kmeans_impl minibatch")
    if impl not in KMEANS:
        raise SasRayError(f"unknown latent.kmeans_impl '{impl}'; use auto, faiss or minibatch")
    return KMEANS[impl](x, cfg, seed)


# ---------------------------------------------------------------- few labels
def reveal_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of revealed rows: ``max(1, round(fraction * n_c))`` known rows of every
    class c, drawn under ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise SasRayError(f"latent.label_fraction {fraction} is out of range (0, 1]; pass "
                          "e.g. --latent.label_fraction 0.01")
    rng = np.random.default_rng(seed)
    revealed = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == c)
        take = max(1, round(fraction * rows.size))
        revealed[rng.permutation(rows)[:take]] = True
    return revealed


def fit_linear_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int,
                          l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression ``softmax(x W + b)`` by L-BFGS, mean cross-entropy
    plus ``l2 ||W||^2``; returns W (d, c) and b (c,)."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    yt = torch.from_numpy(y)
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt)
        loss = loss + l2 * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy(), bias.detach().numpy()


def classes_from_few_labels(x: np.ndarray, labels: np.ndarray, cfg: LatentConfig,
                            seed: int) -> np.ndarray:
    """Predicted class of every row from a linear classifier on a few revealed labels."""
    revealed = reveal_labels(labels, cfg.label_fraction, seed)
    values, y = np.unique(labels[revealed], return_inverse=True)
    if values.size < 2:
        raise SasRayError("few-labels needs labels of at least 2 classes; use "
                          "--latent.method kmeans for unlabeled data")
    weight, bias = fit_linear_classifier(as_compute(x[revealed]), y, values.size,
                                         steps=cfg.classifier_steps, l2=cfg.classifier_l2)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], 8192):
        logits = as_compute(x[start:start + 8192]) @ weight + bias
        out[start:start + logits.shape[0]] = values[logits.argmax(axis=1)]
    out[revealed] = labels[revealed]
    return out


# ---------------------------------------------------------------- small classes
def merge_small_classes(x: np.ndarray, classes: np.ndarray,
                        min_size: int) -> tuple[np.ndarray, dict[int, int]]:
    """Move every class with fewer than ``min_size`` rows into the class (of at least
    ``min_size`` rows) whose mean unit embedding has the highest cosine with its own."""
    values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    small = counts < min_size
    if not small.any():
        return classes, {}
    if small.all():
        raise SasRayError(f"every latent class has fewer than {min_size} rows "
                          f"({classes.shape[0]} rows in {values.size} classes); use fewer "
                          "classes (--latent.k) or more data")
    means = np.zeros((values.size, x.shape[1]))
    np.add.at(means, inverse, normalize_rows(x))
    means = normalize_rows(means / counts[:, None])
    sim = means[small] @ means[~small].T
    targets = values[~small][sim.argmax(axis=1)]
    merged = {int(s): int(t) for s, t in zip(values[small], targets, strict=True)}
    out = classes.copy()
    for s, t in merged.items():
        out[classes == s] = t
    return out, merged


# ---------------------------------------------------------------- entry point
def latent_classes(x: np.ndarray, labels: np.ndarray | None, cfg: LatentConfig,
                   seed: int, class_embeddings: np.ndarray | None = None) -> Partition:
    """Latent class of every row of ``x`` (n, d) by ``cfg.method``; labels: -1 = unknown.

    ``class_embeddings`` (C, d): the text embeddings of the class names that
    ``clip-zeroshot`` assigns rows to (:mod:`sas_ray.core.selection.zeroshot`).
    """
    check_embeddings(x)
    if labels is not None and labels.shape != (x.shape[0],):
        raise SasRayError(f"labels have shape {labels.shape} but there are {x.shape[0]} "
                          "embeddings; pass one label per row")
    known = labels is not None and bool((labels >= 0).any())
    if cfg.method == "labels":
        if labels is None or (labels < 0).any():
            missing = x.shape[0] if labels is None else int((labels < 0).sum())
            raise SasRayError(f"latent.method 'labels' needs every label but {missing} rows "
                              "have none; use --latent.method few-labels or kmeans")
        classes = labels.astype(np.int64)
    elif cfg.method == "few-labels":
        if not known:
            raise SasRayError("latent.method 'few-labels' needs some labels but the "
                              "embeddings have none; use --latent.method kmeans")
        classes = classes_from_few_labels(x, labels, cfg, seed)
    elif cfg.method == "kmeans":
        nearest, dist = assign_nearest(x, kmeans_centroids(x, cfg, seed))
        classes = fill_empty(nearest, dist, cfg.k)
    elif cfg.method == "clip-zeroshot":
        if class_embeddings is None:
            raise SasRayError("latent.method 'clip-zeroshot' needs the class names' text "
                              "embeddings; run it through `sas-ray latent` or the pipeline")
        classes = zeroshot_classes(x, class_embeddings)
    else:
        raise SasRayError(f"unknown latent.method '{cfg.method}'; use one of "
                          f"{', '.join(METHODS)}")
    classes, merged = merge_small_classes(x, classes, cfg.min_class_size)
    return Partition(classes=classes, method=cfg.method,
                     agreement=agreement(classes, labels) if known else None, merged=merged)
