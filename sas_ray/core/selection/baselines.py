"""Baselines that need no labels: random, SSL prototypes, k-center, SemDeDup.

All but ``random`` rank within each latent class and are interleaved by the quota method
(:mod:`~sas_ray.core.selection.ranking`), so they differ from SAS only in the within-class
criterion; every one is nested. Distances are on the embeddings as given (mean unit view
embeddings); prototypes and SemDeDup use cosines of unit-normalised rows.

* ``random``: a uniform random order of all rows (seeded); a prefix is a uniform sample,
  not class balanced.
* ``random-balanced``: a uniform random order within each class; every prefix keeps the
  same share of each class.
* ``prototypes-easy`` / ``prototypes-hard`` (Sorscher et al. 2022): prototypes are the
  ``select.clusters_per_class`` k-means centroids of each latent class (1: the class mean;
  with ``latent.method kmeans`` the classes are their global k-means clusters); score =
  cosine distance to the nearest prototype; easy keeps the closest first, hard the farthest.
* ``kcenter``: greedy k-center (farthest-point) coreset (Gonzalez 1985; Sener & Savarese
  2018) within each class, started at the row closest to the class mean; score = Euclidean
  distance to the rows already picked when a row is picked (inf for the first).
* ``semdedup`` (Abbas et al. 2023): within each k-means cluster, rows are visited from least
  to most similar to the cluster centroid (SemDeDup's default: of a group of duplicates,
  keep the one farthest from the centroid), and each gets ``M_i = max cos(x_i, x_u)`` over
  rows u visited before it (-1 for the first). SemDeDup at threshold eps keeps
  ``{i : M_i <= 1 - eps}``, which grows with eps; ranking by ascending M (ties: visit
  order, then row) makes the budget pick the threshold: the first r rows of a class are
  SemDeDup's output for the eps at which r rows survive.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from sas_ray.config import SelectConfig
from sas_ray.core.selection.latent import assign_nearest, kmeans
from sas_ray.core.selection.ranking import (
    ClassFn,
    ClassJob,
    ClassMap,
    ClassOrder,
    Ranking,
    check_inputs,
    class_jobs,
    map_serial,
)
from sas_ray.core.selection.similarity import Columns, as_compute, normalize_rows


def select_random(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                  seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                  map_classes: ClassMap = map_serial) -> Ranking:
    """Uniform random order of all rows; score = the uniform key (ascending)."""
    check_inputs(embeddings, latent, fraction, labels)
    keys = np.random.default_rng(seed % 2**64).random(latent.shape[0])
    order = np.argsort(keys, kind="stable")
    return Ranking(order=order, scores=keys[order], latent=latent.astype(np.int64, copy=False),
                   nested=True, balanced=False)


def random_class_order(x: np.ndarray, job: ClassJob) -> ClassOrder:
    keys = job.rng().random(x.shape[0])
    order = np.argsort(keys, kind="stable")
    return ClassOrder(order=order, scores=keys[order])


def class_prototypes(xn: np.ndarray, job: ClassJob, clusters: int) -> np.ndarray:
    """Unit-normalised k-means centroids (p, d) of unit rows ``xn``; p = 1: the mean."""
    if clusters <= 1:
        return normalize_rows(xn.mean(axis=0, keepdims=True))
    seed = int(job.rng().integers(2**32))
    return normalize_rows(kmeans(xn, min(clusters, xn.shape[0]), seed))


def prototype_class_order(x: np.ndarray, job: ClassJob, *, clusters: int,
                          hardest_first: bool) -> ClassOrder:
    xn = normalize_rows(x)
    distance = 1.0 - (xn @ class_prototypes(xn, job, clusters).T).max(axis=1)
    order = np.argsort(-distance if hardest_first else distance, kind="stable")
    return ClassOrder(order=order, scores=distance[order].astype(np.float64))


def kcenter_class_order(x: np.ndarray, job: ClassJob, *, matrix_mb: float) -> ClassOrder:
    """Farthest-point order: each step picks the row farthest from those already picked."""
    n = x.shape[0]
    dots = Columns(x, None, matrix_mb)
    sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    first = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
    nearest = np.full(n, np.inf)  # squared distance to the picked rows
    order = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float64)
    e = first
    for t in range(n):
        order[t], scores[t] = e, np.sqrt(max(nearest[e], 0.0))
        np.minimum(nearest, sq - 2.0 * dots(e) + sq[e], out=nearest)
        nearest[e] = -np.inf  # picked rows stay at -inf under later minima
        e = int(np.argmax(nearest))
    return ClassOrder(order=order, scores=scores)


def max_similarity_to_earlier(xv: np.ndarray, block_size: int) -> np.ndarray:
    """``M_t = max_{u < t} xv_t . xv_u`` for rows in visit order (-1 for t = 0), blocked."""
    n = xv.shape[0]
    out = np.full(n, -1.0)
    for start in range(1, n, block_size):
        stop = min(start + block_size, n)
        sims = xv[start:stop] @ xv[:stop].T  # (b, stop)
        later = np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]
        sims[later] = -np.inf
        out[start:stop] = np.maximum(sims.max(axis=1), -1.0)
    return out


def semdedup_class_order(x: np.ndarray, job: ClassJob, *, clusters: int,
                         block_size: int) -> ClassOrder:
    xn = normalize_rows(x)
    prototypes = class_prototypes(xn, job, clusters)
    cluster, _ = assign_nearest(xn, prototypes)
    dup = np.empty(x.shape[0], dtype=np.float64)
    visit_pos = np.empty(x.shape[0], dtype=np.int64)
    for c in np.unique(cluster):
        rows = np.flatnonzero(cluster == c)
        visit = rows[np.argsort(xn[rows] @ prototypes[c], kind="stable")]  # least central first
        dup[visit] = max_similarity_to_earlier(xn[visit], block_size)
        visit_pos[visit] = np.arange(visit.size)
    order = np.lexsort((np.arange(x.shape[0]), visit_pos, dup))
    return ClassOrder(order=order, scores=dup[order])


def select_per_class(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                     seed: int, labels: np.ndarray | None, fn: ClassFn,
                     map_classes: ClassMap) -> Ranking:
    """Validate, rank every class with ``fn`` (via ``map_classes``) and interleave."""
    check_inputs(embeddings, latent, fraction, labels)
    jobs = class_jobs(latent, seed)
    results = map_classes(fn, as_compute(embeddings), jobs)
    return Ranking.from_class_orders(latent, jobs, results, nested=True)


def select_random_balanced(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                           seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                           map_classes: ClassMap = map_serial) -> Ranking:
    """Uniform random order within each latent class, interleaved by quota."""
    return select_per_class(embeddings, latent, fraction, seed, labels, random_class_order,
                            map_classes)


def select_prototypes(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                      seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                      map_classes: ClassMap = map_serial, hardest_first: bool = False) -> Ranking:
    """Rows closest to (easy) or farthest from (hard) their class prototypes first."""
    fn = partial(prototype_class_order, clusters=cfg.clusters_per_class,
                 hardest_first=hardest_first)
    return select_per_class(embeddings, latent, fraction, seed, labels, fn, map_classes)


def select_kcenter(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                   seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                   map_classes: ClassMap = map_serial) -> Ranking:
    """Greedy k-center (farthest point) order within each latent class."""
    fn = partial(kcenter_class_order, matrix_mb=cfg.matrix_mb)
    return select_per_class(embeddings, latent, fraction, seed, labels, fn, map_classes)


def select_semdedup(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                    seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                    map_classes: ClassMap = map_serial) -> Ranking:
    """SemDeDup keep order: least duplicated rows first within each latent class."""
    fn = partial(semdedup_class_order, clusters=cfg.clusters_per_class,
                 block_size=cfg.block_size)
    return select_per_class(embeddings, latent, fraction, seed, labels, fn, map_classes)
