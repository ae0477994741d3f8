"""Latent classes from labels, few labels and k-means; purity and NMI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sas_ray.config import LatentConfig
from sas_ray.core.selection import latent
from sas_ray.core.selection.latent import (
    assign_nearest,
    fill_empty,
    kmeans,
    kmeans_centroids,
    latent_classes,
    merge_small_classes,
    nmi,
    purity,
    reveal_labels,
)
from sas_ray.errors import SasRayError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The few-labels classifier is tiny: one thread is fastest on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(k: int, per: int, d: int = 16, spread: float = 0.25, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + spread * rng.normal(size=(labels.size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


def nmi_by_definition(a: list[int], b: list[int]) -> float:
    n = len(a)
    pa = {u: a.count(u) / n for u in set(a)}
    pb = {v: b.count(v) / n for v in set(b)}
    mi = 0.0
    for u in pa:
        for v in pb:
            joint = sum(1 for i in range(n) if a[i] == u and b[i] == v) / n
            if joint:
                mi += joint * np.log(joint / (pa[u] * pb[v]))
    ha = -sum(p * np.log(p) for p in pa.values())
    hb = -sum(p * np.log(p) for p in pb.values())
    return mi / ((ha + hb) / 2)


def test_nmi_and_purity() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, (a + 5) * 3) == pytest.approx(1.0)  # only the grouping matters
    i = np.arange(16)
    assert nmi(i % 2, (i // 2) % 2) == pytest.approx(0.0, abs=1e-12)  # independent
    b = np.array([1, 0, 1, 1, 2, 0, 2, 2])
    assert nmi(a, b) == pytest.approx(nmi_by_definition(a.tolist(), b.tolist()))
    assert purity(a, b) == pytest.approx(5 / 8)  # majorities: 2 of 3, 1 of 2, 2 of 3
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0


def test_labels_method() -> None:
    x, labels = blobs(3, 20)
    part = latent_classes(x, labels, LatentConfig(method="labels"), seed=0)
    np.testing.assert_array_equal(part.classes, labels)
    assert part.agreement["purity"] == 1.0 and part.agreement["nmi"] == pytest.approx(1.0)
    missing = labels.copy()
    missing[:4] = -1
    with pytest.raises(SasRayError, match=r"4 rows have none; use --latent\.method"):
        latent_classes(x, missing, LatentConfig(method="labels"), seed=0)


def test_reveal_is_stratified_and_seeded() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 20])
    labels[::50] = -1
    mask = reveal_labels(labels, 0.01, seed=3)
    assert not (mask & (labels < 0)).any()
    assert [int((mask & (labels == c)).sum()) for c in range(3)] == [5, 3, 1]
    np.testing.assert_array_equal(mask, reveal_labels(labels, 0.01, seed=3))
    assert not np.array_equal(mask, reveal_labels(labels, 0.01, seed=4))


def test_few_labels_recover_separated_clusters() -> None:
    x, labels = blobs(4, 250, seed=1)
    cfg = LatentConfig(method="few-labels", label_fraction=0.02)
    part = latent_classes(x, labels, cfg, seed=0)
    assert part.agreement["purity"] > 0.97 and part.agreement["nmi"] > 0.9
    np.testing.assert_array_equal(part.classes, latent_classes(x, labels, cfg, seed=0).classes)
    assert set(np.unique(part.classes)) <= set(range(4))  # predictions are label values


def test_few_labels_predict_unlabeled_rows() -> None:
    x, labels = blobs(3, 100, seed=2)
    hidden = labels.copy()
    hidden[50:] = -1  # most rows unlabeled
    part = latent_classes(x, hidden, LatentConfig(method="few-labels", label_fraction=0.1), 0)
    assert purity(part.classes, labels) > 0.97
    assert part.agreement["rows"] == 50


def test_kmeans_recovers_separated_clusters(tmp_path: Path) -> None:
    x, labels = blobs(5, 200, seed=3)
    cfg = LatentConfig(method="kmeans", k=5, kmeans_batch_size=256, kmeans_init_sample=500)
    part = latent_classes(x, labels, cfg, seed=0)
    assert part.agreement["purity"] > 0.97 and part.agreement["nmi"] > 0.9
    assert part.num_classes == 5 and sorted(np.unique(part.classes)) == list(range(5))
    # the same from a memory map, touched only in mini-batches and blocks
    path = tmp_path / "x.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    np.testing.assert_array_equal(latent_classes(mapped, None, cfg, seed=0).classes,
                                  part.classes)


def test_kmeans_centroids_are_cluster_means() -> None:
    x, labels = blobs(3, 300, seed=4)
    centroids = kmeans(x, 3, seed=1, iters=200, batch_size=128, init_sample=100)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(3)])
    match = ((centroids[:, None] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert sorted(match.tolist()) == [0, 1, 2]
    assert np.abs(centroids - means[match]).max() < 0.05
    with pytest.raises(SasRayError, match=r"smaller --latent\.k"):
        kmeans(x[:2], 3, seed=0)


def test_small_classes_are_merged_into_the_nearest() -> None:
    x, labels = blobs(3, 10, seed=5)
    classes = labels.copy()
    lonely = int(np.flatnonzero(labels == 2)[0])
    classes[lonely] = 7  # a singleton class drawn from blob 2
    merged, log = merge_small_classes(x, classes, min_size=2)
    assert log == {7: 2} and merged[lonely] == 2
    with pytest.raises(SasRayError, match="every latent class has fewer than 2"):
        merge_small_classes(x[:3], np.arange(3), min_size=2)


def test_bad_method_and_inputs() -> None:
    x, labels = blobs(2, 5)
    with pytest.raises(SasRayError, match=r"unknown latent\.method 'magic'"):
        latent_classes(x, labels, LatentConfig(method="magic"), 0)
    with pytest.raises(SasRayError, match="needs some labels"):
        latent_classes(x, None, LatentConfig(method="few-labels"), 0)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(SasRayError, match="1 of 10 rows hold NaN or inf"):
        latent_classes(bad, labels, LatentConfig(), 0)


# ---------------------------------------------------------------- faiss k-means
def mixture(n: int, k: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Gaussian clusters of unequal size and spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    which = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k) * 2))
    spread = rng.uniform(0.1, 0.6, size=k)[which, None]
    return (centres[which] + spread * rng.normal(size=(n, d))).astype(np.float32)


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign_nearest(x, centroids)[1].sum())


@pytest.mark.parametrize("impl", ["faiss", "minibatch"])
def test_no_empty_clusters_at_large_k(impl: str) -> None:
    # k = 200 clusters of 600 rows with only 150 distinct values: at least 50 centres have
    # no nearest row of their own (equal distances go to the lowest centre)
    x = np.repeat(mixture(150, 8, seed=1), 4, axis=0)
    cfg = LatentConfig(method="kmeans", k=200, min_class_size=1, kmeans_impl=impl)
    part = latent_classes(x, None, cfg, seed=0)
    assert part.num_classes == 200
    assert np.bincount(part.classes, minlength=200).min() >= 1


def test_fill_empty_moves_the_farthest_rows_of_clusters_with_spares() -> None:
    nearest = np.array([0, 0, 0, 2, 2])
    dist = np.array([0.1, 0.9, 0.5, 3.0, 0.2])
    # cluster 1 and 3 are empty: row 3 (farthest, its cluster 2 has 2 rows) fills 1, then
    # row 1 (cluster 2 now has 1 row, so the farthest movable is in cluster 0) fills 3
    np.testing.assert_array_equal(fill_empty(nearest, dist, 4), [0, 3, 0, 1, 2])
    np.testing.assert_array_equal(fill_empty(nearest, dist, 3), [0, 0, 0, 1, 2])


def test_faiss_inertia_is_not_worse_than_minibatch() -> None:
    x = mixture(20000, 40, seed=2)
    for seed in (0, 1):
        faiss_c = kmeans_centroids(x, LatentConfig(k=40, kmeans_impl="faiss", kmeans_n_init=2),
                                   seed)
        mini_c = kmeans_centroids(x, LatentConfig(k=40, kmeans_impl="minibatch"), seed)
        assert inertia(x, faiss_c) <= inertia(x, mini_c)


def test_faiss_kmeans_is_deterministic_under_a_seed() -> None:
    x = mixture(5000, 12, seed=3)
    cfg = LatentConfig(method="kmeans", k=12, kmeans_impl="faiss", kmeans_n_init=2,
                       kmeans_points_per_centroid=100)
    a = latent_classes(x, None, cfg, seed=4).classes
    np.testing.assert_array_equal(a, latent_classes(x, None, cfg, seed=4).classes)
    assert not np.array_equal(kmeans_centroids(x, cfg, 4), kmeans_centroids(x, cfg, 5))


def test_without_faiss_auto_falls_back_to_minibatch(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mixture(2000, 5, seed=4)
    monkeypatch.setattr(latent, "faiss_available", lambda: False)
    got = kmeans_centroids(x, LatentConfig(k=5), seed=0)
    np.testing.assert_array_equal(got, kmeans_centroids(x, LatentConfig(
        k=5, kmeans_impl="minibatch"), seed=0))
    with pytest.raises(SasRayError, match="pip install faiss-cpu"):
        kmeans_centroids(x, LatentConfig(k=5, kmeans_impl="faiss"), seed=0)
