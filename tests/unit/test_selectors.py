"""Ranking apportionment, baselines, supervised scores and the registry contract."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from sas_ray.config import SelectConfig
from sas_ray.core.selection.ranking import class_budgets, quota_sequence, subset_size
from sas_ray.core.selection.registry import NEEDS_LABELS, SELECTORS, get_selector, is_nested
from sas_ray.core.selection.supervised import el2n_scores, forgetting_events
from sas_ray.errors import SasRayError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, especially on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(sizes: list[int], d: int = 8, spread: float = 0.3, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-ish rows around one random centre per class, and the class of each row."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), d))
    latent = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[latent] + spread * rng.normal(size=(latent.size, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True), latent


def within_class(ranking, cls: int) -> np.ndarray:
    return ranking.order[ranking.latent[ranking.order] == cls]


# ---------------------------------------------------------------- apportionment
@pytest.mark.parametrize("seed", range(40))
def test_every_prefix_is_within_quota(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 9))
    sizes = (rng.integers(1, 60, size=k) if seed % 2 else
             np.concatenate([[rng.integers(100, 400)], rng.integers(1, 4, size=k)]))
    n = int(sizes.sum())
    seq = quota_sequence(sizes)
    counts = np.zeros(len(sizes), dtype=np.int64)
    for m in range(1, n + 1):
        counts[seq[m - 1]] += 1
        assert (counts >= (m * sizes) // n).all() and (counts <= -((-m * sizes) // n)).all()
    np.testing.assert_array_equal(counts, sizes)


def test_budgets_sum_to_the_requested_size() -> None:
    sizes = np.array([5000, 17, 3, 980, 2])
    for f in (0.01, 0.1, 0.333, 0.5, 0.999, 1.0):
        m = subset_size(f, int(sizes.sum()))
        budgets = class_budgets(sizes, m)
        assert budgets.sum() == m and (budgets <= sizes).all()
        assert (np.abs(budgets - m * sizes / sizes.sum()) < 1).all()


def test_quota_order_keeps_a_big_class_at_its_share_where_dhondt_would_not() -> None:
    sizes = np.array([90] + [1] * 10)  # n = 100, cut at m = 50: class 0's share is 45
    keys = np.concatenate([(np.arange(s) + 1) / s for s in sizes])  # (position + 1) / |V_k|
    owner = np.repeat(np.arange(sizes.size), sizes)
    dhondt = np.bincount(owner[np.argsort(keys, kind="stable")[:50]], minlength=sizes.size)
    assert dhondt[0] == 50  # sorting by (position + 1) / |V_k| overshoots by 5
    assert class_budgets(sizes, 50)[0] == 45


# ---------------------------------------------------------------- baselines
def test_random_is_a_seeded_uniform_permutation() -> None:
    x, latent = blobs([30, 30, 40])
    cfg = SelectConfig()
    a = SELECTORS["random"](x, latent, None, 3, cfg)
    b = SELECTORS["random"](x, latent, None, 3, cfg)
    c = SELECTORS["random"](x, latent, None, 4, cfg)
    np.testing.assert_array_equal(a.order, b.order)
    assert not np.array_equal(a.order, c.order)
    assert a.nested and not a.balanced
    np.testing.assert_array_equal(a.cut(0.25), a.order[:25])


def test_random_balanced_keeps_each_class_share() -> None:
    x, latent = blobs([50, 20, 30])
    r = SELECTORS["random-balanced"](x, latent, None, 0, SelectConfig())
    for f in (0.1, 0.35, 0.8):
        counts = np.bincount(latent[r.cut(f)], minlength=3)
        assert np.abs(counts - f * np.array([50, 20, 30])).max() <= 1
    assert r.balanced


@pytest.mark.parametrize("name", ["prototypes-easy", "prototypes-hard"])
def test_prototypes_order_by_distance_to_the_class_mean(name: str) -> None:
    x, latent = blobs([25, 35], spread=1.0)
    r = SELECTORS[name](x, latent, None, 0, SelectConfig())
    for cls in range(2):
        rows = np.flatnonzero(latent == cls)
        mean = x[rows].mean(axis=0)
        dist = 1 - x[rows] @ mean / np.linalg.norm(mean)
        want = rows[np.argsort(-dist if name.endswith("hard") else dist, kind="stable")]
        np.testing.assert_array_equal(within_class(r, cls), want)


def test_prototypes_with_subclusters_use_the_nearest_centroid() -> None:
    # one latent class made of two tight blobs: with 2 prototypes both blobs are "easy"
    x, sub = blobs([30, 10], spread=0.05, seed=1)
    latent = np.zeros(40, dtype=np.int64)
    one = SELECTORS["prototypes-easy"](x, latent, None, 0, SelectConfig()).cut(0.25)
    two = SELECTORS["prototypes-easy"](x, latent, None, 0,
                                       SelectConfig(clusters_per_class=2)).scores
    assert set(sub[one].tolist()) == {0}  # the class mean sits near the bigger blob
    assert two.max() < 0.02  # every row is close to its own blob's centroid


def farthest_point_order(x: np.ndarray) -> list[int]:
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    order = [int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))]
    while len(order) < x.shape[0]:
        cover = dist[:, order].min(axis=1)
        cover[order] = -1
        order.append(int(np.argmax(cover)))
    return order


@pytest.mark.parametrize("matrix_mb", [1024, 0])
def test_kcenter_is_farthest_point(matrix_mb: int) -> None:
    x, latent = blobs([15, 12], spread=0.8, seed=2)
    r = SELECTORS["kcenter"](x, latent, None, 0, SelectConfig(matrix_mb=matrix_mb))
    for cls in range(2):
        rows = np.flatnonzero(latent == cls)
        np.testing.assert_array_equal(within_class(r, cls), rows[farthest_point_order(x[rows])])


def semdedup_keep(x: np.ndarray, threshold: float) -> set[int]:
    """SemDeDup in one cluster, written directly: visit from least to most central, drop a
    row when its cosine to an earlier-visited row exceeds the threshold."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    centre = xn.mean(axis=0)
    visit = np.argsort(xn @ (centre / np.linalg.norm(centre)), kind="stable")
    keep = set()
    for t, i in enumerate(visit):
        if t == 0 or max(xn[i] @ xn[u] for u in visit[:t]) <= threshold:
            keep.add(int(i))
    return keep


def test_semdedup_prefixes_are_threshold_keep_sets() -> None:
    x, _ = blobs([40], spread=0.4, seed=3)
    x = np.concatenate([x, x[:6] + 1e-4])  # six near-duplicates
    latent = np.zeros(46, dtype=np.int64)
    r = SELECTORS["semdedup"](x, latent, None, 0, SelectConfig())
    for threshold in np.unique(r.scores)[1::5]:
        keep = semdedup_keep(x, threshold)
        assert set(r.order[: len(keep)].tolist()) == keep
    dup_rows = {*range(6), *range(40, 46)}
    assert set(r.order[-6:].tolist()) <= dup_rows  # one of each near-duplicate pair goes last


# ---------------------------------------------------------------- supervised
def noisy_labels(n_per: int = 40, flips: int = 6, seed: int = 0):
    x, labels = blobs([n_per, n_per, n_per], spread=0.2, seed=seed)
    flipped = np.random.default_rng(seed).choice(labels.size, flips, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3
    return x, noisy, flipped


def test_forgetting_finds_flipped_labels() -> None:
    x, labels, flipped = noisy_labels()
    cfg = SelectConfig(supervised_epochs=12, supervised_batch_size=16)
    most = SELECTORS["forgetting-most"](x, labels, None, 0, cfg, labels)
    least = SELECTORS["forgetting-least"](x, labels, None, 0, cfg, labels)
    top = set(most.cut(0.15).tolist())  # 18 rows, 6 per class
    assert len(top & set(flipped.tolist())) >= 5
    assert not set(least.cut(0.3).tolist()) & set(flipped.tolist())


def test_el2n_finds_flipped_labels() -> None:
    x, labels, flipped = noisy_labels(seed=1)
    cfg = SelectConfig(el2n_epochs=3, el2n_seeds=2, supervised_batch_size=16)
    hard = SELECTORS["el2n-hard"](x, labels, None, 0, cfg, labels)
    easy = SELECTORS["el2n-easy"](x, labels, None, 0, cfg, labels)
    assert len(set(hard.cut(0.15).tolist()) & set(flipped.tolist())) >= 5
    assert not set(easy.cut(0.3).tolist()) & set(flipped.tolist())


def test_scorers_are_generic_over_inputs_and_models() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 8, 8, generator=gen)
    targets = torch.arange(24) % 2
    images[targets == 1, 0] += 1.0  # class 1: redder

    def cnn() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))

    events = forgetting_events(images, targets, cnn, epochs=4, batch_size=8, lr=0.1, seed=0)
    assert events.shape == (24,) and events.dtype == np.int64
    assert ((events >= 0) & (events <= 4)).all()
    a = el2n_scores(images, targets, cnn, epochs=2, batch_size=8, lr=0.1, seeds=[0, 1])
    b = el2n_scores(images, targets, cnn, epochs=2, batch_size=8, lr=0.1, seeds=[0, 1])
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a <= np.sqrt(2))).all()


@pytest.mark.parametrize("name", sorted(NEEDS_LABELS))
def test_supervised_strategies_need_labels(name: str) -> None:
    x, latent = blobs([10, 10])
    with pytest.raises(SasRayError, match="have none; use a label-free strategy"):
        SELECTORS[name](x, latent, None, 0, SelectConfig(), None)
    partial_labels = latent.copy()
    partial_labels[3] = -1
    with pytest.raises(SasRayError, match="but 1 rows have none"):
        SELECTORS[name](x, latent, None, 0, SelectConfig(), partial_labels)


# ---------------------------------------------------------------- registry contract
FAST = SelectConfig(supervised_epochs=2, el2n_epochs=1, el2n_seeds=1)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_strategy_is_a_deterministic_nested_permutation(name: str) -> None:
    x, latent = blobs([23, 31, 16], seed=4)
    labels = latent.copy()
    a = SELECTORS[name](x, latent, None, 7, FAST, labels)
    b = SELECTORS[name](x, latent, None, 7, FAST, labels)
    assert sorted(a.order.tolist()) == list(range(70))
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.nested == is_nested(name, FAST)
    assert set(a.cut(0.2).tolist()) <= set(a.cut(0.5).tolist())
    assert a.cut(0.5).size == 35
    if a.balanced:
        counts = np.bincount(latent[a.cut(0.5)], minlength=3)
        assert (np.abs(counts - 0.5 * np.array([23, 31, 16])) <= 1).all()
    with pytest.raises(SasRayError, match="out of range"):
        SELECTORS[name](x, latent, 1.5, 7, FAST, labels)
    with pytest.raises(SasRayError, match="NaN"):
        SELECTORS[name](np.where(latent[:, None] == 1, np.nan, x), latent, None, 7, FAST, labels)


def test_unknown_strategy() -> None:
    with pytest.raises(SasRayError, match="unknown selection strategy 'sass'; use one of: sas"):
        get_selector("sass")
    assert not is_nested("sas", SelectConfig(double_greedy=True))
