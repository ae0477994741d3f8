"""Ingest on the Ray executor (the shared session) and the local one: synthetic, directory, tar,
corrupt files, CLI; the shard readers (Ray Data, planned batches)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sas_ray.cli import main
from sas_ray.config import Config
from sas_ray.core.data.images import decode_images
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray.data import read_dataset
from sas_ray.io import shards, storage
from sas_ray.stages.ingest import ingest

pytestmark = pytest.mark.usefixtures("ray_session")


def _cfg(shard_size: int = 4096, on_corrupt: str = "fail") -> Config:
    """Ingest settings; synthetic data curated as in the ``synthetic_shards`` fixture (4
    classes of 64 train + 16 test images, ids: train 0-255, test 256-319)."""
    cfg = Config()
    d = cfg.data
    d.shard_size, d.on_corrupt = shard_size, on_corrupt
    d.synthetic_classes, d.synthetic_train_per_class, d.synthetic_test_per_class = 4, 64, 16
    d.synthetic_imbalance, d.synthetic_duplicates, d.synthetic_junk = 1.0, 0.0, 0.0
    return cfg


def test_synthetic_shards(synthetic_shards: str) -> None:
    manifest = storage.require_manifest(synthetic_shards, "shards")
    meta = manifest["meta"]
    assert meta["class_names"] == ["disk", "square", "triangle", "cross"]
    assert meta["splits"]["train"]["per_class"] == dict.fromkeys(meta["class_names"], 64)
    assert meta["splits"]["test"]["images"] == 64 and meta["image_sizes"] == {"32x32": 320}
    table = shards.read_table(synthetic_shards)
    assert sorted(table["id"].to_pylist()) == list(range(320))
    assert sum(len(b) for b in table["image"].to_pylist()) == meta["image_bytes"]
    pixels = decode_images(table["image"].to_pylist()[:8])
    assert pixels.shape == (8, 32, 32, 3)


def test_read_dataset_filters_split_ids_columns(synthetic_shards: str) -> None:
    ds = read_dataset(synthetic_shards, split="test", ids=range(250, 270),
                      columns=["id", "label"])
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(256, 270))  # test ids start after 256 train
    assert set(rows[0]) == {"id", "label"} and [r["label"] for r in rows[:4]] == [0, 1, 2, 3]
    assert read_dataset(synthetic_shards).count() == 320


def test_planned_batches_cut_each_file_and_cover_the_split(tmp_path: Path) -> None:
    """Shards of 100 rows (the third holds train ids 200-255 and test ids 256-299): batches
    of at most 48 consecutive train ids, none across files, every train id once."""
    out = str(tmp_path / "shards")
    cfg = _cfg(shard_size=100)
    ingest("synthetic", out, cfg, executor=LocalExecutor(cfg))
    filesystem, batches = shards.plan_batches(out, "train", 48)
    assert [b.rows for b in batches] == [48, 48, 4, 48, 48, 4, 48, 8]
    assert len({b.path for b in batches}) == 3
    tables = [shards.read_batch(b, filesystem, "train", ["id", "split"]) for b in batches]
    for batch, table in zip(batches, tables, strict=True):
        assert table["id"].to_pylist() == list(range(batch.first_id, batch.last_id + 1))
        assert set(table["split"].to_pylist()) == {"train"}
    assert pa.concat_tables(tables)["id"].to_pylist() == list(range(256))


def test_ray_map_blocks_takes_blocks_lazily() -> None:
    """A streamed source is never pulled far ahead of the results: at most two blocks per
    cluster CPU are in flight (the tar's blocks are not all put in the object store)."""
    from sas_ray.executors.ray import RayExecutor
    from sas_ray.executors.ray.session import cluster_cpus

    window = max(2, 2 * int(cluster_cpus()))
    pulled: list[int] = []

    def blocks():  # type: ignore[no-untyped-def]
        for i in range(3 * window):
            pulled.append(i)
            yield pa.table({"x": [i]})

    rows = []
    for row in RayExecutor(_cfg()).map_blocks(pa.Table.slice, blocks()):
        rows.append(row)
        assert len(pulled) - len(rows) <= window
    assert sorted(r["x"] for r in rows) == list(range(3 * window))


def test_ray_path_equals_plain_loop_and_reruns(tmp_path: Path, image_folder) -> None:
    written = image_folder(tmp_path / "src", {"train/a": 5, "train/b": 4, "test/a": 3,
                                               "unlabeled": 1})
    ray_out = ingest(str(tmp_path / "src"), str(tmp_path / "ray"), _cfg(shard_size=3))
    loop_out = ingest(str(tmp_path / "src"), str(tmp_path / "loop"), _cfg(shard_size=3),
                      executor=LocalExecutor(_cfg(shard_size=3)))
    again = ingest(str(tmp_path / "src"), str(tmp_path / "ray"), _cfg(shard_size=3), force=True)
    assert ray_out["meta"] == loop_out["meta"] == again["meta"]
    assert ray_out["meta"]["num_shards"] == 5
    tables = [shards.read_table(str(tmp_path / d)).sort_by("id") for d in ("ray", "loop")]
    assert tables[0].equals(tables[1])
    assert tables[0]["image"].to_pylist() == [written[k] for k in sorted(written)]
    assert tables[0]["label"].to_pylist() == [0] * 8 + [1] * 4 + [None]
    # unchanged source and settings: nothing is rewritten
    created = storage.read_manifest(str(tmp_path / "ray"))["created"]
    ingest(str(tmp_path / "src"), str(tmp_path / "ray"), _cfg(shard_size=3))
    assert storage.read_manifest(str(tmp_path / "ray"))["created"] == created


def test_tar_gz_gives_the_directory_ids(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "src", {"train/cat": 4, "test/dog": 3}, seed=2)
    (tmp_path / "src" / "README.md").write_text("hi")
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="data")
    from_tar = ingest(str(tmp_path / "src.tar.gz"), str(tmp_path / "t"), _cfg(shard_size=2))
    ingest(str(tmp_path / "src"), str(tmp_path / "d"), _cfg(shard_size=2))
    a, b = (shards.read_table(str(tmp_path / d)).sort_by("id") for d in ("t", "d"))
    assert a.equals(b)
    assert from_tar["meta"]["ignored_files"] == {"count": 1, "examples": ["data/README.md"]}


def test_corrupt_image_fails_or_is_skipped(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "src", {"cat": 4, "dog": 4})
    (tmp_path / "src" / "dog" / "zz.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    with pytest.raises(SasRayError) as err:
        ingest(str(tmp_path / "src"), str(out), _cfg(shard_size=2))
    assert str(err.value).startswith("1 corrupt image: dog/zz.jpg (")
    assert "--data.on_corrupt skip" in str(err.value) and "\n" not in str(err.value)
    assert storage.list_files(str(out)) == []  # no manifest, no shard: nothing half-written
    manifest = ingest(str(tmp_path / "src"), str(out), _cfg(shard_size=2, on_corrupt="skip"))
    assert manifest["meta"]["skipped_corrupt"] == {"count": 1, "examples": ["dog/zz.jpg"]}
    assert shards.read_table(str(out))["id"].to_pylist() == list(range(8))  # id 8 unused


def test_failed_rewrite_keeps_the_previous_dataset(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "src", {"cat": 3})
    out = str(tmp_path / "out")
    before = ingest(str(tmp_path / "src"), out, _cfg())
    (tmp_path / "src" / "cat" / "bad.png").write_bytes(b"nope")
    with pytest.raises(SasRayError, match="corrupt image"):
        ingest(str(tmp_path / "src"), out, _cfg())
    assert storage.read_manifest(out) == before
    assert shards.read_table(out).num_rows == 3
    assert len(storage.list_files(out)) == 2  # manifest + one shard: no staging left over


def test_cli_ingest_info_and_errors(tmp_path: Path, image_folder, capsys) -> None:
    image_folder(tmp_path / "src", {"train/cat": 2, "test/cat": 1, "unlabeled": 2})
    out = str(tmp_path / "out")
    assert main(["ingest", str(tmp_path / "src"), out, "--data.shard_size", "2"]) == 0
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "source      " + str(tmp_path / "src") in text and "(no label)" in text
    assert "5 in 3 shard(s)" in text and "fingerprint" in text
    table = shards.read_table(out, split="unlabeled")
    assert table["label"].null_count == 2
    for argv, message in (
        (["ingest", str(tmp_path / "nope"), out], "does not exist"),
        (["ingest", str(tmp_path / "src"), "/proc/forbidden"], "cannot write to /proc"),
        (["info", str(tmp_path / "src")], "not a complete sas-ray artifact"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not Path("/proc/forbidden").exists()


@pytest.mark.data
def test_cifar10_archive(cifar10_tar: Path, tmp_path: Path) -> None:
    manifest = ingest(str(cifar10_tar), str(tmp_path / "cifar"), _cfg())
    meta = manifest["meta"]
    assert meta["class_names"] == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                   "frog", "horse", "ship", "truck"]
    assert meta["splits"]["train"]["images"] == 50_000
    assert meta["splits"]["test"]["images"] == 10_000
    assert set(meta["splits"]["train"]["per_class"].values()) == {5_000}
    assert set(meta["splits"]["test"]["per_class"].values()) == {1_000}
    assert meta["image_sizes"] == {"32x32": 60_000} and meta["num_shards"] == 15
    test = shards.read_table(str(tmp_path / "cifar"), split="test", columns=["id", "label"])
    assert test["id"].to_pylist() == list(range(10_000))  # "test/..." sorts before "train/..."
    labels = np.asarray(test["label"])
    assert np.array_equal(np.bincount(labels), [1_000] * 10) and labels[0] == 0
    sample = shards.read_table(str(tmp_path / "cifar"), ids=[0, 59_999])
    assert decode_images(sample["image"].to_pylist()).shape == (2, 32, 32, 3)
    assert pa.types.is_binary(sample.schema.field("image").type)
