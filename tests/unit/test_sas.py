"""SAS greedy against a brute-force greedy over F, nestedness, double greedy, the reference
rule and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from sas_ray.config import SelectConfig
from sas_ray.core.selection.ranking import ClassJob, class_budgets, subset_size
from sas_ray.core.selection.reference import select_sas_reference
from sas_ray.core.selection.sas import SasRanker, double_greedy, select_sas
from sas_ray.core.selection.similarity import Columns, row_sums, self_similarity
from sas_ray.errors import SasRayError


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mean_views(n: int, d: int, seed: int, views: int = 3) -> np.ndarray:
    """Mean of unit-normalised noisy views: the rows the embed stage writes."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, d)) + 0.7 * rng.normal(size=(n, views, d))
    return (base / np.linalg.norm(base, axis=2, keepdims=True)).mean(axis=1)


def sim(x: np.ndarray, floor: float | None) -> np.ndarray:
    s = x @ x.T
    return s if floor is None else np.maximum(s, floor)


def cut_value(s: np.ndarray, chosen: list[int] | np.ndarray) -> float:
    """F(S) = sum_{i not in S} sum_{j in S} s_ij, evaluated directly."""
    inside = np.zeros(s.shape[0], dtype=bool)
    inside[list(chosen)] = True
    return float(s[np.ix_(~inside, inside)].sum())


def brute_force_greedy(s: np.ndarray) -> tuple[list[int], list[float]]:
    """Greedy on F by evaluating F(S + e) for every candidate; ties to the lowest index."""
    chosen: list[int] = []
    gains: list[float] = []
    for _ in range(s.shape[0]):
        base = cut_value(s, chosen)
        best, best_gain = -1, -np.inf
        for e in range(s.shape[0]):
            if e not in chosen:
                gain = cut_value(s, [*chosen, e]) - base
                if gain > best_gain:
                    best, best_gain = e, gain
        chosen.append(best)
        gains.append(best_gain)
    return chosen, gains


def class_order(ranking, cls: int) -> np.ndarray:
    return ranking.order[ranking.latent[ranking.order] == cls]


@pytest.mark.parametrize("floor", [None, 0.0, 0.3])
@pytest.mark.parametrize("matrix_mb", [1024, 0])  # in-memory matrix / columns on the fly
def test_sas_equals_brute_force_greedy(floor: float | None, matrix_mb: int) -> None:
    x = mean_views(30, 5, seed=1)
    latent = np.repeat([0, 1, 2], [12, 10, 8])
    cfg = SelectConfig(similarity_floor=floor, matrix_mb=matrix_mb)
    ranking = select_sas(x, latent, None, 0, cfg)
    assert ranking.nested
    for cls in range(3):
        rows = np.flatnonzero(latent == cls)
        want, gains = brute_force_greedy(sim(x[rows], floor))
        got = class_order(ranking, cls)
        np.testing.assert_array_equal(got, rows[want])
        np.testing.assert_allclose(ranking.scores[ranking.latent[ranking.order] == cls], gains,
                                   rtol=1e-9, atol=1e-9)


def test_gains_are_increments_of_the_cut() -> None:
    x = mean_views(40, 8, seed=2)
    ranking = select_sas(x, np.zeros(40, dtype=np.int64), None, 0, SelectConfig())
    s = sim(x, None)
    values = [cut_value(s, ranking.order[:t]) for t in range(41)]
    np.testing.assert_allclose(ranking.scores, np.diff(values), atol=1e-9)
    assert (ranking.scores[-5:] < 0).all()  # greedy keeps going past negative gains


def test_ties_go_to_the_lowest_row() -> None:
    x = np.repeat(unit_rows(3, 4, seed=3), 2, axis=0)  # rows 2i and 2i+1 are identical
    order = select_sas(x, np.zeros(6, dtype=np.int64), None, 0, SelectConfig()).order
    for twin in range(3):
        assert order.tolist().index(2 * twin) < order.tolist().index(2 * twin + 1)


def test_float16_and_float32_inputs_give_the_float64_order() -> None:
    x = mean_views(50, 16, seed=4)
    latent = np.repeat([3, 7], 25)
    want = select_sas(x, latent, None, 0, SelectConfig()).order
    got = select_sas(x.astype(np.float32), latent, None, 0, SelectConfig()).order
    assert (got[:10] == want[:10]).all()
    half = select_sas(x.astype(np.float16), latent, None, 0, SelectConfig())
    assert sorted(half.order.tolist()) == list(range(50))


def test_nested_cuts_are_prefixes_with_quota_counts() -> None:
    x = mean_views(97, 6, seed=5)
    latent = np.repeat([0, 1, 2, 3], [50, 30, 12, 5])
    ranking = select_sas(x, latent, None, 0, SelectConfig())
    sizes = np.bincount(latent)
    previous: set[int] = set()
    for f in np.linspace(0.01, 1.0, 40):
        chosen = ranking.cut(f)
        m = subset_size(f, 97)
        assert chosen.size == m == int(np.floor(f * 97 + 0.5))
        assert previous <= set(chosen.tolist())
        previous = set(chosen.tolist())
        counts = np.bincount(latent[chosen], minlength=4)
        assert (counts >= (m * sizes) // 97).all() and (counts <= -((-m * sizes) // 97)).all()
        # the per-class part of the cut is the per-class greedy prefix
        for cls in range(4):
            np.testing.assert_array_equal(np.sort(chosen[latent[chosen] == cls]),
                                          np.sort(class_order(ranking, cls)[: counts[cls]]))


def test_nested_ranking_does_not_depend_on_the_fraction() -> None:
    x = mean_views(60, 6, seed=6)
    latent = np.repeat([0, 1], 30)
    a = select_sas(x, latent, 0.2, 0, SelectConfig())
    b = select_sas(x, latent, 0.7, 5, SelectConfig())
    np.testing.assert_array_equal(a.order, b.order)


# ---------------------------------------------------------------- double greedy
def brute_force_double_greedy(s: np.ndarray, visit: np.ndarray, budget: int, rule: str,
                              rng: np.random.Generator) -> set[int]:
    x_set: list[int] = []
    y_set = list(range(s.shape[0]))
    for u in visit:
        if len(x_set) == budget:
            add = False
        elif len(y_set) == budget:
            add = True
        else:
            a = cut_value(s, [*x_set, u]) - cut_value(s, x_set)
            b = cut_value(s, [v for v in y_set if v != u]) - cut_value(s, y_set)
            if rule == "deterministic":
                add = a >= b
            else:
                a, b = max(a, 0.0), max(b, 0.0)
                add = a + b == 0.0 or rng.random() < a / (a + b)
        if add:
            x_set.append(int(u))
        else:
            y_set.remove(int(u))
    assert sorted(x_set) == sorted(y_set)
    return set(x_set)


@pytest.mark.parametrize("rule", ["deterministic", "randomized"])
@pytest.mark.parametrize("budget", [1, 4, 9])
def test_double_greedy_matches_brute_force(rule: str, budget: int) -> None:
    x = mean_views(14, 4, seed=7)
    s = sim(x, None)
    visit = np.random.default_rng(0).permutation(14)
    got, value = double_greedy(Columns(x, None, 1024), row_sums(x, None),
                               self_similarity(x, None), visit, budget, rule,
                               np.random.default_rng(3))
    want = brute_force_double_greedy(s, visit, budget, rule, np.random.default_rng(3))
    assert set(np.flatnonzero(got).tolist()) == want
    assert value == pytest.approx(cut_value(s, sorted(want)))


@pytest.mark.parametrize("rule", ["deterministic", "randomized"])
def test_double_greedy_refinement_keeps_budgets_and_never_lowers_f(rule: str) -> None:
    x = mean_views(90, 3, seed=8)
    latent = np.repeat([0, 1, 2], [40, 35, 15])
    cfg = SelectConfig(double_greedy=True, double_greedy_rule=rule, similarity_floor=0.0)
    greedy = select_sas(x, latent, None, 0, SelectConfig(similarity_floor=0.0))
    refined = select_sas(x, latent, 0.4, 0, cfg)
    assert not refined.nested and refined.fraction == 0.4
    again = select_sas(x, latent, 0.4, 0, cfg)
    np.testing.assert_array_equal(refined.order, again.order)
    chosen = refined.cut(0.4)
    budgets = class_budgets(np.bincount(latent), subset_size(0.4, 90))
    np.testing.assert_array_equal(np.bincount(latent[chosen], minlength=3), budgets)
    for cls in range(3):
        rows = np.flatnonzero(latent == cls)
        s = sim(x[rows], 0.0)
        local = {int(r): i for i, r in enumerate(rows)}
        mine = [local[int(r)] for r in chosen[latent[chosen] == cls]]
        base = [local[int(r)] for r in class_order(greedy, cls)[: budgets[cls]]]
        assert cut_value(s, mine) >= cut_value(s, base) - 1e-9
    with pytest.raises(SasRayError, match=r"re-run select with --fraction 0\.5"):
        refined.cut(0.5)


@pytest.mark.parametrize("rule", ["deterministic", "randomized"])
def test_refinement_takes_the_double_greedy_set_only_when_it_is_better(rule: str) -> None:
    taken = 0
    for seed in range(30):
        x = mean_views(60, 4, seed=seed)
        cols, rowsum, diag = Columns(x, None, 1024), row_sums(x, None), self_similarity(x, None)
        greedy = select_sas(x, np.zeros(60, dtype=np.int64), None, 0, SelectConfig()).order
        for budget in (6, 18, 30, 45):
            job = ClassJob(index=0, label=0, rows=np.arange(60), budget=budget, seed=seed)
            got = SasRanker(floor=None, matrix_mb=1024, block_size=64,
                            refine=rule)(x, job).order[:budget]
            mask, value = double_greedy(cols, rowsum, diag, greedy, budget, rule, job.rng())
            better = value > cut_value(sim(x, None), greedy[:budget])
            want = np.flatnonzero(mask) if better else greedy[:budget]
            assert set(got.tolist()) == set(want.tolist())
            taken += better
    assert taken > 0  # these inputs exercise the replacement branch


def test_double_greedy_needs_a_fraction_and_a_known_rule() -> None:
    x = mean_views(20, 3, seed=9)
    latent = np.zeros(20, dtype=np.int64)
    with pytest.raises(SasRayError, match="pass --fraction"):
        select_sas(x, latent, None, 0, SelectConfig(double_greedy=True))
    with pytest.raises(SasRayError, match="double_greedy_rule"):
        select_sas(x, latent, 0.5, 0, SelectConfig(double_greedy=True, double_greedy_rule="x"))


# ---------------------------------------------------------------- reference rule
def reference_subset(x: np.ndarray, latent: np.ndarray, fraction: float) -> set[int]:
    """The public code's effective rule, written independently: per class, sort by summed
    non-negative cosine similarity (diagonal included), keep floor(f |V_k|)."""
    keep: set[int] = set()
    for cls in np.unique(latent):
        rows = np.flatnonzero(latent == cls)
        v = x[rows]
        norms = np.sqrt((v**2).sum(axis=1))
        cos = (v @ v.T) / np.outer(norms, norms)
        score = np.where(cos > 0, cos, 0).sum(axis=1)
        ranked = sorted(range(rows.size), key=lambda i: (-score[i], i))
        keep |= {int(rows[i]) for i in ranked[: int(np.floor(fraction * rows.size))]}
    return keep


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.9])
def test_sas_reference_reproduces_the_reference_rule(fraction: float) -> None:
    x = 3.0 * mean_views(60, 4, seed=10)  # un-normalised: the rule uses cosines
    latent = np.repeat([4, 1, 9], [10, 20, 30])  # f * |V_k| is an integer for every class
    ranking = select_sas_reference(x, latent, None, 0, SelectConfig(block_size=7))
    assert set(ranking.cut(fraction).tolist()) == reference_subset(x, latent, fraction)


def test_sas_reference_differs_from_sas() -> None:
    x = mean_views(60, 4, seed=11)
    latent = np.zeros(60, dtype=np.int64)
    sas = select_sas(x, latent, None, 0, SelectConfig()).cut(0.3)
    ref = select_sas_reference(x, latent, None, 0, SelectConfig()).cut(0.3)
    assert set(sas.tolist()) != set(ref.tolist())


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(SasRayError, match=r"out of range \(0, 1\]; pass a fraction"):
        select_sas(mean_views(10, 3, 0), np.zeros(10, dtype=np.int64), fraction, 0,
                   SelectConfig())


def test_fraction_that_keeps_nothing() -> None:
    ranking = select_sas(mean_views(10, 3, 0), np.zeros(10, dtype=np.int64), None, 0,
                         SelectConfig())
    with pytest.raises(SasRayError, match="keeps no example"):
        ranking.cut(0.01)
    assert ranking.cut(1.0).size == 10


def test_nan_embeddings_name_the_rows() -> None:
    x = mean_views(10, 3, 0)
    x[[2, 5]] = np.nan
    with pytest.raises(SasRayError, match=r"2 of 10 rows hold NaN or inf .*re-run the embed"):
        select_sas(x, np.zeros(10, dtype=np.int64), None, 0, SelectConfig())


def test_singleton_class() -> None:
    latent = np.array([0] * 9 + [1])
    with pytest.raises(SasRayError, match=r"single member .*min_class_size"):
        select_sas(mean_views(10, 3, 0), latent, None, 0, SelectConfig())


def test_empty_and_mismatched_inputs() -> None:
    with pytest.raises(SasRayError, match="empty"):
        select_sas(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), None, 0, SelectConfig())
    with pytest.raises(SasRayError, match="one latent class per embedding row"):
        select_sas(mean_views(10, 3, 0), np.zeros(9, dtype=np.int64), None, 0, SelectConfig())
    with pytest.raises(SasRayError, match="2-D"):
        select_sas(np.zeros(10), np.zeros(10, dtype=np.int64), None, 0, SelectConfig())
    with pytest.raises(SasRayError, match="integers"):
        select_sas(mean_views(10, 3, 0), np.zeros(10), None, 0, SelectConfig())
