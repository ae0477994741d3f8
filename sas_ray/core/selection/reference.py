"""``sas-reference``: the ranking rule of the authors' public SAS code, for comparison.

That code's lazy greedy zeroes a *row* where it means a column, so its penalty term is
always 0 and the "greedy" reduces to sorting each latent class by

    score_i = sum_{j in V_k} max(cos(x_i, x_j), 0)      (diagonal included)

in descending order, keeping the first ``floor(f |V_k|)`` rows of each class. Here the same
within-class order (ties: lowest row) is interleaved by the quota method like every other
balanced strategy, so a cut keeps ``floor`` or ``ceil`` of ``(m / n) |V_k|`` per class and
sums to exactly m; where ``f |V_k|`` is an integer for every class the subsets coincide.
Similarities are cosines (rows normalised) with negatives clipped to 0, as in that code;
``select.similarity_floor`` does not apply.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from sas_ray.config import SelectConfig
from sas_ray.core.selection.ranking import (
    ClassJob,
    ClassMap,
    ClassOrder,
    Ranking,
    check_inputs,
    class_jobs,
    map_serial,
)
from sas_ray.core.selection.similarity import normalize_rows, row_sums

REFERENCE_FLOOR = 0.0


def reference_class_order(x: np.ndarray, job: ClassJob, *, block_size: int) -> ClassOrder:
    """Sort one class by its summed non-negative cosine similarity, descending."""
    score = row_sums(normalize_rows(x), REFERENCE_FLOOR, block_size)
    order = np.argsort(-score, kind="stable")
    return ClassOrder(order=order, scores=score[order])


def select_sas_reference(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                         seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                         map_classes: ClassMap = map_serial) -> Ranking:
    """The reference code's per-class ranking (nested); ``seed`` and ``labels`` are unused."""
    check_inputs(embeddings, latent, fraction, labels)
    jobs = class_jobs(latent, seed)
    fn = partial(reference_class_order, block_size=cfg.block_size)
    results = map_classes(fn, np.asarray(embeddings), jobs)
    return Ranking.from_class_orders(latent, jobs, results, nested=True)
