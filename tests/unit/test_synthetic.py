"""The built-in synthetic pool: deterministic, long-tailed, with tagged near-duplicates and
junk, and its kinds carried into the shards' manifest (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sas_ray.config import Config, DataConfig
from sas_ray.core.data import sources
from sas_ray.core.data.sources import synthetic
from sas_ray.core.data.sources.synthetic import JUNK, KINDS, class_sizes, synthetic_split
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.io import storage
from sas_ray.stages.ingest import ingest

SMALL = DataConfig(synthetic_classes=4, synthetic_train_per_class=50,
                   synthetic_test_per_class=5, synthetic_size=16)


def kind_ids(split: synthetic.Split, kind: str) -> np.ndarray:
    return np.flatnonzero(split.kinds == KINDS.index(kind))


def test_deterministic_in_seed_and_split() -> None:
    a, b = synthetic_split(SMALL, 3, "train"), synthetic_split(SMALL, 3, "train")
    c, t = synthetic_split(SMALL, 4, "train"), synthetic_split(SMALL, 3, "test")
    assert a.pixels.shape == (200, 16, 16, 3) and a.pixels.dtype == np.uint8
    for x, y in ((a.pixels, b.pixels), (a.labels, b.labels), (a.kinds, b.kinds)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.pixels, c.pixels)
    assert t.pixels.shape == (20, 16, 16, 3)


def test_pool_shares_long_tail_and_curated_test() -> None:
    data = DataConfig(synthetic_classes=6, synthetic_train_per_class=100, synthetic_size=16,
                      synthetic_test_per_class=16,
                      synthetic_imbalance=8.0, synthetic_duplicates=0.15, synthetic_junk=0.12)
    train, test = synthetic_split(data, 0, "train"), synthetic_split(data, 0, "test")
    counts = np.bincount(train.kinds, minlength=len(KINDS))
    assert counts.sum() == 600 and counts[KINDS.index("duplicate")] == 90
    assert sum(counts[KINDS.index(k)] for k in JUNK) == 72
    assert all(counts[KINDS.index(k)] == 24 for k in JUNK)  # junk split evenly over kinds
    clean = np.bincount(train.labels[train.kinds == 0], minlength=6)
    assert clean.sum() == 438 and (np.diff(clean) <= 0).all()  # largest class first
    assert clean[0] / clean[-1] == pytest.approx(8.0, rel=0.25)
    assert (test.kinds == 0).all() and (np.bincount(test.labels) == 16).all()
    # kinds and classes are interleaved in id order, not in blocks
    assert len(np.unique(train.kinds[:50])) >= 3 and len(np.unique(train.labels[:50])) >= 4


def test_class_sizes_sum_and_keep_every_class() -> None:
    sizes = class_sizes(100, 8, 50.0)
    assert sizes.sum() == 100 and sizes.min() >= 1 and sizes[0] > 5 * sizes[-1]
    assert class_sizes(12, 4, 1.0).tolist() == [3, 3, 3, 3]
    with pytest.raises(SasRayError, match="synthetic_train_per_class"):
        class_sizes(3, 4, 2.0)


def test_duplicates_are_near_copies_of_clean_images_and_images_vary() -> None:
    train = synthetic_split(SMALL, 0, "train")
    x = train.pixels.reshape(len(train.pixels), -1).astype(np.float64)
    clean, dups = kind_ids(train, "clean"), kind_ids(train, "duplicate")
    for i in dups[:10]:
        d = np.abs(x[clean] - x[i]).mean(axis=1)
        j = clean[np.argmin(d)]
        assert d.min() < 8 and train.labels[j] == train.labels[i]  # a copy, same label
    pairs = np.abs(x[clean[:20]][:, None] - x[clean[:20]][None]).mean(-1)
    assert np.median(pairs[np.triu_indices(20, 1)]) > 25  # clean images differ a lot
    blank = train.pixels[kind_ids(train, "blank")].astype(np.float64)
    assert blank.std(axis=(1, 2)).max() < 6  # flat
    noise = train.pixels[kind_ids(train, "noise")].astype(np.float64)
    assert noise.std(axis=(1, 2)).min() > 20


def test_classes_are_shapes_and_bad_settings_fail() -> None:
    src = sources.open_source("synthetic", SMALL, seed=1)
    assert src.class_names == ["disk", "square", "triangle", "cross"]
    assert [it.split for it in src.items] == ["train"] * 200 + ["test"] * 20
    assert sorted(i for ids in src.kinds.values() for i in ids) == list(range(220))
    assert set(src.kinds["clean"]) >= set(range(200, 220))  # the test split is clean
    with pytest.raises(SasRayError, match="synthetic_classes"):
        synthetic_split(DataConfig(synthetic_classes=9), 0, "train")


def test_ingest_records_kinds_and_shards_stay_plain_parquet(tmp_path: Path) -> None:
    cfg = Config()
    cfg.data = SMALL
    out = str(tmp_path / "shards")
    manifest = ingest("synthetic", out, cfg, executor=LocalExecutor(cfg))
    kinds = manifest["meta"]["kinds"]
    assert set(kinds) == set(KINDS) and sum(map(len, kinds.values())) == 220
    frame = pd.concat(pd.read_parquet(tmp_path / "shards" / f)
                      for f in manifest["files"] if f.endswith(".parquet"))
    assert list(frame.columns) == ["id", "image", "label", "split"]
    assert sorted(frame["id"]) == list(range(220))
    again = ingest("synthetic", str(tmp_path / "again"), cfg, executor=LocalExecutor(cfg))
    assert again["meta"]["kinds"] == kinds  # ids and kinds are stable under the seed
    assert storage.read_manifest(out)["fingerprint"] == again["fingerprint"]
