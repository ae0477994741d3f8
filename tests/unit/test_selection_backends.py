"""SAS on the numpy and torch backends: the same order (batched classes, row cache, floors,
dtypes), the ties policy, and the rank limit with its tail rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sas_ray.config import SelectConfig
from sas_ray.core.selection.backends import NumpyBackend, TorchBackend, get_backend
from sas_ray.core.selection.ranking import class_budgets, class_jobs, subset_size
from sas_ray.core.selection.sas import matrix_groups, select_sas
from sas_ray.errors import SasRayError

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def mean_views(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, d)) + 0.7 * rng.normal(size=(n, 3, d))
    return (base / np.linalg.norm(base, axis=2, keepdims=True)).mean(axis=1)


def gain_at(x: np.ndarray, chosen: np.ndarray, e: int, floor: float | None) -> float:
    """F(e | S) = sum_{i not in S, i != e} s_ie - sum_{j in S} s_je, directly."""
    s = x @ x[e]
    if floor is not None:
        s = np.maximum(s, floor)
    inside = np.zeros(x.shape[0], dtype=bool)
    inside[chosen] = True
    outside = ~inside
    outside[e] = False
    return float(s[outside].sum() - s[inside].sum())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("floor", [None, 0.0, 0.3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_equals_numpy_batched_classes(device: str, floor: float | None,
                                            dtype: type) -> None:
    sizes = [40, 37, 25, 9, 2]  # one padded group of unequal classes
    x = mean_views(sum(sizes), 6, seed=1).astype(dtype)
    latent = np.random.default_rng(0).permutation(np.repeat(np.arange(5), sizes))
    want = select_sas(x, latent, None, 0, SelectConfig(similarity_floor=floor, backend="numpy"))
    got = select_sas(x, latent, None, 0, SelectConfig(similarity_floor=floor, backend="torch",
                                                      device=device))
    np.testing.assert_array_equal(got.order, want.order)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("floor", [None, 0.2])
def test_row_cache_equals_the_in_memory_matrix(device: str, floor: float | None) -> None:
    x = mean_views(900, 16, seed=2)  # float64 rows: a 1 MiB cache holds 145 of 900
    latent = np.zeros(900, dtype=np.int64)
    assert matrix_groups([900], 8, 1) == ([], [0])
    want = select_sas(x, latent, None, 0, SelectConfig(similarity_floor=floor, backend="numpy"))
    for cfg in (SelectConfig(similarity_floor=floor, matrix_mb=1, backend="numpy"),
                SelectConfig(similarity_floor=floor, matrix_mb=0, backend="numpy"),
                SelectConfig(similarity_floor=floor, matrix_mb=1, backend="torch",
                             device=device)):
        got = select_sas(x, latent, None, 0, cfg)
        np.testing.assert_array_equal(got.order, want.order)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", *[f"torch-{d}" for d in DEVICES]])
@pytest.mark.parametrize("matrix_mb", [1024, 0])
def test_equal_gains_go_to_the_lowest_row(backend: str, matrix_mb: int) -> None:
    """Rows 2i and 2i+1 are identical, so their gains are equal until one is picked."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(5, 4))
    x = np.repeat(base / np.linalg.norm(base, axis=1, keepdims=True), 2, axis=0)
    name, _, device = backend.partition("-")
    cfg = SelectConfig(backend=name, device=device or "auto", matrix_mb=matrix_mb)
    order = select_sas(x, np.zeros(10, dtype=np.int64), None, 0, cfg).order.tolist()
    for twin in range(5):
        assert order.index(2 * twin) < order.index(2 * twin + 1)
    # equal gains everywhere: orthogonal unit rows give every row the gain 0 at every step
    eye = np.eye(6)
    got = select_sas(eye, np.zeros(6, dtype=np.int64), None, 0, cfg).order
    np.testing.assert_array_equal(got, np.arange(6))


@pytest.mark.parametrize("matrix_mb", [1024, 0])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_rank_limit_keeps_the_prefix_and_ranks_the_tail_by_gain_at_the_stop(
        matrix_mb: int, backend: str) -> None:
    sizes = [50, 31, 12]
    x = mean_views(sum(sizes), 5, seed=4)
    latent = np.repeat([0, 1, 2], sizes)
    full = select_sas(x, latent, None, 0, SelectConfig(matrix_mb=matrix_mb, backend=backend))
    cfg = SelectConfig(matrix_mb=matrix_mb, backend=backend, device="cpu", rank_limit=0.4)
    limited = select_sas(x, latent, None, 0, cfg)
    n, m = 93, subset_size(0.4, 93)
    assert limited.limit == 0.4 and limited.nested
    np.testing.assert_array_equal(limited.order[:m], full.order[:m])
    np.testing.assert_array_equal(np.sort(limited.order), np.arange(n))
    previous: set[int] = set()
    for f in np.linspace(0.02, 0.4, 12):  # valid nested prefixes up to the limit
        chosen = set(limited.cut(f).tolist())
        assert chosen == set(full.cut(f).tolist()) and previous <= chosen
        previous = chosen
    with pytest.raises(SasRayError, match=r"ranked up to fraction 0\.4 .*rank_limit 0\.5"):
        limited.cut(0.5)
    limits = class_budgets(sizes, m)
    for cls in range(3):
        rows = np.flatnonzero(latent == cls)
        mine = limited.order[limited.latent[limited.order] == cls]
        scores = limited.scores[limited.latent[limited.order] == cls]
        local = {int(r): i for i, r in enumerate(rows)}
        picked = np.array([local[int(r)] for r in mine[: limits[cls]]], dtype=np.int64)
        tail = [local[int(r)] for r in mine[limits[cls]:]]
        gains = [gain_at(x[rows], picked, e, None) for e in tail]
        np.testing.assert_allclose(scores[limits[cls]:], gains, atol=1e-9)
        assert all(a >= b for a, b in itertools.pairwise(gains))  # descending


def test_class_jobs_limits_are_quota_counts() -> None:
    latent = np.repeat([0, 1, 2], [50, 31, 12])
    jobs = class_jobs(latent, 0, limit=0.4)
    assert [j.limit for j in jobs] == class_budgets([50, 31, 12], subset_size(0.4, 93)).tolist()
    assert [j.limit for j in class_jobs(latent, 0)] == [None] * 3


def test_double_greedy_ignores_the_rank_limit() -> None:
    x = mean_views(40, 3, seed=5)
    latent = np.repeat([0, 1], 20)
    cfg = SelectConfig(double_greedy=True, rank_limit=0.3)
    refined = select_sas(x, latent, 0.5, 0, cfg)
    assert refined.limit == 1.0 and refined.cut(0.5).size == 20


def test_matrix_groups_pack_within_the_budget() -> None:
    sizes = [10, 300, 200, 20, 5000]  # float32: 5000^2 * 4 > 64 MiB
    groups, big = matrix_groups(sizes, 4, 64)
    assert big == [4]
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    for g in groups:  # padded to the group's first (largest) class
        assert len(g) * sizes[g[0]] ** 2 * 4 <= 64 * 2**20
        assert sizes[g[0]] == max(sizes[i] for i in g)


def test_get_backend() -> None:
    assert isinstance(get_backend("numpy"), NumpyBackend)
    cpu = get_backend("torch", "cpu")
    assert isinstance(cpu, TorchBackend) and cpu.device == "cpu"
    auto = get_backend("auto")
    assert isinstance(auto, TorchBackend if torch.cuda.is_available() else NumpyBackend)
    with pytest.raises(SasRayError, match=r"unknown select\.backend 'jax'"):
        get_backend("jax")
    if not torch.cuda.is_available():
        with pytest.raises(SasRayError, match="sees no CUDA device"):
            get_backend("torch", "cuda")
