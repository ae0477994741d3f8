"""Latent and select stages on Ray: artifacts, parallel ranking == single process, subsets,
CLI handlers, S3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sas_ray.cli import main
from sas_ray.config import Config
from sas_ray.core.selection.registry import SELECTORS
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.io.artifacts import load_ranking, read_embeddings, subset_ids
from sas_ray.stages.latent import partition
from sas_ray.stages.rank import rank

pytestmark = pytest.mark.ray


def write_embeddings(uri: str, ids: np.ndarray, x: np.ndarray, labels: np.ndarray | None,
                     dtype: str = "float32") -> None:
    """An ``embeddings`` artifact in the embed stage's schema, split over two files."""
    pa_type = {"float32": pa.float32(), "float16": pa.float16()}[dtype]
    label_col = pa.array(None if labels is None else labels.tolist(), pa.int64()) \
        if labels is not None else pa.nulls(ids.size, pa.int64())
    flat = pa.array(x.astype(dtype).ravel(), pa_type)
    table = pa.table({"id": pa.array(ids, pa.int64()), "label": label_col,
                      "emb": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})
    with storage.write_artifact(uri, "embeddings", config={"views": 2}, seed=0) as w:
        half = ids.size // 2
        for i, part in enumerate([table.slice(0, half), table.slice(half)]):
            fs, path = storage.filesystem(storage.join(w.dir, f"part-{i}.parquet"))
            if not storage.is_s3(uri):
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(part, path, filesystem=fs)
        w.meta.update(dim=x.shape[1], views=2, dtype=dtype, num_rows=int(ids.size))


def synthetic(sizes: list[int], d: int = 12, seed: int = 0):
    """Mean-of-views rows around a centre per class; shuffled, non-contiguous ids."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), 1, d))
    views = centres[labels] + 0.6 * rng.normal(size=(labels.size, 2, d))
    x = (views / np.linalg.norm(views, axis=2, keepdims=True)).mean(axis=1)
    perm = rng.permutation(labels.size)
    ids = 1000 + 7 * np.arange(labels.size)
    return ids[perm], x[perm], labels[perm]


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Config]:
    root = tmp_path_factory.mktemp("rank")
    ids, x, labels = synthetic([60, 45, 30, 25, 20, 12])
    emb = str(root / "embeddings")
    write_embeddings(emb, ids, x, labels)
    cfg = Config()
    cfg.latent.method = "labels"
    part = str(root / "partition")
    partition(cfg, emb, part)
    return emb, part, cfg


def test_partition_artifact(stage_inputs, tmp_path: Path) -> None:
    emb, part, _ = stage_inputs
    manifest = storage.require_manifest(part, "partition")
    meta = manifest["meta"]
    assert meta["method"] == "labels" and meta["k"] == 6 and meta["purity"] == 1.0
    assert meta["sizes"] == {"0": 60, "1": 45, "2": 30, "3": 25, "4": 20, "5": 12}
    df = pq.read_table(storage.artifact_files(part)[0]).to_pandas()
    assert list(df.columns) == ["id", "latent_class"] and len(df) == 192
    cfg_k = Config()
    cfg_k.latent.method, cfg_k.latent.k = "kmeans", 6
    meta_k = partition(cfg_k, emb, str(tmp_path / "kmeans"))["meta"]
    assert meta_k["method"] == "kmeans" and meta_k["nmi"] > 0.8


@pytest.mark.parametrize("strategy", ["sas", "random-balanced", "prototypes-hard"])
def test_one_and_two_workers_match_single_process(stage_inputs, ray_session, tmp_path: Path,
                                                  strategy: str) -> None:
    emb, part, cfg = stage_inputs
    embeddings = read_embeddings(emb)
    labels = embeddings.labels
    cfg.select.clusters_per_class = 2  # per-class randomness for prototypes
    single = SELECTORS[strategy](embeddings.x, labels, None, cfg.run.seed, cfg.select, labels)
    want = embeddings.ids[single.order]
    for workers in (1, 2):
        cfg.select.num_workers = workers
        out = str(tmp_path / f"w{workers}")
        manifest = rank(cfg, emb, part, strategy, out)
        table = pq.read_table(storage.artifact_files(out)[0])
        assert table["rank"].to_pylist() == list(range(192))
        np.testing.assert_array_equal(table["id"].to_numpy(), want)
        np.testing.assert_array_equal(table["score"].to_numpy(), single.scores)
        assert manifest["meta"]["nested"] and manifest["meta"]["fraction"] is None
    cfg.select.clusters_per_class = 1


def test_subset_ids_are_per_class_proportional_prefixes(stage_inputs, ray_session,
                                                        tmp_path: Path) -> None:
    emb, part, cfg = stage_inputs
    out = str(tmp_path / "sas")
    rank(cfg, emb, part, "sas", out)
    labels = dict(zip(*[a.tolist() for a in (read_embeddings(emb).ids,
                                              read_embeddings(emb).labels)], strict=True))
    previous: set[int] = set()
    for f in (0.1, 0.25, 0.5, 0.9):
        chosen = subset_ids(out, f)
        assert chosen.size == int(np.floor(f * 192 + 0.5))
        counts = np.bincount([labels[i] for i in chosen], minlength=6)
        assert (np.abs(counts - f * np.array([60, 45, 30, 25, 20, 12])) <= 1.5).all()
        assert previous <= set(chosen.tolist())
        previous = set(chosen.tolist())
    manifest_again = rank(cfg, emb, part, "sas", out)  # up to date: reused, not rewritten
    assert manifest_again["created"] == storage.require_manifest(out)["created"]


def test_double_greedy_ranking_is_for_one_fraction(stage_inputs, ray_session,
                                                   tmp_path: Path) -> None:
    emb, part, _ = stage_inputs
    cfg = Config()
    cfg.select.double_greedy = True
    out = str(tmp_path / "dg")
    with pytest.raises(SasRayError, match="pass --fraction"):
        rank(cfg, emb, part, "sas", out)
    assert not Path(out).exists()
    meta = rank(cfg, emb, part, "sas", out, fraction=0.3)["meta"]
    assert not meta["nested"] and meta["fraction"] == 0.3
    assert subset_ids(out).size == subset_ids(out, 0.3).size == 58
    with pytest.raises(SasRayError, match=r"built for fraction 0\.3 only"):
        subset_ids(out, 0.5)


def test_cli_latent_select_subset_info(stage_inputs, ray_session, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    emb, _, _ = stage_inputs
    part, rankings = str(tmp_path / "part"), tmp_path / "rankings"
    sas, rnd = str(rankings / "sas"), str(rankings / "random")
    assert main(["latent", "--embeddings", emb, "--out", part, "--latent.method",
                 "few-labels", "--latent.label_fraction", "0.05"]) == 0
    assert "by few-labels, purity" in capsys.readouterr().out
    assert main(["select", "--embeddings", emb, "--partition", part, "--select.strategies",
                 "sas,random", "--out", str(rankings)]) == 0
    assert capsys.readouterr().out.count("ranking: ") == 2
    assert main(["subset-info", sas, "--fraction", "0.5", "--compare", rnd]) == 0
    out = capsys.readouterr().out
    assert "subset at fraction 0.5: 96 rows" in out
    both = len(set(subset_ids(sas, 0.5).tolist()) & set(subset_ids(rnd, 0.5).tolist()))
    assert f"{both:,} rows, Jaccard {both / (192 - both):.3f}" in out
    bad = str(tmp_path / "bad")
    assert main(["select", "--embeddings", emb, "--partition", part, "--select.strategies",
                 "sass", "--out", bad]) == 2
    assert main(["subset-info", sas]) == 2
    assert "pass --fraction" in capsys.readouterr().err
    assert not Path(bad).exists()


def test_bad_inputs_leave_nothing_behind(stage_inputs, tmp_path: Path) -> None:
    emb, part, cfg = stage_inputs
    ids, x, labels = synthetic([10, 10], seed=1)
    other = str(tmp_path / "other")
    write_embeddings(other, ids, x, labels)
    with pytest.raises(SasRayError, match="ids differ"):
        rank(cfg, other, part, "sas", str(tmp_path / "r1"))
    x[3] = np.nan
    nan_emb = str(tmp_path / "nan")
    write_embeddings(nan_emb, ids, x, labels)
    with pytest.raises(SasRayError, match="1 of 20 rows hold NaN"):
        partition(cfg, nan_emb, str(tmp_path / "p1"))
    with pytest.raises(SasRayError, match="out of range"):
        rank(cfg, emb, part, "sas", str(tmp_path / "r2"), fraction=1.5)
    with pytest.raises(SasRayError, match="not a complete sas-ray artifact"):
        rank(cfg, emb, str(tmp_path / "missing"), "sas", str(tmp_path / "r3"))
    assert not any((tmp_path / p).exists() for p in ("r1", "p1", "r2", "r3"))


def test_unlabeled_float16_embeddings_on_s3(s3_bucket: str, ray_session) -> None:
    ids, x, _ = synthetic([40, 30, 30], seed=2)
    emb = f"{s3_bucket}/embeddings"
    write_embeddings(emb, ids, x, None, dtype="float16")
    cfg = Config()
    cfg.latent.method, cfg.latent.k = "kmeans", 3
    meta = partition(cfg, emb, f"{s3_bucket}/partition")["meta"]
    assert meta["purity"] is None and meta["k"] == 3
    rank(cfg, emb, f"{s3_bucket}/partition", "sas", f"{s3_bucket}/ranking")
    stored = load_ranking(f"{s3_bucket}/ranking")
    assert stored.strategy == "sas" and sorted(stored.ids.tolist()) == sorted(ids.tolist())
    assert subset_ids(f"{s3_bucket}/ranking", 0.2).size == 20
    with pytest.raises(SasRayError, match="100 rows have none"):
        rank(cfg, emb, f"{s3_bucket}/partition", "el2n-hard", f"{s3_bucket}/el2n")
