"""Hierarchical k-means with resampling and balanced hierarchical sampling (Vo et al. 2024).

"Automatic Data Curation for Self-Supervised Learning: A Clustering-Based Approach" (the
curation behind DINOv3's LVD-1689M). Rows are unit-normalised and clustered level by level:

* level 1 clusters the n rows into k_1 clusters; level l > 1 clusters the k_{l-1} centroids
  of level l-1 into k_l clusters (``select.hkmeans_clusters``; empty: ``k_l =
  round(n ** ((L - l + 1) / (L + 1)))`` for ``L = select.hkmeans_levels``, a geometric
  ladder from n down to the top level, each level at most the one below);
* each level runs k-means once, then ``select.hkmeans_resample_steps`` resampling steps
  (empty: 0 at level 1, 10 above, as in Vo et al.'s 4-level config): take the ``s``
  points of each cluster closest to its centroid (s = half the mean cluster size, Vo et
  al.'s rule; no resampling when s <= 1), re-run k-means on them, and re-assign every
  point. Resampling moves centroids from dense regions towards an even cover of the
  support, so a level's clusters split concepts rather than density.

k-means is :func:`sas_ray.core.selection.latent.kmeans_centroids` with the default latent
k-means settings (faiss when installed, else the mini-batch k-means), then nearest-centroid
assignment; empty clusters are dropped.

Balanced hierarchical sampling. For a budget m, Vo et al. give every top cluster the same
share, capped at its size, the cut level chosen so the shares sum to m (water-filling; the
remainder goes to random clusters above the cut), then split each cluster's share among its
children the same way, down to the level-1 clusters, which give their share by the
sampling rule (``select.hkmeans_sampling``: ``random`` rows, or the ``closest`` to the
centroid). Here the same allocation is a *ranking*: every node orders its rows by
round-robin over its children in a random child order fixed per node (round r takes the
r-th row of each child that still has one, children in that order). A prefix of length m
of a node's order then holds ``min(c_i, t)`` or ``t + 1`` rows of child i (capacity c_i),
the ``t + 1`` going to the first children above the cut in the node's order: the
water-filling allocation, its remainder on a uniformly random set of the children above
the cut, as in the original. So the method is nested: the prefix of every size is the
balanced sample of that size. It ignores the latent classes (it clusters on its own) and
is not class-proportional (``balanced=False``). Score: squared distance of the unit row to
its level-1 centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_ray.config import LatentConfig, SelectConfig
from sas_ray.core.selection.latent import assign_nearest, kmeans_centroids
from sas_ray.core.selection.ranking import ClassMap, Ranking, check_inputs, map_serial
from sas_ray.core.selection.similarity import normalize_rows
from sas_ray.errors import SasRayError

SAMPLING_RULES = ("random", "closest")
DEFAULT_RESAMPLE_STEPS = 10  # above level 1 (Vo et al.'s configs: none at the first level)


def level_sizes(n: int, levels: int, clusters: list[int]) -> list[int]:
    """Clusters per level: ``clusters`` if given, else ``round(n ** ((L - l + 1) / (L + 1)))``
    for l = 1..L; each level at most the number of points it clusters."""
    if levels < 1:
        raise SasRayError(f"select.hkmeans_levels is {levels}; use at least 1")
    if clusters and len(clusters) != levels:
        raise SasRayError(f"select.hkmeans_clusters has {len(clusters)} entries for "
                          f"{levels} levels (select.hkmeans_levels); give one per level or "
                          "leave it empty for the default ladder")
    ks = list(clusters) or [round(n ** ((levels - lv) / (levels + 1))) for lv in range(levels)]
    out, points = [], n
    for k in ks:
        points = max(1, min(int(k), points))
        out.append(points)
    return out


def resample_steps(levels: int, steps: list[int]) -> list[int]:
    """Resampling steps per level: ``steps`` if given, else 0 at level 1 and 10 above."""
    if steps and len(steps) != levels:
        raise SasRayError(f"select.hkmeans_resample_steps has {len(steps)} entries for "
                          f"{levels} levels; give one per level or leave it empty")
    return list(steps) or [0] + [DEFAULT_RESAMPLE_STEPS] * (levels - 1)


def within_group_rank(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Rank of every element within its ``group`` when sorted by ``keys`` (first key most
    significant; ties: element index)."""
    order = np.lexsort((np.arange(group.size), *reversed(keys), group))
    sorted_group = group[order]
    starts = np.searchsorted(sorted_group, sorted_group, side="left")
    rank = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - starts
    return rank


def centroids_of(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means centroids (k, d) of ``x`` by the project's k-means (default latent settings)."""
    return kmeans_centroids(x, LatentConfig(k=k), int(rng.integers(2**32)))


def compact(assignment: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty clusters: renumber ``assignment`` 0..k'-1 and keep the used centroids."""
    used, inverse = np.unique(assignment, return_inverse=True)
    return inverse.astype(np.int64), centroids[used]


def resampled_kmeans(x: np.ndarray, k: int, steps: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level: k-means of ``x`` (p, d), then ``steps`` resampling steps (module
    docstring). Returns (assignment (p,), centroids (k', d), squared distance (p,))."""
    centroids = centroids_of(x, k, rng)
    assignment, dist = assign_nearest(x, centroids)
    sample = x.shape[0] // k // 2  # half the mean cluster size
    for _ in range(steps if sample > 1 else 0):
        keep = within_group_rank(assignment, dist) < sample  # the closest rows per cluster
        centroids = centroids_of(x[keep], min(k, int(keep.sum())), rng)
        assignment, dist = assign_nearest(x, centroids)
    assignment, centroids = compact(assignment, centroids)
    return assignment, centroids, dist


@dataclass(frozen=True)
class Hierarchy:
    """The clusters of every level: ``parents[0]`` (n,) is the level-1 cluster of each row,
    ``parents[l]`` the level-(l+1) cluster of each level-l cluster, and the last entry maps
    the top clusters to the root (all 0)."""

    parents: list[np.ndarray]
    leaf_distance: np.ndarray  # (n,) squared distance of each unit row to its leaf centroid


def build_hierarchy(xn: np.ndarray, ks: list[int], steps: list[int],
                    rng: np.random.Generator) -> Hierarchy:
    """Hierarchical k-means of unit rows ``xn`` (n, d) with ``ks[l]`` clusters at level l+1."""
    parents, points, leaf_distance = [], xn, None
    for k, s in zip(ks, steps, strict=True):
        assignment, centroids, dist = resampled_kmeans(points, min(k, points.shape[0]), s, rng)
        parents.append(assignment)
        leaf_distance = dist if leaf_distance is None else leaf_distance
        points = centroids
    parents.append(np.zeros(points.shape[0], dtype=np.int64))
    return Hierarchy(parents=parents, leaf_distance=leaf_distance)


def sibling_positions(parents: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A random order of the children of every node: ``positions[l][i]`` is the place of
    level-l node i among its siblings (level 0 = the leaf clusters)."""
    return [within_group_rank(p, rng.random(p.size)) for p in parents[1:]]


def balanced_order(parents: list[np.ndarray], leaf_rank: np.ndarray,
                   positions: list[np.ndarray]) -> np.ndarray:
    """The nested balanced-sampling order of all rows, best first (module docstring).

    ``parents`` as in :class:`Hierarchy` (L + 1 arrays), ``leaf_rank`` (n,) each row's place
    in its leaf cluster's order, ``positions`` (L arrays) each node's place among its
    siblings. Each level sorts a node's rows by (round = rank in the child, child's place).
    """
    node, rank = parents[0], leaf_rank.astype(np.int64)
    for up, pos in zip(parents[1:], positions, strict=True):
        rank = within_group_rank(up[node], rank, pos[node])
        node = up[node]
    return np.argsort(rank, kind="stable")


def select_hkmeans(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                   seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                   map_classes: ClassMap = map_serial) -> Ranking:
    """Balanced hierarchical sampling order of all rows (nested; ignores the latent classes
    and the labels). ``embeddings`` (n, d); settings: ``select.hkmeans_*``."""
    check_inputs(embeddings, latent, fraction, labels)
    if cfg.hkmeans_sampling not in SAMPLING_RULES:
        raise SasRayError(f"unknown select.hkmeans_sampling '{cfg.hkmeans_sampling}'; use one "
                          f"of {', '.join(SAMPLING_RULES)}")
    n = embeddings.shape[0]
    ks = level_sizes(n, cfg.hkmeans_levels, cfg.hkmeans_clusters)
    steps = resample_steps(cfg.hkmeans_levels, cfg.hkmeans_resample_steps)
    rng = np.random.default_rng(seed % 2**64)
    tree = build_hierarchy(normalize_rows(embeddings), ks, steps, rng)
    within = (tree.leaf_distance if cfg.hkmeans_sampling == "closest" else rng.random(n))
    leaf_rank = within_group_rank(tree.parents[0], within)
    order = balanced_order(tree.parents, leaf_rank, sibling_positions(tree.parents, rng))
    return Ranking(order=order, scores=tree.leaf_distance[order].astype(np.float64),
                   latent=latent.astype(np.int64, copy=False), nested=True, balanced=False)
