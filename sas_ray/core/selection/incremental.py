"""Incremental SAS: rank a grown pool by reusing an earlier ranking class by class.

An earlier SAS ranking stores, per latent class k, a :class:`ClassState`: the class's rows
best first (ids), their greedy gains, and a fingerprint of the class's rows (settings, class
value, ascending ids and the bytes of their embeddings). For the grown pool, every class k of
the new partition is

* ``reuse``d when its fingerprint equals the stored one (same rows, same embeddings): the
  stored order and gains are taken as they are (the stage copies the class file's bytes);
* ``extend``ed (``select.incremental_greedy extend``) when it only gained rows and its old
  rows' fingerprint equals the stored one: see :func:`extend_order`;
* ``rank``ed from scratch by :func:`~sas_ray.core.selection.sas.select_sas` otherwise (new
  classes, classes that lost or changed rows, and with ``incremental_greedy rerun`` every
  class that gained rows).

What equals a full recompute: SAS ranks each class on its own rows only, deterministically,
and the global order is the quota interleaving of the class orders by class size. So with
``incremental_greedy rerun`` and the same partition as a full run (e.g. ``latent.method
labels`` run on the grown embeddings), the incremental ranking *is* the full run's: ids,
ranks, scores and classes equal (reused classes were ranked on the same rows before). What is
an approximation: (1) ``extend``, see :func:`extend_order`; (2) new rows missing from the
partition the stage is given (e.g. the previous k-means partition) take the class of the
nearest class mean (:func:`nearest_classes`) instead of a re-run of the latent stage - a
k-means re-run moves every centroid, so it would touch every class.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

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
from sas_ray.core.selection.sas import select_sas
from sas_ray.core.selection.similarity import as_compute, normalize_rows, self_similarity
from sas_ray.errors import SasRayError

HOW = ("reuse", "extend", "rank")


@dataclass(frozen=True)
class ClassState:
    """One class of an earlier SAS ranking: its ids best first and their greedy gains."""

    ids: np.ndarray  # (n_k,) int64, best first
    scores: np.ndarray  # (n_k,) float64, gain of ids[i] when it was picked
    fingerprint: str


def class_fingerprint(settings: Mapping[str, Any], label: int, ids: np.ndarray,
                      x: np.ndarray) -> str:
    """sha256 of the settings, the class value, the ascending ``ids`` (n_k,) and the bytes of
    their embedding rows ``x`` (n_k, d) (dtype and shape included)."""
    h = hashlib.sha256(json.dumps({"settings": settings, "label": int(label),
                                   "dtype": str(x.dtype), "shape": list(x.shape)},
                                  sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def nearest_classes(x_new: np.ndarray, x_known: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Class of each row of ``x_new`` (m, d): the class of ``known`` (n,) (rows ``x_known``)
    whose mean unit embedding has the highest cosine with the unit row (ties: lower class)."""
    values, inverse = np.unique(known, return_inverse=True)
    means = np.zeros((values.size, x_known.shape[1]))
    np.add.at(means, inverse, normalize_rows(x_known))
    means = normalize_rows(means)
    out = np.empty(x_new.shape[0], dtype=np.int64)
    for start in range(0, x_new.shape[0], 8192):
        block = normalize_rows(x_new[start:start + 8192]) @ means.T
        out[start:start + block.shape[0]] = values[block.argmax(axis=1)]
    return out


class NewRowSimilarities:
    """Similarities ``s(new_i, e)`` of a class's m new rows to any of its rows, in float64:
    an (m, n_k) matrix when it fits in ``matrix_mb`` MiB (in x's dtype), else products on
    demand, O(m d) a column."""

    def __init__(self, x: np.ndarray, new: np.ndarray, floor: float | None, matrix_mb: float):
        self.x, self.new, self.floor = x, new, floor
        fits = new.size * x.shape[0] * x.dtype.itemsize <= matrix_mb * 2**20
        self.matrix = self._clip(x[new] @ x.T) if fits else None

    def _clip(self, s: np.ndarray) -> np.ndarray:
        return s if self.floor is None else np.maximum(s, self.floor, out=s)

    def column(self, e: int) -> np.ndarray:
        """``s(new, e)``, shape (m,)."""
        col = self.matrix[:, e] if self.matrix is not None else self._clip(self.x[self.new]
                                                                            @ self.x[e])
        return col.astype(np.float64)

    def row(self, i: int, rows: np.ndarray) -> np.ndarray:
        """``s(new_i, rows)``, shape (len(rows),)."""
        r = (self.matrix[i, rows] if self.matrix is not None else
             self._clip(self.x[rows] @ self.x[self.new[i]]))
        return r.astype(np.float64)

    def sums(self, old: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(row sum of every new row over the class (m,), sum over the new rows of every old
        row (n,)), in blocks of new rows."""
        rowsum = np.empty(self.new.size)
        to_new = np.zeros(old.size)
        for start in range(0, self.new.size, block_size):
            stop = min(start + block_size, self.new.size)
            blk = (self.matrix[start:stop] if self.matrix is not None else
                   self._clip(self.x[self.new[start:stop]] @ self.x.T))
            rowsum[start:stop] = blk.sum(axis=1, dtype=np.float64)
            to_new += blk[:, old].sum(axis=0, dtype=np.float64)
        return rowsum, to_new


def extend_order(x: np.ndarray, old: np.ndarray, gains: np.ndarray, floor: float | None,
                 matrix_mb: float = 1024, block_size: int = 4096) -> ClassOrder:
    """Greedy order of a class whose earlier order is kept for its old rows.

    ``x`` (n_k, d) the class's rows, ``old`` (n,) positions into x of the old rows in their
    earlier order, ``gains`` (n,) their earlier gains; the other m rows are new. Each step
    picks, among the next old row (in the earlier order) and every unpicked new row, the one
    of largest marginal gain ``F(e | S)`` on the grown class (ties: the old row, then the
    lowest new row). The gains are exact: for the next old row e = old[t], with P the old
    rows before it and Q the new rows picked so far,

        F(e | P + Q) = gains[t] + sum_{j new, not in Q} s_ej - sum_{j in Q} s_ej

    (its earlier gain counted P; the new rows add to its row sum), and new rows keep the
    running vector ``h = (rowsum - diag) / 2 - sum_{j in S} s_.j`` of plain greedy. So the
    scores are the true gains along this order and the first r sum to F of the first r rows.
    This is the plain greedy restricted to orders that keep the old rows' earlier order; it
    equals the full greedy whenever that one keeps it, which is not guaranteed (new rows
    change the old rows' row sums unevenly): an approximation, measured in
    ``benchmarks/incremental.py``. Cost O(m n_k d) for the similarities of the new rows and
    n_k steps of O(m) (plus O(n) per new row); the full greedy needs O(n_k^2 d).
    """
    n_k = x.shape[0]
    is_new = np.ones(n_k, dtype=bool)
    is_new[old] = False
    new = np.flatnonzero(is_new)
    m = new.size
    sims = NewRowSimilarities(x, new, floor, matrix_mb)
    rowsum, to_new = sims.sums(old, block_size)
    half = (rowsum - self_similarity(x[new], floor)) / 2.0  # F(j | {}) / 2 of new rows
    to_picked = np.zeros(old.size)  # sum_{j in Q} s_ej per old row (earlier order)
    order = np.empty(n_k, dtype=np.int64)
    scores = np.empty(n_k, dtype=np.float64)
    t = 0
    for step in range(n_k):
        j = int(half.argmax()) if m else -1
        best_new = 2.0 * half[j] if m else -np.inf
        gain_old = gains[t] + to_new[t] - 2.0 * to_picked[t] if t < old.size else -np.inf
        if t < old.size and gain_old >= best_new:
            order[step], scores[step] = old[t], gain_old
            if m:
                half -= sims.column(int(old[t]))
            t += 1
        else:
            order[step], scores[step] = new[j], best_new
            half -= sims.column(int(new[j]))
            half[j] = -np.inf
            to_picked += sims.row(j, old)
    return ClassOrder(order=order, scores=scores)


def extend_class(x: np.ndarray, job: ClassJob, *,
                 previous: Mapping[int, tuple[np.ndarray, np.ndarray]], floor: float | None,
                 matrix_mb: float, block_size: int) -> ClassOrder:
    """:func:`extend_order` of one class job; ``previous[label]`` = (old positions, gains)."""
    old, gains = previous[job.label]
    return extend_order(x, old, gains, floor, matrix_mb, block_size)


@dataclass(frozen=True)
class IncrementalResult:
    """The grown pool's ranking and, per class value, how it was obtained and its new
    fingerprint."""

    ranking: Ranking
    how: dict[int, str]
    fingerprints: dict[int, str]


def within_class_orders(ranking: Ranking, jobs: list[ClassJob]) -> list[ClassOrder]:
    """Each job's class order (positions into ``job.rows``) read off a global ranking."""
    by_rank = ranking.latent[ranking.order]
    out = []
    for job in jobs:
        mine = by_rank == job.label
        rows = ranking.order[mine]
        out.append(ClassOrder(order=np.searchsorted(job.rows, rows),
                              scores=ranking.scores[mine]))
    return out


def incremental_sas(x: np.ndarray, ids: np.ndarray, latent: np.ndarray,
                    states: Mapping[int, ClassState], settings: Mapping[str, Any], seed: int,
                    cfg: SelectConfig, *, greedy: str = "extend",
                    map_classes: ClassMap = map_serial) -> IncrementalResult:
    """SAS ranking of all rows of ``x`` (n, d) (``ids`` (n,) ascending, ``latent`` (n,))
    reusing the earlier ``states`` by class value (module docstring); ``settings`` go into
    the class fingerprints; ``greedy`` is ``extend`` or ``rerun``."""
    check_inputs(x, latent, None)
    if greedy not in ("extend", "rerun"):
        raise SasRayError(f"unknown select.incremental_greedy '{greedy}'; use extend or rerun")
    if cfg.double_greedy:
        raise SasRayError("incremental selection extends the nested greedy; set "
                          "--select.double_greedy false")
    jobs = class_jobs(latent, seed)
    how: dict[int, str] = {}
    fps: dict[int, str] = {}
    results: dict[int, ClassOrder] = {}
    previous: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for job in jobs:
        fps[job.label] = class_fingerprint(settings, job.label, ids[job.rows], x[job.rows])
        state = states.get(job.label)
        how[job.label] = "rank"
        if state is None:
            continue
        pos = np.searchsorted(ids[job.rows], state.ids).clip(max=job.rows.size - 1)
        if not np.array_equal(ids[job.rows][pos], state.ids):
            continue  # some old rows left the class
        if state.fingerprint == fps[job.label]:
            how[job.label] = "reuse"
            results[job.label] = ClassOrder(order=pos, scores=state.scores)
        elif greedy == "extend" and state.fingerprint == class_fingerprint(
                settings, job.label, np.sort(state.ids), x[job.rows[np.sort(pos)]]):
            how[job.label] = "extend"
            previous[job.label] = (pos, state.scores)
    extend = [job for job in jobs if how[job.label] == "extend"]
    fn = partial(extend_class, previous=previous, floor=cfg.similarity_floor,
                 matrix_mb=cfg.matrix_mb, block_size=cfg.block_size)
    results.update(zip([j.label for j in extend], map_classes(fn, as_compute(x), extend),
                       strict=True))
    fresh = [job for job in jobs if how[job.label] == "rank"]
    if fresh:
        rows = np.concatenate([job.rows for job in fresh])
        rows.sort()
        sub = select_sas(x[rows], latent[rows], None, seed, cfg, map_classes=map_classes)
        sub_jobs = [ClassJob(index=j.index, label=j.label, rows=np.searchsorted(rows, j.rows),
                             budget=None, seed=j.seed) for j in fresh]
        results.update(zip([j.label for j in fresh], within_class_orders(sub, sub_jobs),
                           strict=True))
    ranking = Ranking.from_class_orders(latent, jobs, [results[j.label] for j in jobs],
                                        nested=True)
    return IncrementalResult(ranking=ranking, how=how, fingerprints=fps)
