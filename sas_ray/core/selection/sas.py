"""SAS: per latent class, greedily maximise the augmentation-similarity cut.

For a latent class V with similarities s (see :mod:`~sas_ray.core.selection.similarity`), SAS
maximises the non-monotone submodular cut function

    F(S) = sum_{i in V \\ S} sum_{j in S} s_ij

under |S| = r. Greedy adds ``argmax_e F(e | S)``, where for symmetric s

    F(e | S) = F(S + e) - F(S) = rowsum_e - s_ee - 2 * sum_{j in S} s_je.

A running vector ``g = rowsum - diag - 2 * S[:, selected].sum(1)`` makes each step O(n):
after picking e, ``g -= 2 * s[:, e]``. Greedy continues past the point where gains turn
negative and ranks *all* n rows, so the order is nested: its first r rows are the greedy
solution for every budget r, and one ranking serves every fraction. Ties go to the lowest
row. Cost per class: O(n^2 d) for the similarities plus O(n^2) for the greedy steps; memory
O(n^2) when the (n, n) matrix fits in ``select.matrix_mb``, else O(n d) with each needed
column ``s[:, e] = x @ x_e`` computed when e is picked.

Double-greedy refinement (``select.double_greedy``; not nested, needs a fraction): for a
budget r per class, run Buchbinder et al.'s (2012) double greedy for unconstrained
submodular maximisation, visiting elements in the greedy order, with X = {} and Y = V:
for element u, ``a = F(X + u) - F(X)``, ``b = F(Y - u) - F(Y)``; the *deterministic* rule
adds u to X when a >= b, else removes it from Y; the *randomized* rule adds u with
probability a+ / (a+ + b+) (1 when both are 0). To respect |S| = r, u is forced out of Y
once |X| = r and forced into X once |Y| = r, so X = Y has exactly r rows at the end (the
unconstrained 1/3 and 1/2 guarantees do not carry over to this constrained variant). The
refined set replaces the greedy prefix of size r only when its cut value is strictly
larger, so refinement never lowers F. The class order is then: refined set (in greedy
order), then the other rows (in greedy order); scores stay the greedy gains.
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
from sas_ray.core.selection.similarity import Columns, as_compute, row_sums, self_similarity
from sas_ray.errors import SasRayError

DOUBLE_GREEDY_RULES = ("deterministic", "randomized")


def greedy_cut(columns: Columns, rowsum: np.ndarray, diag: np.ndarray) -> ClassOrder:
    """Rank all n rows by greedy maximisation of F; scores are the marginal gains."""
    n = rowsum.shape[0]
    half = (rowsum - diag) / 2.0  # F(e | S) / 2, so each step is one in-place subtraction
    order = np.empty(n, dtype=np.int64)
    picked = np.empty(n, dtype=np.float64)
    for t in range(n):
        e = int(half.argmax())  # first maximum: ties go to the lowest row
        order[t], picked[t] = e, 2.0 * half[e]  # scaling by 2 is exact in floating point
        np.subtract(half, columns(e), out=half)
        half[e] = -np.inf
    return ClassOrder(order=order, scores=picked)


def double_greedy(columns: Columns, rowsum: np.ndarray, diag: np.ndarray, visit: np.ndarray,
                  budget: int, rule: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Cardinality-constrained double greedy (see the module docstring).

    ``visit`` is the order elements are decided in. Returns a boolean mask of the chosen
    ``budget`` rows and their cut value F.
    """
    n = rowsum.shape[0]
    in_x = np.zeros(n, dtype=bool)
    sim_to_x = np.zeros(n, dtype=np.float64)  # sum_{j in X} s_ij
    sim_to_y = rowsum.copy()  # sum_{j in Y} s_ij, Y = V at the start (diagonal included)
    size_x, size_y = 0, n
    for u in visit:
        if size_x == budget:
            add = False
        elif size_y == budget:
            add = True
        else:
            a = rowsum[u] - diag[u] - 2.0 * sim_to_x[u]  # F(X + u) - F(X)
            b = 2.0 * sim_to_y[u] - rowsum[u] - diag[u]  # F(Y - u) - F(Y)
            if rule == "deterministic":
                add = a >= b
            else:
                a, b = max(a, 0.0), max(b, 0.0)
                add = a + b == 0.0 or rng.random() < a / (a + b)
        if add:
            in_x[u] = True
            sim_to_x += columns(u)
            size_x += 1
        else:
            sim_to_y -= columns(u)
            size_y -= 1
    value = float(sim_to_x[~in_x].sum())  # F(X) = sum_{i not in X} sum_{j in X} s_ij
    return in_x, value


def sas_class_order(x: np.ndarray, job: ClassJob, *, floor: float | None, matrix_mb: float,
                    block_size: int, refine: str | None) -> ClassOrder:
    """SAS ranking of one class ``x`` (n_k, d): greedy, optionally refined by double greedy."""
    columns = Columns(x, floor, matrix_mb)
    if floor is not None and columns.matrix is not None:
        rowsum = columns.matrix.sum(axis=1, dtype=np.float64)
    else:  # O(n d) without a floor; blocked products with one
        rowsum = row_sums(x, floor, block_size)
    diag = self_similarity(x, floor)
    greedy = greedy_cut(columns, rowsum, diag)
    if refine is None or job.budget is None:
        return greedy
    in_x, value = double_greedy(columns, rowsum, diag, greedy.order, job.budget, refine,
                                job.rng())
    if value <= float(greedy.scores[: job.budget].sum()):  # F(greedy prefix) telescopes
        return greedy
    first = in_x[greedy.order]
    order = np.concatenate([greedy.order[first], greedy.order[~first]])
    scores = np.concatenate([greedy.scores[first], greedy.scores[~first]])
    return ClassOrder(order=order, scores=scores)


def select_sas(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None, seed: int,
               cfg: SelectConfig, labels: np.ndarray | None = None, *,
               map_classes: ClassMap = map_serial) -> Ranking:
    """SAS ranking of every row (nested), or of one fraction with double-greedy refinement.

    ``embeddings`` (n, d): mean unit view embeddings; ``latent`` (n,): latent class per row.
    ``labels`` are not used. ``map_classes`` runs the per-class work (serially by default).
    """
    check_inputs(embeddings, latent, fraction, labels)
    refine = None
    if cfg.double_greedy:
        refine = cfg.double_greedy_rule
        if refine not in DOUBLE_GREEDY_RULES:
            raise SasRayError(f"unknown select.double_greedy_rule '{refine}'; use one of "
                              f"{', '.join(DOUBLE_GREEDY_RULES)}")
        if fraction is None:
            raise SasRayError("double-greedy refinement selects for one fraction (it is not "
                              "nested); pass --fraction or set --select.double_greedy false")
    jobs = class_jobs(latent, seed, fraction if refine else None)
    fn = partial(sas_class_order, floor=cfg.similarity_floor, matrix_mb=cfg.matrix_mb,
                 block_size=cfg.block_size, refine=refine)
    results = map_classes(fn, as_compute(embeddings), jobs)
    return Ranking.from_class_orders(latent, jobs, results, nested=refine is None,
                                     fraction=fraction if refine else None)
