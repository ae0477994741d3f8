"""Curation strategies (hkmeans, dbp) and incremental SAS selection; Ray-free."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sas_ray.cli import main
from sas_ray.config import Config, SelectConfig
from sas_ray.core.selection.dbp import dbp_clusters
from sas_ray.core.selection.hkmeans import balanced_order, within_group_rank
from sas_ray.core.selection.incremental import extend_order
from sas_ray.core.selection.registry import SELECTORS
from sas_ray.core.selection.similarity import normalize_rows
from sas_ray.io import storage
from sas_ray.io.artifacts import load_ranking
from sas_ray.stages.latent import partition
from sas_ray.stages.rank import rank


def concepts(sizes: list[int], d: int = 16, spreads: list[float] | None = None,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around one random direction per concept; the concept of each row."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * normalize_rows(rng.normal(size=(len(sizes), d)))
    concept = np.repeat(np.arange(len(sizes)), sizes)
    spread = np.asarray(spreads or [1.0] * len(sizes))[concept, None]
    return normalize_rows(centres[concept] + spread * rng.normal(size=(concept.size, d))), concept


def distance_from_uniform(concept: np.ndarray, kept: np.ndarray, k: int) -> float:
    """Total variation distance between the concept shares of ``kept`` and uniform."""
    share = np.bincount(concept[kept], minlength=k) / kept.size
    return 0.5 * float(np.abs(share - 1.0 / k).sum())


# ---------------------------------------------------------------- hkmeans
def test_hkmeans_keeps_rare_concepts_closer_to_uniform_than_random() -> None:
    sizes = [1500] + [30] * 5  # one dominant concept (91%), five rare ones (1.8% each)
    x, concept = concepts(sizes)
    cfg = SelectConfig()
    for f in (0.05, 0.1, 0.2):
        h = SELECTORS["hkmeans"](x, concept, None, 0, cfg).cut(f)
        r = SELECTORS["random"](x, concept, None, 0, cfg).cut(f)
        tv_h, tv_r = distance_from_uniform(concept, h, 6), distance_from_uniform(concept, r, 6)
        # measured (seeds 0-2, faiss or mini-batch k-means): tv_h 0.15-0.44, tv_r 0.67-0.74
        # (random keeps the 91% / 1.8% shares)
        assert tv_h < tv_r - 0.25, (f, tv_h, tv_r)
        rare = np.bincount(concept[h], minlength=6)[1:] / h.size
        assert rare.min() > 1.5 * 30 / sum(sizes)  # measured: >= 1.99x its pool share


def test_balanced_sampling_hand_checked() -> None:
    # root -> top clusters A (leaves a1: 3 rows, a2: 1 row) and B (leaf b1: 2 rows);
    # rows 0-2 in a1, 3 in a2, 4-5 in b1; leaf ranks 0..; sibling order = index order.
    leaf_of_row = np.array([0, 0, 0, 1, 2, 2])
    top_of_leaf = np.array([0, 0, 1])  # a1, a2 -> A; b1 -> B
    parents = [leaf_of_row, top_of_leaf, np.zeros(2, dtype=np.int64)]
    leaf_rank = np.array([0, 1, 2, 0, 0, 1])
    positions = [np.array([0, 1, 0]), np.array([0, 1])]
    order = balanced_order(parents, leaf_rank, positions)
    # A's order: a1[0], a2[0], a1[1], a1[2]; B's: b1[0], b1[1]; the root alternates A, B
    np.testing.assert_array_equal(order, [0, 4, 3, 5, 1, 2])
    # cut at 4: water-filling gives A 2, B 2; A splits its 2 as a1 1, a2 1
    assert sorted(order[:4].tolist()) == [0, 3, 4, 5]


@pytest.mark.parametrize("seed", range(5))
def test_balanced_prefixes_are_water_filling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    caps = rng.integers(1, 30, size=7)
    top = np.repeat(np.arange(7), caps)  # one leaf per top cluster
    parents = [top, np.zeros(7, dtype=np.int64)]
    positions = [within_group_rank(np.zeros(7, dtype=np.int64), rng.random(7))]
    order = balanced_order(parents, within_group_rank(top, rng.random(top.size)), positions)
    for m in range(1, top.size + 1):
        counts = np.bincount(top[order[:m]], minlength=7)
        level = max(t for t in range(caps.max() + 1) if np.minimum(caps, t).sum() <= m)
        base = np.minimum(caps, level)
        assert ((counts == base) | ((counts == level + 1) & (caps > level))).all()
        assert counts.sum() == m


# ---------------------------------------------------------------- dbp
def test_dbp_keep_rates_follow_complexity() -> None:
    x, concept = concepts([120] * 4, spreads=[0.2, 0.4, 0.7, 1.0], seed=3)
    cfg = SelectConfig(dbp_clusters=4, dbp_neighbors=3, dbp_temperature=0.1)
    kept = SELECTORS["dbp"](x, concept, None, 0, cfg).cut(0.3)
    cl = dbp_clusters(x, cfg, np.random.default_rng(0))  # the selector's first draw: seed 0
    of_cluster = np.array([np.bincount(concept[cl.assignment == c]).argmax() for c in range(4)])
    np.testing.assert_array_equal(of_cluster[cl.assignment], concept)  # the 4 concepts found
    cx = cl.complexity
    np.testing.assert_array_equal(of_cluster[np.argsort(cx.intra)], [0, 1, 2, 3])  # spread
    counts = np.bincount(cl.assignment[kept], minlength=4)  # measured: 5, 8, 104, 27
    # equal cluster sizes: keep rates follow the complexity order, counts the softmax
    np.testing.assert_array_equal(np.argsort(counts), np.argsort(cx.complexity))
    w = np.exp(cx.complexity / 0.1)
    np.testing.assert_allclose(counts, kept.size * w / w.sum(), atol=1.0)


@pytest.mark.parametrize("name", ["hkmeans", "dbp"])
def test_curation_strategies_are_deterministic_under_a_seed(name: str) -> None:
    x, concept = concepts([200, 40, 40], seed=5)
    cfg = SelectConfig(hkmeans_sampling="closest", dbp_within="hard")
    a, b = (SELECTORS[name](x, concept, None, 3, cfg) for _ in range(2))
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.scores, b.scores)
    c = SELECTORS[name](x, concept, None, 4, replace(cfg, hkmeans_sampling="random",
                                                     dbp_within="random"))
    assert not np.array_equal(a.order, c.order)
    assert a.nested and not a.balanced


# ---------------------------------------------------------------- incremental
def write_embeddings(uri: str, ids: np.ndarray, x: np.ndarray, labels: np.ndarray) -> None:
    """An ``embeddings`` artifact in the embed stage's schema (one file)."""
    flat = pa.array(x.astype(np.float32).ravel(), pa.float32())
    table = pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                      "emb": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})
    with storage.write_artifact(uri, "embeddings", config={"views": 2}, seed=0) as w:
        path = storage.join(w.dir, "part-0.parquet")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        w.meta.update(dim=x.shape[1], num_rows=int(ids.size))


def class_file_bytes(uri: str) -> dict[str, bytes]:
    meta = storage.require_manifest(uri, "ranking")["meta"]["classes"]
    files = {f.rsplit("/", 1)[-1]: f for f in storage.artifact_files(uri)}
    return {k: Path(files[v["file"].rsplit("/", 1)[-1]]).read_bytes() for k, v in meta.items()}


def ranking_columns(uri: str) -> dict[str, np.ndarray]:
    r = load_ranking(uri)
    return {"ids": r.ids, "scores": r.ranking.scores, "latent": r.ranking.latent}


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An old pool (classes 0-4) and a grown one: ~10% new rows in classes 1 and 3 and a
    new class 5; partitions by labels of both, and the old pool's SAS ranking."""
    root = tmp_path_factory.mktemp("incremental")
    x, labels = concepts([60, 50, 40, 45, 35, 8], seed=7)
    ids = 100 + 3 * np.arange(labels.size)
    rng = np.random.default_rng(0)
    new = np.zeros(labels.size, dtype=bool)
    for c, k in ((1, 6), (3, 5)):
        new[rng.choice(np.flatnonzero(labels == c), k, replace=False)] = True
    new[labels == 5] = True
    cfg = Config()
    cfg.run.executor, cfg.latent.method, cfg.select.num_workers = "local", "labels", 1
    paths = {k: str(root / k) for k in ("emb_old", "emb_new", "part_old", "part_new", "prev")}
    write_embeddings(paths["emb_old"], ids[~new], x[~new], labels[~new])
    write_embeddings(paths["emb_new"], ids, x, labels)
    partition(cfg, paths["emb_old"], paths["part_old"])
    partition(cfg, paths["emb_new"], paths["part_new"])
    rank(cfg, paths["emb_old"], paths["part_old"], "sas", paths["prev"])
    paths["root"] = str(root)
    return paths


def local_cfg(**select) -> Config:
    cfg = Config()
    cfg.run.executor, cfg.latent.method, cfg.select.num_workers = "local", "labels", 1
    for k, v in select.items():
        setattr(cfg.select, k, v)
    return cfg


def test_incremental_rerun_equals_a_full_recompute(grown: dict[str, str]) -> None:
    root = grown["root"]
    full = rank(local_cfg(), grown["emb_new"], grown["part_new"], "sas", f"{root}/full")
    inc = rank(local_cfg(incremental=grown["prev"], incremental_greedy="rerun"),
               grown["emb_new"], grown["part_new"], "sas", f"{root}/rerun")
    assert inc["meta"]["incremental"]["classes"] == {"reuse": 3, "extend": 0, "rank": 3}
    assert inc["meta"]["incremental"]["new_rows"] == 19
    a, b = ranking_columns(f"{root}/full"), ranking_columns(f"{root}/rerun")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    prev, now = class_file_bytes(grown["prev"]), class_file_bytes(f"{root}/rerun")
    how = {k: v["how"] for k, v in inc["meta"]["classes"].items()}
    assert {k for k, v in how.items() if v == "reuse"} == {"0", "2", "4"}
    for k in ("0", "2", "4"):
        assert now[k] == prev[k]  # untouched classes: the same bytes
    assert class_file_bytes(f"{root}/full") == now  # and every class as a full run writes it
    assert full["meta"]["classes"]["1"]["fingerprint"] == inc["meta"]["classes"]["1"][
        "fingerprint"]


def test_incremental_extend_has_exact_gains_and_near_full_quality(grown: dict[str, str]
                                                                  ) -> None:
    root = grown["root"]
    inc = rank(local_cfg(incremental=grown["prev"]), grown["emb_new"], grown["part_new"],
               "sas", f"{root}/extend")
    assert inc["meta"]["incremental"]["classes"] == {"reuse": 3, "extend": 2, "rank": 1}
    prev, now = class_file_bytes(grown["prev"]), class_file_bytes(f"{root}/extend")
    for k in ("0", "2", "4"):
        assert now[k] == prev[k]
    full = load_ranking(f"{root}/full") if storage.exists(f"{root}/full") else None
    if full is None:
        rank(local_cfg(), grown["emb_new"], grown["part_new"], "sas", f"{root}/full")
        full = load_ranking(f"{root}/full")
    ext = load_ranking(f"{root}/extend")
    x, labels = concepts([60, 50, 40, 45, 35, 8], seed=7)
    ids = 100 + 3 * np.arange(labels.size)
    for c in (1, 3):
        s = x[labels == c].astype(np.float64) @ x[labels == c].astype(np.float64).T
        pos = {int(i): p for p, i in enumerate(ids[labels == c])}

        def cut_value(order_ids: np.ndarray, r: int, s=s, pos=pos) -> float:
            chosen = np.zeros(s.shape[0], dtype=bool)
            chosen[[pos[int(i)] for i in order_ids[:r]]] = True
            return float(s[~chosen][:, chosen].sum())

        mine = ext.ranking.latent == c
        e_ids, e_scores = ext.ids[mine], ext.ranking.scores[mine]
        f_ids = full.ids[full.ranking.latent == c]
        for r in (5, 20, len(e_ids) // 2):
            assert abs(np.sum(e_scores[:r]) - cut_value(e_ids, r)) < 1e-3  # exact gains
            assert cut_value(e_ids, r) >= 0.98 * cut_value(f_ids, r)  # measured: >= 0.995


def test_extend_order_without_new_rows_keeps_the_order() -> None:
    x, _ = concepts([30], seed=2)
    old = np.random.default_rng(0).permutation(30)
    gains = np.linspace(5, 1, 30)
    out = extend_order(x.astype(np.float32), old, gains, None)
    np.testing.assert_array_equal(out.order, old)
    np.testing.assert_array_equal(out.scores, gains)


def test_new_rows_missing_from_the_partition_go_to_the_nearest_class(grown: dict[str, str]
                                                                     ) -> None:
    root = grown["root"]
    inc = rank(local_cfg(incremental=grown["prev"], incremental_greedy="rerun"),
               grown["emb_new"], grown["part_old"], "sas", f"{root}/assigned")
    assert inc["meta"]["incremental"]["assigned_rows"] == 19
    r = load_ranking(f"{root}/assigned")
    _, labels = concepts([60, 50, 40, 45, 35, 8], seed=7)
    by_id = dict(zip((100 + 3 * np.arange(labels.size)).tolist(), labels.tolist(), strict=True))
    true = np.array([by_id[int(i)] for i in r.ids])
    seen = true != 5  # class 5 is unknown to the old partition: its rows join old classes
    np.testing.assert_array_equal(r.ranking.latent[seen], true[seen])
    assert set(r.ranking.latent.tolist()) == {0, 1, 2, 3, 4}


def test_incremental_previous_mode_reuses_and_is_deterministic(grown: dict[str, str]) -> None:
    out = f"{grown['root']}/auto"
    limited = rank(local_cfg(), grown["emb_old"], grown["part_old"], "sas", out, rank_limit=0.5)
    assert "classes" not in limited["meta"]  # past its limit the scores are not gains
    # the pipeline's call (rank_limit = its largest fraction): ranked whole, with class state
    first = rank(local_cfg(incremental="previous"), grown["emb_old"], grown["part_old"], "sas",
                 out, rank_limit=0.5)
    assert "incremental" not in first["meta"] and first["meta"]["rank_limit"] == 1.0
    grown_once = rank(local_cfg(incremental="previous"), grown["emb_new"], grown["part_new"],
                      "sas", out, rank_limit=0.5)
    assert grown_once["meta"]["incremental"]["classes"]["reuse"] == 3
    again = rank(local_cfg(incremental="previous"), grown["emb_new"], grown["part_new"], "sas",
                 out, rank_limit=0.5)
    assert again == grown_once  # up to date: not recomputed
    other = f"{grown['root']}/extend-again"
    rank(local_cfg(incremental=grown["prev"]), grown["emb_new"], grown["part_new"], "sas", other)
    assert class_file_bytes(other) == class_file_bytes(out)
    for key, col in ranking_columns(other).items():
        np.testing.assert_array_equal(col, ranking_columns(out)[key])


def test_cli_select_incremental_and_subset_info(grown: dict[str, str],
                                                capsys: pytest.CaptureFixture) -> None:
    out = f"{grown['root']}/cli"
    assert main(["select", "--embeddings", grown["emb_new"], "--partition", grown["part_new"],
                 "--out", out, "--incremental", grown["prev"], "--run.executor", "local",
                 "--select.strategies", "sas,hkmeans,dbp", "--select.num_workers", "1"]) == 0
    assert main(["subset-info", f"{out}/sas", "--fraction", "0.5", "--compare",
                 f"{out}/hkmeans"]) == 0
    text = capsys.readouterr().out
    assert "19 new rows; classes 3 reuse, 2 extend, 1 rank" in text
    assert "overlap with" in text and "(hkmeans)" in text
