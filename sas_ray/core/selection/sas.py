"""SAS: per latent class, greedily maximise the augmentation-similarity cut.

For a latent class V with similarities s (see :mod:`~sas_ray.core.selection.similarity`), SAS
maximises the non-monotone submodular cut function

    F(S) = sum_{i in V \\ S} sum_{j in S} s_ij

under |S| = r. Greedy adds ``argmax_e F(e | S)``, where for symmetric s

    F(e | S) = F(S + e) - F(S) = rowsum_e - s_ee - 2 * sum_{j in S} s_je.

A running vector ``g = (rowsum - diag) / 2 - S[:, selected].sum(1)`` (half the gains) makes
each step O(n): after picking e, ``g -= s[e]`` (s is symmetric, so row e is column e).
Greedy continues past the point where gains turn negative, so the order is nested: its first r
rows are the greedy solution for every budget r, and one ranking serves every fraction.

**Ties.** Every step takes the *first* maximum of g, in numpy and in torch, so equal gains go
to the lowest position in the class, i.e. the lowest row (``job.rows`` is ascending).

**Where s[e] comes from** (the order does not depend on it; only the cost does):

* Classes whose (n, n) matrix fits in ``select.matrix_mb`` are ranked *together*: a group of
  C classes of similar size is padded to m rows (padding: s = 0, g = -inf) and every step is
  one batched update for all of them, ``e = argmax_rows(G)``, ``G -= S[c, e_c]``,
  ``G[c, e_c] = -inf`` for the (C, m) gains G and the (C, m, m) matrices S. Padding is never
  picked before a real row (-inf < any finite gain) and subtracting a finite row from -inf
  stays -inf, so each class's order is its own greedy order. On a GPU this is C classes per
  kernel launch and no host synchronisation per step.
* A larger class keeps a cache of B = matrix_mb / (n * itemsize) rows of s. When the picked e
  is not cached, the q = B / 4 uncached rows of largest current gain (e among them: it has
  the largest of all) are computed by *one* matrix product ``max(x[cand] @ x.T, floor)``
  (q, n), evicting the cached rows of lowest gain when full. Exactness: every step still
  takes the argmax of the exact g; the cache only supplies rows that equal ``s[e]``. Cost:
  the greedy's next picks are mostly among the current top gains, so about 1.1 n rows get
  computed in all (measured at 20k-50k rows), about one blocked ``x @ x.T`` pass in
  matrix products instead of n matrix-vector products (each re-reading x), plus O(n) vector
  work per step. Memory: O(B n) for the cache plus a (q, n) block.

Without a floor the row sums need no pass over s at all: ``S 1 = x (x^T 1)``, O(n d); with
one the clipped matrix has no such factorisation and they take one blocked pass (from the
matrix when it fits).

**Rank limit** (``select.rank_limit`` = L < 1; the pipeline sets it to the largest swept
fraction): class k stops the greedy after r_k steps, its quota count in the first
``floor(L n + 1/2)`` global ranks (:func:`~sas_ray.core.selection.ranking.class_budgets`).
The remaining rows follow, ranked by their gain with respect to the greedy set at the stop,
``F(e | S_{r_k})`` descending (ties: lowest row): that is the g already held, so the tail
costs one sort. The scores of tail rows are those gains. Prefixes up to L are exactly the
unlimited ranking's (quota counts never exceed r_k there); the ranking refuses larger cuts.

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
order), then the other rows (in greedy order); scores stay the greedy gains. It runs in
numpy on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sas_ray.config import SelectConfig
from sas_ray.core.selection.backends import Array, Backend, get_backend
from sas_ray.core.selection.ranking import (
    ClassJob,
    ClassMap,
    ClassOrder,
    Ranking,
    check_inputs,
    class_jobs,
    map_serial,
)
from sas_ray.core.selection.similarity import (
    Columns,
    as_compute,
    row_sums,
    self_similarity,
)
from sas_ray.errors import SasRayError

DOUBLE_GREEDY_RULES = ("deterministic", "randomized")


def with_tail(order: np.ndarray, picked: np.ndarray, half: np.ndarray) -> ClassOrder:
    """Greedy prefix (``order``, gains ``picked``) followed by the other rows by gain at the
    stop, ``2 * half`` descending (ties: lowest row); ``half`` is -inf at picked rows."""
    tail = np.argsort(-half, kind="stable")[: half.shape[0] - order.shape[0]]
    return ClassOrder(order=np.concatenate([order, tail]).astype(np.int64),
                      scores=np.concatenate([picked, 2.0 * half[tail]]))


def initial_half(bk: Backend, x_np: np.ndarray, floor: float | None, block_size: int,
                 matrix: Array | None = None) -> Array:
    """``(rowsum - diag) / 2`` on the device, float64, shape (n,). Without a floor both terms
    are O(n d) numpy sums (the same bits on every backend); with one, the row sums come from
    the matrix when given, else from a blocked pass on the backend."""
    diag = self_similarity(x_np, floor)
    if floor is None:
        rowsum = bk.asarray(row_sums(x_np, None))
    elif matrix is not None:
        rowsum = bk.matrix_row_sums(matrix)
    else:
        rowsum = bk.row_sums(bk.asarray(x_np), floor, block_size)
    return (rowsum - bk.asarray(diag)) / 2.0  # F(e | {}) / 2: each step is one subtraction


def greedy_matrices(bk: Backend, s: Array, half: Array, sizes: Sequence[int],
                    limits: Sequence[int]) -> list[ClassOrder]:
    """Greedy for C classes at once from padded matrices ``s`` (C, m, m) and half gains
    ``half`` (C, m) (-inf at padding); class c has ``sizes[c]`` rows and stops after
    ``limits[c]`` picks."""
    c, m, steps = half.shape[0], half.shape[1], max(limits)
    rows = bk.arange(c)
    flat, offsets = s.reshape(c * m, m), rows * m  # row e of class i is flat[i * m + e]
    order = bk.full((steps, c), 0.0)  # float64 holds indices < 2^53 exactly
    picked = bk.full((steps, c), 0.0)
    stops = {t: [i for i in range(c) if limits[i] == t] for t in set(limits)}
    tails: dict[int, np.ndarray] = {}
    for t in range(steps):
        for i in stops.get(t, ()):
            tails[i] = bk.numpy(half[i, : sizes[i]]).copy()
        e = bk.argmax_rows(half)  # first maximum per class: ties to the lowest row
        order[t] = e
        picked[t] = half[rows, e]
        half -= flat[offsets + e]  # a gather of C rows (fast on both backends)
        half[rows, e] = -np.inf
    for i in stops.get(steps, ()):
        tails[i] = bk.numpy(half[i, : sizes[i]]).copy()
    order_np, picked_np = bk.numpy(order).astype(np.int64), 2.0 * bk.numpy(picked)
    return [with_tail(order_np[: limits[i], i], picked_np[: limits[i], i], tails[i])
            for i in range(c)]


def greedy_cached(bk: Backend, x: Array, half: Array, floor: float | None, cache_rows: int,
                  limit: int) -> ClassOrder:
    """Greedy for one class ``x`` (n, d) on the device with a cache of ``cache_rows`` rows
    of s, refilled q = cache_rows / 4 rows per matrix product (see the module docstring)."""
    n = x.shape[0]
    rows_b = max(1, min(cache_rows, n))
    q = rows_b if rows_b >= n else max(1, rows_b // 4)
    cache = bk.full((rows_b, n), 0.0, like=x)
    slot = np.full(n, -1, dtype=np.int64)  # cache slot of each row, -1: not cached
    owner = np.full(rows_b, -1, dtype=np.int64)  # row held by each slot, -1: free
    free = list(range(rows_b - 1, -1, -1))
    order = np.empty(limit, dtype=np.int64)
    picked = bk.full((limit,), 0.0)
    for t in range(limit):
        e = bk.argmax(half)  # first maximum: ties go to the lowest row
        if slot[e] < 0:
            live = np.flatnonzero(owner >= 0)
            k = min(q, n - t - live.size)  # uncached rows not yet picked (e is one)
            if len(free) < k:
                gains = bk.numpy(half[bk.index(owner[live])])
                out = live[np.argsort(gains, kind="stable")[: k - len(free)]]
                slot[owner[out]] = -1
                owner[out] = -1
                free.extend(out.tolist())
                live = np.flatnonzero(owner >= 0)
            masked = bk.copy(half)
            masked[bk.index(owner[live])] = -np.inf
            masked[e] = np.inf  # e, whatever the ties among the top gains
            cand = bk.top(masked, k)
            slots = np.array([free.pop() for _ in range(k)], dtype=np.int64)
            cache[bk.index(slots)] = bk.gram(x[bk.index(cand)], x, floor)
            slot[cand], owner[slots] = slots, cand
        s = int(slot[e])
        order[t] = e
        picked[t] = half[e]
        half -= cache[s]
        half[e] = -np.inf
        slot[e], owner[s] = -1, -1
        free.append(s)
    return with_tail(order, 2.0 * bk.numpy(picked), bk.numpy(half))


def matrix_groups(sizes: Sequence[int], itemsize: int, matrix_mb: float
                  ) -> tuple[list[list[int]], list[int]]:
    """Positions of classes ranked from in-memory matrices, in groups (largest first, each
    padded to its largest class and within ``matrix_mb`` MiB), and of the larger classes
    ranked with a row cache."""
    budget = matrix_mb * 2**20
    fits = [i for i in np.argsort(-np.asarray(sizes), kind="stable").tolist()
            if sizes[i] ** 2 * itemsize <= budget]
    big = [i for i in range(len(sizes)) if sizes[i] ** 2 * itemsize > budget]
    groups: list[list[int]] = []
    for i in fits:
        if groups and (len(groups[-1]) + 1) * sizes[groups[-1][0]] ** 2 * itemsize <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups, big


@dataclass(frozen=True)
class SasRanker:
    """The per-class SAS work: greedy (batched over classes on one backend), then optional
    double-greedy refinement. ``ranker(x_class, job)`` ranks one class; ``ranker.batch(x,
    jobs)`` ranks a group of classes of ``x`` together (the executors call this)."""

    floor: float | None
    matrix_mb: float
    block_size: int
    refine: str | None = None
    backend: str = "auto"
    device: str = "auto"

    def __call__(self, x: np.ndarray, job: ClassJob) -> ClassOrder:
        return self.rank([x], [job])[0]

    def batch(self, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
        return self.rank([x[job.rows] for job in jobs], jobs)

    def rank(self, xs: Sequence[np.ndarray], jobs: Sequence[ClassJob]) -> list[ClassOrder]:
        bk = get_backend(self.backend, self.device)
        xs = [as_compute(x) for x in xs]
        sizes = [x.shape[0] for x in xs]
        limits = [n if job.limit is None else min(n, job.limit)
                  for n, job in zip(sizes, jobs, strict=True)]
        itemsize = xs[0].dtype.itemsize
        groups, big = matrix_groups(sizes, itemsize, self.matrix_mb)
        out: dict[int, ClassOrder] = {}
        for group in groups:
            out.update(zip(group, self.greedy_group(bk, [xs[i] for i in group],
                                                    [limits[i] for i in group]), strict=True))
        for i in big:
            half = initial_half(bk, xs[i], self.floor, self.block_size)
            cache_rows = int(self.matrix_mb * 2**20 // (sizes[i] * itemsize))
            out[i] = greedy_cached(bk, bk.asarray(xs[i]), half, self.floor, cache_rows,
                                   limits[i])
        return [self.refined(xs[i], job, out[i]) for i, job in enumerate(jobs)]

    def greedy_group(self, bk: Backend, xs: Sequence[np.ndarray], limits: Sequence[int]
                     ) -> list[ClassOrder]:
        """In-memory matrices of a group of classes, padded to the largest (see the module
        docstring), and their greedy orders."""
        m = xs[0].shape[0]
        first = bk.asarray(xs[0])
        s = bk.full((len(xs), m, m), 0.0, like=first) if len(xs) > 1 else None
        half = bk.full((len(xs), m), -np.inf)
        for i, x_np in enumerate(xs):
            x = first if i == 0 else bk.asarray(x_np)
            block = bk.gram(x, x, self.floor)
            n = x_np.shape[0]
            half[i, :n] = initial_half(bk, x_np, self.floor, self.block_size, block)
            if s is None:
                s = block[None]
            else:
                s[i, :n, :n] = block
            del block
        return greedy_matrices(bk, s, half, [x.shape[0] for x in xs], limits)

    def refined(self, x: np.ndarray, job: ClassJob, greedy: ClassOrder) -> ClassOrder:
        """The greedy order, or the double-greedy set first where its cut is larger."""
        if self.refine is None or job.budget is None:
            return greedy
        columns = Columns(x, self.floor, self.matrix_mb)
        if self.floor is not None and columns.matrix is not None:
            rowsum = columns.matrix.sum(axis=1, dtype=np.float64)
        else:
            rowsum = row_sums(x, self.floor, self.block_size)
        in_x, value = double_greedy(columns, rowsum, self_similarity(x, self.floor),
                                    greedy.order, job.budget, self.refine, job.rng())
        if value <= float(greedy.scores[: job.budget].sum()):  # F(greedy prefix) telescopes
            return greedy
        first = in_x[greedy.order]
        order = np.concatenate([greedy.order[first], greedy.order[~first]])
        scores = np.concatenate([greedy.scores[first], greedy.scores[~first]])
        return ClassOrder(order=order, scores=scores)


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


def select_sas(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None, seed: int,
               cfg: SelectConfig, labels: np.ndarray | None = None, *,
               map_classes: ClassMap = map_serial) -> Ranking:
    """SAS ranking of every row (nested), or of one fraction with double-greedy refinement.

    ``embeddings`` (n, d): mean unit view embeddings; ``latent`` (n,): latent class per row.
    ``labels`` are not used. ``map_classes`` runs the per-class work (serially by default);
    ``cfg.rank_limit`` < 1 ranks greedily only up to that fraction (see the module docstring).
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
    limit = 1.0 if refine else cfg.rank_limit  # refinement visits the whole greedy order
    jobs = class_jobs(latent, seed, fraction if refine else None, limit=limit)
    fn = SasRanker(floor=cfg.similarity_floor, matrix_mb=cfg.matrix_mb,
                   block_size=cfg.block_size, refine=refine, backend=cfg.backend,
                   device=cfg.device)
    results = map_classes(fn, as_compute(embeddings), jobs)
    return Ranking.from_class_orders(latent, jobs, results, nested=refine is None,
                                     fraction=fraction if refine else None, limit=limit)
