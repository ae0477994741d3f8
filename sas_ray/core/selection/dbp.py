"""Density-based pruning (DBP; Abbas et al. 2024, "Effective pruning of web-scale datasets
based on complexity of concept clusters").

Unit rows are clustered by the project's k-means (:func:`~sas_ray.core.selection.hkmeans.
centroids_of`: faiss when installed) into
``select.dbp_clusters`` clusters (0: ``round(sqrt(n))``; empty clusters dropped), with unit
centroids c_j. Each cluster's complexity is

    d_intra_j = mean_{i in j} (1 - x_i . c_j)           (how spread the cluster is)
    d_inter_j = mean of (1 - c_j . c_l) over the ``select.dbp_neighbors`` nearest other
                centroids l                             (how isolated it is)
    C_j = d_inter_j * d_intra_j

and a budget of m rows is split as ``N_j = m * softmax(C / tau)_j`` (tau =
``select.dbp_temperature``), capped at the cluster size with the excess spread over the other
clusters in the same proportions. Dense, central clusters (low complexity) are pruned
hardest. Within a cluster rows come by ``select.dbp_within``: ``random`` (a seeded uniform
order), ``easy`` (closest to the centroid first) or ``hard`` (farthest first).

Nested: the j-th row (0-based) of cluster j's order gets the key
``log((i + 1/2) / w_j)`` with ``w = softmax(C / tau)``, and the global order sorts the keys
(ties: lower cluster, then within-cluster order). A prefix of any length then holds
``min(|j|, round(t w_j))`` rows of cluster j for the t at which the prefix ends: the
Sainte-Lague (Webster) apportionment of the capped proportional split, the same for every
budget, so one ranking serves every fraction. Counts, not keep rates, are proportional to
the weights (as in the paper); with clusters of equal size the keep rates follow the
complexity order. The method ignores the latent classes (it clusters on its own) and is
not class-proportional (``balanced=False``). Score: the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sas_ray.config import SelectConfig
from sas_ray.core.selection.hkmeans import centroids_of, compact, within_group_rank
from sas_ray.core.selection.latent import assign_nearest
from sas_ray.core.selection.ranking import ClassMap, Ranking, check_inputs, map_serial
from sas_ray.core.selection.similarity import normalize_rows
from sas_ray.errors import SasRayError

WITHIN_RULES = ("random", "easy", "hard")


@dataclass(frozen=True)
class Complexity:
    """Per-cluster distances and complexity, shape (k,) each."""

    intra: np.ndarray
    inter: np.ndarray
    complexity: np.ndarray


def cluster_complexity(xn: np.ndarray, assignment: np.ndarray, centroids: np.ndarray,
                       neighbors: int) -> Complexity:
    """``d_intra``, ``d_inter`` and ``C = d_inter * d_intra`` of every cluster (module
    docstring); ``xn`` (n, d) unit rows, ``assignment`` (n,) in 0..k-1, ``centroids`` (k, d)."""
    k = centroids.shape[0]
    cn = normalize_rows(centroids)
    to_centroid = 1.0 - np.einsum("ij,ij->i", xn, cn[assignment]).astype(np.float64)
    intra = np.bincount(assignment, to_centroid, k) / np.bincount(assignment, minlength=k)
    if k == 1:
        inter = np.ones(1)
    else:
        dist = 1.0 - (cn @ cn.T).astype(np.float64)
        np.fill_diagonal(dist, np.inf)
        near = np.sort(dist, axis=1)[:, : min(neighbors, k - 1)]
        inter = near.mean(axis=1)
    return Complexity(intra=intra, inter=inter, complexity=inter * intra)


def log_weights(complexity: np.ndarray, temperature: float) -> np.ndarray:
    """``log softmax(C / tau)``, computed stably."""
    z = complexity / temperature
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def nested_keys(cluster: np.ndarray, within_rank: np.ndarray, log_w: np.ndarray) -> np.ndarray:
    """Key ``log((i + 1/2) / w_j)`` of every row (row = the i-th of cluster j)."""
    return np.log(within_rank + 0.5) - log_w[cluster]


@dataclass(frozen=True)
class Clusters:
    """DBP's clusters of the rows: assignment (n,), squared distance to the centroid (n,)
    and each cluster's complexity."""

    assignment: np.ndarray
    distance: np.ndarray
    complexity: Complexity


def dbp_clusters(xn: np.ndarray, cfg: SelectConfig, rng: np.random.Generator) -> Clusters:
    """k-means of the unit rows ``xn`` (n, d) into ``select.dbp_clusters`` clusters (0:
    round(sqrt(n))), empty ones dropped, and their complexity."""
    n = xn.shape[0]
    k = min(n, cfg.dbp_clusters or max(1, round(np.sqrt(n))))
    centroids = centroids_of(xn, k, rng)
    assignment, dist = assign_nearest(xn, centroids)
    assignment, centroids = compact(assignment, centroids)
    return Clusters(assignment=assignment, distance=dist,
                    complexity=cluster_complexity(xn, assignment, centroids, cfg.dbp_neighbors))


def select_dbp(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None, seed: int,
               cfg: SelectConfig, labels: np.ndarray | None = None, *,
               map_classes: ClassMap = map_serial) -> Ranking:
    """DBP order of all rows (nested; ignores the latent classes and the labels);
    ``embeddings`` (n, d); settings: ``select.dbp_*``."""
    check_inputs(embeddings, latent, fraction, labels)
    if cfg.dbp_within not in WITHIN_RULES:
        raise SasRayError(f"unknown select.dbp_within '{cfg.dbp_within}'; use one of "
                          f"{', '.join(WITHIN_RULES)}")
    rng = np.random.default_rng(seed % 2**64)
    cl = dbp_clusters(normalize_rows(embeddings), cfg, rng)
    within = {"random": lambda: rng.random(cl.assignment.size), "easy": lambda: cl.distance,
              "hard": lambda: -cl.distance}[cfg.dbp_within]()
    rank = within_group_rank(cl.assignment, within)
    keys = nested_keys(cl.assignment, rank,
                       log_weights(cl.complexity.complexity, cfg.dbp_temperature))
    order = np.lexsort((rank, cl.assignment, keys))
    return Ranking(order=order, scores=keys[order], latent=latent.astype(np.int64, copy=False),
                   nested=True, balanced=False)
