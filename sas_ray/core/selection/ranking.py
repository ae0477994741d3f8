"""Rankings, per-class jobs and the nested, per-class-proportional apportionment.

Every selector returns a :class:`Ranking`: one global order of row indices, best first, such
that the subset for a fraction f is the prefix ``order[:m]`` with ``m = floor(f * n + 1/2)``
(round half up; f must lie in (0, 1] and give m >= 1).

Class-balanced strategies rank each latent class V_k on its own and interleave the class
orders with the *quota method* of apportionment (Balinski & Young 1975): rank h+1 goes to the
class with the largest ``|V_k| / (c_k + 1)`` among classes with ``c_k < (h + 1) |V_k| / n``
(ties: lowest class), where c_k counts class k among the first h ranks. This order is

* nested: the class counts of a prefix never decrease as the prefix grows, and
* within quota: every prefix of size m holds ``floor(m |V_k| / n)`` or ``ceil(m |V_k| / n)``
  rows of class k, i.e. within 1 of the proportional share ``(m / n) |V_k|``, and the
  counts sum to exactly m.

Since m rounds f n half up, a class's count is within ``1 + |V_k| / (2 n)`` of
``f |V_k|`` itself. (Sorting by ``(position_in_class + 1) / |V_k|`` would be nested too, but
that is D'Hondt's divisor method, which can exceed a class's share by many rows: 90 rows
and ten singletons cut at 50 give the big class 50 instead of 45.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sas_ray.core.selection.similarity import check_embeddings
from sas_ray.errors import SasRayError


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1]; a clear error otherwise."""
    f = float(fraction)
    if not math.isfinite(f) or f <= 0.0 or f > 1.0:
        raise SasRayError(f"fraction {fraction} is out of range (0, 1]; pass a fraction such "
                          "as 0.4 (the share of examples to keep)")
    return f


def subset_size(fraction: float, n: int) -> int:
    """Rows kept at ``fraction`` of n: ``floor(f * n + 1/2)``; at least one row."""
    f = check_fraction(fraction)
    m = min(n, math.floor(f * n + 0.5))
    if m < 1:
        raise SasRayError(f"fraction {fraction} of {n} examples keeps no example; pass a "
                          f"fraction of at least {1 / (2 * n):.3g}")
    return m


def quota_sequence(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """The class position (index into ``sizes``) of every global rank, shape (sum(sizes),).

    Quota method with priority ``sizes[k] / (c_k + 1)`` (ties: lowest k); class k is eligible
    for rank h (0-based) once ``h >= floor(c_k * n / sizes[k])``. O(n log K) with two heaps.
    """
    sizes = [int(s) for s in sizes]
    n = sum(sizes)
    counts = [0] * len(sizes)
    waiting = [(0, k) for k in range(len(sizes)) if sizes[k] > 0]  # (eligible from rank, k)
    heapq.heapify(waiting)
    eligible: list[tuple[float, int]] = []  # (-priority, k)
    seq = np.empty(n, dtype=np.int64)
    for h in range(n):
        while waiting and waiting[0][0] <= h:
            _, k = heapq.heappop(waiting)
            heapq.heappush(eligible, (-sizes[k] / (counts[k] + 1), k))
        _, k = heapq.heappop(eligible)
        seq[h] = k
        counts[k] += 1
        if counts[k] < sizes[k]:
            heapq.heappush(waiting, (counts[k] * n // sizes[k], k))
    return seq


def class_budgets(sizes: Sequence[int] | np.ndarray, m: int) -> np.ndarray:
    """Rows per class in the first m ranks of :func:`quota_sequence`; sums to m."""
    return np.bincount(quota_sequence(sizes)[:m], minlength=len(sizes))


@dataclass(frozen=True)
class ClassJob:
    """One latent class to rank: its rows (ascending), its budget and its random seed."""

    index: int  # position of the class among the sorted class values
    label: int  # latent class value
    rows: np.ndarray  # (n_k,) int64 row indices into the embeddings, ascending
    budget: int | None  # rows to keep for a non-nested strategy; None: rank all
    seed: int
    limit: int | None = None  # rows a rank-limited strategy must rank exactly; None: all

    def rng(self) -> np.random.Generator:
        """A generator that depends on the seed and the class only (not on scheduling)."""
        return np.random.default_rng([self.seed % 2**64, self.index])


@dataclass(frozen=True)
class ClassOrder:
    """A ranking within one class: ``order`` holds positions into ``job.rows``, best first."""

    order: np.ndarray  # (n_k,) int64
    scores: np.ndarray  # (n_k,) float64, score of order[i]


ClassFn = Callable[[np.ndarray, ClassJob], ClassOrder]
ClassMap = Callable[[ClassFn, np.ndarray, Sequence[ClassJob]], list[ClassOrder]]


def rank_classes(fn: ClassFn, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
    """Rank a group of classes of ``x``: by ``fn.batch(x, jobs)`` where ``fn`` ranks classes
    together (SAS batches them on one device), else by ``fn`` class after class."""
    batch = getattr(fn, "batch", None)
    return batch(x, jobs) if batch is not None else [fn(x[job.rows], job) for job in jobs]


def map_serial(fn: ClassFn, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
    """Rank classes in this process (the executors map groups of them to tasks/processes)."""
    return rank_classes(fn, x, jobs)


def check_inputs(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                 labels: np.ndarray | None = None) -> None:
    """Shapes, finiteness, fraction and class sizes every selector relies on; one-line
    errors."""
    if fraction is not None:
        check_fraction(fraction)
    check_embeddings(embeddings)
    n = embeddings.shape[0]
    if latent.ndim != 1 or latent.shape[0] != n:
        raise SasRayError(f"latent classes have shape {latent.shape} but there are {n} "
                          "embeddings; pass one latent class per embedding row (same order)")
    if not np.issubdtype(latent.dtype, np.integer):
        raise SasRayError(f"latent classes must be integers, got {latent.dtype}; pass the "
                          "latent_class column of a partition artifact")
    if labels is not None and labels.shape != (n,):
        raise SasRayError(f"labels have shape {labels.shape} but there are {n} embeddings; "
                          "pass one label per embedding row (same order)")
    values, counts = np.unique(latent, return_counts=True)
    small = values[counts < 2]
    if small.size:
        raise SasRayError(f"{small.size} latent class(es) have a single member (e.g. class "
                          f"{int(small[0])}); selection ranks within classes of at least 2: "
                          "re-run the latent stage (it merges classes below "
                          "--latent.min_class_size) or use fewer k-means clusters")


def class_jobs(latent: np.ndarray, seed: int, fraction: float | None = None,
               limit: float = 1.0) -> list[ClassJob]:
    """One job per latent class (ascending class value), with quota budgets when a fraction
    is given, and with the class's quota count at fraction ``limit`` as ``job.limit`` when
    ``limit`` < 1 (the rows every cut up to ``limit`` can take from the class)."""
    values, inverse = np.unique(latent, return_inverse=True)
    members = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(values))
    splits = np.split(members, np.cumsum(sizes)[:-1])
    budgets = (class_budgets(sizes, subset_size(fraction, latent.shape[0]))
               if fraction is not None else [None] * len(values))
    limits = (class_budgets(sizes, subset_size(limit, latent.shape[0])) if limit < 1.0
              else [None] * len(values))
    return [ClassJob(index=i, label=int(values[i]), rows=splits[i].astype(np.int64),
                     budget=None if budgets[i] is None else int(budgets[i]), seed=int(seed),
                     limit=None if limits[i] is None else int(limits[i]))
            for i in range(len(values))]


@dataclass(frozen=True)
class Ranking:
    """A global order of rows, best first; a subset is a prefix (see the module docstring)."""

    order: np.ndarray  # (n,) int64 row indices, best first
    scores: np.ndarray  # (n,) float64, the strategy's within-class score of row order[i]
    latent: np.ndarray  # (n,) int64 latent class of each row (indexed by row, not by rank)
    nested: bool  # True: the prefix of every size is the strategy's subset of that size
    balanced: bool  # True: every prefix is per-class proportional (quota method)
    fraction: float | None = None  # the only fraction a non-nested ranking is valid for
    limit: float = 1.0  # prefixes are the strategy's subsets up to this fraction only

    def size(self, fraction: float | None = None) -> int:
        """Rows in the subset at ``fraction`` (non-nested rankings: their own fraction)."""
        if fraction is None:
            if self.nested:
                raise SasRayError("a nested ranking needs a fraction to cut; pass e.g. "
                                  "--fraction 0.4")
            fraction = self.fraction
        elif not self.nested and not math.isclose(fraction, self.fraction or -1.0):
            raise SasRayError(f"this ranking was built for fraction {self.fraction} only (the "
                              f"strategy is not nested); re-run select with --fraction "
                              f"{fraction}")
        m = subset_size(fraction, self.order.shape[0])
        if m > subset_size(self.limit, self.order.shape[0]):
            raise SasRayError(f"this ranking is ranked up to fraction {self.limit} only "
                              f"(select.rank_limit); re-run select with --select.rank_limit "
                              f"{fraction}")
        return m

    def cut(self, fraction: float | None = None) -> np.ndarray:
        """Row indices of the subset at ``fraction``: ``order[:floor(f n + 1/2)]``."""
        return self.order[: self.size(fraction)]

    @classmethod
    def from_class_orders(cls, latent: np.ndarray, jobs: Sequence[ClassJob],
                          results: Sequence[ClassOrder], *, nested: bool,
                          fraction: float | None = None, limit: float = 1.0) -> Ranking:
        """Interleave per-class orders by the quota sequence of the class sizes."""
        sizes = [job.rows.shape[0] for job in jobs]
        for job, res in zip(jobs, results, strict=True):
            if res.order.shape[0] != job.rows.shape[0]:
                raise RuntimeError(f"class {job.label}: ranked {res.order.shape[0]} of "
                                   f"{job.rows.shape[0]} rows")
        slots = np.argsort(quota_sequence(sizes), kind="stable")  # class 0's ranks, class 1's..
        n = latent.shape[0]
        order = np.empty(n, dtype=np.int64)
        scores = np.empty(n, dtype=np.float64)
        order[slots] = np.concatenate([job.rows[res.order]
                                       for job, res in zip(jobs, results, strict=True)])
        scores[slots] = np.concatenate([res.scores for res in results])
        return cls(order=order, scores=scores, latent=latent.astype(np.int64, copy=False),
                   nested=nested, balanced=True, fraction=fraction, limit=limit)
