"""Sources, image decoding, the shard schema and the per-shard ingest work, without Ray."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sas_ray.config import Config, DataConfig
from sas_ray.core.data import images, sources
from sas_ray.core.data.sources import imagefolder
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.io import shards, storage
from sas_ray.stages import ingest as ingest_stage
from sas_ray.stages.ingest import ingest

# synthetic: tests/unit/test_synthetic.py


# --- ImageFolder directory and tar ---------------------------------------------------------


def test_folder_layout_variants() -> None:
    assert imagefolder.folder_layout(["train/cat/1.png", "test/dog/2.png", "unlabeled/3.png"]) == [
        ("train/cat/1.png", "train", "cat"), ("test/dog/2.png", "test", "dog"),
        ("unlabeled/3.png", "unlabeled", None)]
    assert imagefolder.folder_layout(["cat/1.png", "dog/x/2.png"]) == [
        ("cat/1.png", "train", "cat"), ("dog/x/2.png", "train", "dog")]
    assert imagefolder.folder_layout(["a.png", "b.jpg"]) == [("a.png", "train", None),
                                                         ("b.jpg", "train", None)]
    # one wrapper directory is skipped; a lone split folder is not a wrapper
    assert imagefolder.folder_layout(["cifar/train/cat/1.png"]) == [
        ("cifar/train/cat/1.png", "train", "cat")]
    assert imagefolder.folder_layout(["train/cat/1.png"]) == [("train/cat/1.png", "train", "cat")]
    with pytest.raises(SasRayError, match="outside the split folders"):
        imagefolder.folder_layout(["train/cat/1.png", "dog/2.png"])


def test_imagefolder_dir_labels_order_and_ignored(tmp_path: Path, image_folder) -> None:
    written = image_folder(tmp_path, {"train/cat": 3, "train/dog": 2, "test/cat": 1,
                                      "test/emu": 1})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    src = sources.open_source(str(tmp_path))
    assert src.kind == "file"
    assert src.class_names == ["cat", "dog", "emu"]  # union of splits, sorted
    assert [it.name for it in src.items] == sorted(written)  # ids follow sorted paths
    by_name = {it.name: it for it in src.items}
    assert by_name["test/emu/000.png"].label == 2 and by_name["test/emu/000.png"].split == "test"
    assert by_name["train/dog/001.png"].label == 1
    assert Path(by_name["train/dog/001.png"].payload).read_bytes() == written["train/dog/001.png"]
    assert src.ignored == [".DS_Store", "train/cat/notes.txt"]


def test_imagefolder_flat_folder_has_no_labels(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path, {"": 3})
    src = sources.open_source(str(tmp_path))
    assert src.class_names == [] and {it.label for it in src.items} == {None}
    assert {it.split for it in src.items} == {"train"}


@pytest.mark.parametrize("problem", ["missing", "empty", "not_archive", "only_text"])
def test_imagefolder_bad_paths_fail_clearly(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "src"
    if problem == "empty":
        path.mkdir()
    elif problem == "not_archive":
        path.write_text("hello")
    elif problem == "only_text":
        path.mkdir()
        (path / "readme.txt").write_text("hi")
    with pytest.raises(SasRayError) as err:
        sources.open_source(str(path))
    message = {"missing": "does not exist", "empty": "no images found",
               "not_archive": "not a", "only_text": "1 other files ignored"}[problem]
    assert message in str(err.value) and "\n" not in str(err.value)


def _pack(root: Path, archive: Path, fmt: int = tarfile.PAX_FORMAT) -> None:
    suffix = archive.name.rsplit(".", 1)[-1]
    mode = {"gz": "w:gz", "tgz": "w:gz", "bz2": "w:bz2", "xz": "w:xz"}.get(suffix, "w")
    with tarfile.open(archive, mode, format=fmt) as tar:
        tar.add(root, arcname="wrapped")


@pytest.mark.parametrize("name", ["data.tar", "data.tar.gz", "data.tgz", "data.tar.bz2",
                                  "data.tar.xz"])
def test_imagefolder_tar_matches_directory(tmp_path: Path, image_folder, name: str) -> None:
    root = tmp_path / "root"
    image_folder(root, {"train/cat": 3, "train/dog": 2, "test/dog": 2})
    (root / "LICENSE").write_text("text")
    _pack(root, tmp_path / name)
    from_dir = sources.open_source(str(root))
    from_tar = sources.open_source(str(tmp_path / name))
    assert from_tar.kind == "encoded"
    assert from_tar.class_names == from_dir.class_names
    assert [(i.split, i.label) for i in from_tar.items] == [(i.split, i.label)
                                                            for i in from_dir.items]
    assert {it.payload for it in from_tar.items} == {None}  # bytes come from the stream
    assert dict(from_tar.stream()) == {i: Path(p).read_bytes() for i, p in from_dir.stream()}
    assert from_tar.ignored == ["wrapped/LICENSE"]


def _tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """An uncompressed tar of ``(path, data)`` members in this order (data None: a dir)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in members:
            info = tarfile.TarInfo(path)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_streams_in_archive_order_with_sorted_ids(tmp_path: Path) -> None:
    """Ids follow sorted paths whatever the archive order; a repeated member counts with its
    last copy; the stream gives each image once, in archive order."""
    png = {n: images.encode_png(np.full((2, 2), n, np.uint8)) for n in range(5)}
    archive = tmp_path / "shuffled.tar"
    archive.write_bytes(_tar_bytes([("dog/b.png", png[0]), ("cat/a.png", png[1]),
                                    ("dog/a.png", png[2]), ("notes.txt", b"hi"),
                                    ("dog/b.png", png[3]), ("cat/b.png", png[4])]))
    src = sources.open_source(str(archive))
    assert [(it.name, it.label) for it in src.items] == [
        ("cat/a.png", 0), ("cat/b.png", 0), ("dog/a.png", 1), ("dog/b.png", 1)]
    assert list(src.stream()) == [(0, png[1]), (2, png[2]), (3, png[3]), (1, png[4])]
    assert src.ignored == ["notes.txt"]


def test_tar_changed_between_passes_fails(tmp_path: Path) -> None:
    png = images.encode_png(np.zeros((2, 2), np.uint8))
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_bytes([("cat/a.png", png), ("cat/b.png", png)]))
    src = sources.open_source(str(archive))
    archive.write_bytes(_tar_bytes([("cat/a.png", png), ("cat/c.png", png)]))
    with pytest.raises(SasRayError, match="changed while it was being read"):
        list(src.stream())


def test_empty_class_directories_are_reported(tmp_path: Path, image_folder) -> None:
    root = tmp_path / "root"
    image_folder(root, {"train/cat": 2, "train/dog": 1, "test/cat": 1})
    for empty in ("train/emu", "test/dog", "train/.cache"):
        (root / empty).mkdir(parents=True)
    (root / "test" / "dog" / "readme.txt").write_text("only text")
    _pack(root, tmp_path / "root.tar.gz")
    for spec in (root, tmp_path / "root.tar.gz"):
        src = sources.open_source(str(spec))
        prefix = "wrapped/" if str(spec).endswith(".gz") else ""
        assert src.class_names == ["cat", "dog"]
        assert src.empty_classes == [prefix + "test/dog", prefix + "train/emu"]
    flat = tmp_path / "flat"
    image_folder(flat, {"cat": 1})
    (flat / "dog").mkdir()
    assert sources.open_source(str(flat)).empty_classes == ["dog"]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_iter_tar_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    long_dir = "d" * 60 + "/" + "e" * 60  # > 100 characters: long-name records or prefix
    members = {f"{long_dir}/{'f' * 40}.png": b"x" * 700, "a/b.jpg": b"", "c.png": b"y" * 512}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("a")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "c.png"
        tar.addfile(link)
    data = buf.getvalue()
    entries = list(imagefolder.iter_tar(iter([data])))
    assert {e.path: e.data for e in entries if not e.is_dir} == members
    assert [e.path for e in entries if e.is_dir] == ["a"]
    chunks = [data[i:i + 100] for i in range(0, len(data), 100)]
    assert list(imagefolder.iter_tar(iter(chunks))) == entries  # chunk boundaries anywhere
    skipped = list(imagefolder.iter_tar(iter(chunks), want=lambda path: path == "c.png"))
    assert {e.path: e.data for e in skipped if not e.is_dir} == {
        **dict.fromkeys(members), "c.png": b"y" * 512}


@pytest.mark.parametrize("mode", ["gz", "bz2", "xz", ""])
def test_decompressed_chunks_are_bounded(mode: str) -> None:
    """A highly compressible stream never comes out in chunks larger than asked for;
    concatenated gzip members are followed."""
    import bz2
    import lzma

    raw = bytes(3_000_000)
    pack = {"gz": lambda b: gzip.compress(b[:1_000_000]) + gzip.compress(b[1_000_000:]),
            "bz2": bz2.compress, "xz": lzma.compress, "": lambda b: b}[mode]
    chunks = list(imagefolder.decompressed_chunks(io.BytesIO(pack(raw)), chunk_size=1 << 16))
    assert max(map(len, chunks)) <= 1 << 16 and b"".join(chunks) == raw


def test_damaged_archives_fail_clearly(tmp_path: Path, image_folder) -> None:
    root = tmp_path / "root"
    image_folder(root, {"cat": 2})
    _pack(root, tmp_path / "ok.tar.gz")
    data = (tmp_path / "ok.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive at all" * 40)
    for name in ("cut.tar.gz", "junk.tar"):
        with pytest.raises(SasRayError, match="cannot read archive"):
            sources.open_source(str(tmp_path / name))
    with pytest.raises(SasRayError, match="does not exist"):
        sources.open_source(str(tmp_path / "absent.tgz"))


# --- IDX -----------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, compress: bool, n_train: int = 5, n_test: int = 3,
               labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.integers(0, 256, (n_train + n_test, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    y[0] = 9
    parts = {"train": slice(0, n_train), "t10k": slice(n_train, None)}
    for prefix, sl in parts.items():
        files = {f"{prefix}-images-idx3-ubyte": _idx(x[sl])}
        if labels:
            files[f"{prefix}-labels-idx1-ubyte"] = _idx(y[sl])
        for name, data in files.items():
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return x, y


@pytest.mark.parametrize("compress", [True, False])
def test_idx_source_reads_gz_and_raw(tmp_path: Path, compress: bool) -> None:
    x, y = _write_idx(tmp_path / "idx", compress)
    src = sources.open_source(f"idx:{tmp_path / 'idx'}")
    assert src.kind == "pixels" and src.pixel_shape == (6, 5)
    assert [it.split for it in src.items] == ["train"] * 5 + ["test"] * 3
    assert [it.label for it in src.items] == y.tolist()
    np.testing.assert_array_equal(np.stack([it.payload for it in src.items]), x)
    assert src.class_names == [str(i) for i in range(10)]


def test_idx_without_labels_and_broken_files(tmp_path: Path) -> None:
    _write_idx(tmp_path / "nolabels", compress=False, labels=False)
    src = sources.open_source(f"idx:{tmp_path / 'nolabels'}")
    assert {it.label for it in src.items} == {None} and src.class_names == []
    bad = tmp_path / "bad"
    _write_idx(bad, compress=False)
    (bad / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(7, np.uint8)))
    with pytest.raises(SasRayError, match="7 entries for 3 images"):
        sources.open_source(f"idx:{bad}")
    (bad / "t10k-labels-idx1-ubyte").write_bytes(b"\1\2\3\4garbage")
    with pytest.raises(SasRayError, match="cannot read IDX"):
        sources.open_source(f"idx:{bad}")
    with pytest.raises(SasRayError, match="no IDX image files"):
        sources.open_source(f"idx:{tmp_path}")
    with pytest.raises(SasRayError, match="does not exist"):
        sources.open_source(f"idx:{tmp_path / 'absent'}")


# --- torchvision ---------------------------------------------------------------------------


def test_torchvision_mnist_from_local_files(tmp_path: Path) -> None:
    x, y = _write_idx(tmp_path / "MNIST" / "raw", compress=False)
    src = sources.open_source(f"torchvision:MNIST:{tmp_path}")
    assert src.spec == "torchvision:MNIST" and len(src) == 8
    assert src.class_names[0] == "0 - zero"
    np.testing.assert_array_equal(np.stack([it.payload for it in src.items]), x)
    assert [it.label for it in src.items] == y.tolist()


def test_torchvision_missing_offline_or_unknown_fails_clearly(tmp_path: Path,
                                                              monkeypatch) -> None:
    import urllib.error

    import torchvision.datasets

    with pytest.raises(SasRayError, match=r"--data\.download true"):
        sources.open_source(f"torchvision:CIFAR10:{tmp_path}")

    def offline(self: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    data = DataConfig(download=True)
    with pytest.raises(SasRayError, match=r"downloading torchvision CIFAR10 .* failed .*name "
                                          r"resolution.*check the network"):
        sources.open_source(f"torchvision:CIFAR10:{tmp_path}", data)
    with pytest.raises(SasRayError, match="unknown torchvision data set 'ImageNet'"):
        sources.open_source("torchvision:ImageNet")


# --- shard schema --------------------------------------------------------------------------


def _artifact(uri: str, table: pa.Table) -> None:
    with storage.write_artifact(uri, shards.STAGE) as w:
        pq.write_table(table, storage.join(w.dir, "part-0.parquet"))
        w.meta = {"class_names": []}


def test_read_table_filters_by_split_ids_and_columns(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([0, 1, 2, 3], pa.int64()),
                      "image": pa.array([b"a", b"b", b"c", b"d"]),
                      "label": pa.array([0, None, 1, 1], pa.int64()),
                      "split": ["train", "train", "test", "train"]})
    _artifact(str(tmp_path / "ok"), table)
    assert shards.read_table(str(tmp_path / "ok")).num_rows == 4
    got = shards.read_table(str(tmp_path / "ok"), split="train", ids={1, 2, 3},
                            columns=["id", "label"])
    assert got.to_pylist() == [{"id": 1, "label": None}, {"id": 3, "label": 1}]
    with pytest.raises(SasRayError, match="unknown shard column"):
        shards.read_table(str(tmp_path / "ok"), columns=["pixels"])


@pytest.mark.parametrize(("change", "message"), [
    ({"image": None}, "no 'image' column"),
    ({"label": pa.array(["a", "b"])}, "column 'label' is string, expected int64"),
    ({"id": pa.array([0.0, 1.0])}, "column 'id' is double, expected int64"),
])
def test_wrong_schema_names_the_column(tmp_path: Path, change: dict, message: str) -> None:
    cols = {"id": pa.array([0, 1], pa.int64()), "image": pa.array([b"a", b"b"]),
            "label": pa.array([0, 1], pa.int64()), "split": pa.array(["train", "train"])}
    for name, value in change.items():
        if value is None:
            del cols[name]
        else:
            cols[name] = value
    _artifact(str(tmp_path / "bad"), pa.table(cols))
    with pytest.raises(SasRayError, match=message):
        shards.read_table(str(tmp_path / "bad"))


def test_plain_parquet_dir_is_not_a_shard_dataset(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1]}), tmp_path / "x.parquet")
    with pytest.raises(SasRayError, match="not a complete sas-ray artifact"):
        shards.read_table(str(tmp_path))


# --- ingest without Ray (the plain loop runs the same per-shard work) ----------------------


def test_ingest_loop_dir_with_corrupt_images(tmp_path: Path, image_folder,
                                             monkeypatch) -> None:
    written = image_folder(tmp_path / "src", {"train/cat": 3, "test/dog": 2})
    (tmp_path / "src" / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "src" / "test" / "dog" / "cut.png").write_bytes(written["test/dog/000.png"][:40])
    cfg = Config()
    cfg.data.shard_size = 2
    with pytest.raises(SasRayError) as err:  # every corrupt image is named, in 2 blocks
        ingest(str(tmp_path / "src"), str(tmp_path / "fail"), cfg, executor=LocalExecutor(cfg))
    message = str(err.value)
    assert message.startswith("2 corrupt images: test/dog/cut.png (") and "\n" not in message
    assert "train/cat/bad.png (not an image format PIL can read)" in message
    assert message.endswith("remove or replace them, or pass --data.on_corrupt skip to leave "
                            "them out")
    assert not storage.list_files(str(tmp_path / "fail"))  # nothing half-written
    monkeypatch.setattr(ingest_stage, "NAMED", 1)
    with pytest.raises(SasRayError, match=r"2 corrupt images: test/dog/cut\.png \([^)]*\), "
                                          r"and 1 more; remove"):
        ingest(str(tmp_path / "src"), str(tmp_path / "fail"), cfg, executor=LocalExecutor(cfg))
    cfg.data.on_corrupt = "skip"
    manifest = ingest(str(tmp_path / "src"), str(tmp_path / "out"), cfg,
                      executor=LocalExecutor(cfg))
    meta = manifest["meta"]
    assert meta["skipped_corrupt"] == {"count": 2,
                                       "examples": ["test/dog/cut.png", "train/cat/bad.png"]}
    assert meta["num_images"] == 5 and meta["num_shards"] == 3
    assert meta["splits"]["train"] == {"images": 3, "no_label": 0,
                                       "per_class": {"cat": 3, "dog": 0}}
    assert meta["image_bytes"] == sum(len(b) for b in written.values())
    table = shards.read_table(str(tmp_path / "out")).sort_by("id")
    # sorted paths: test/dog/000, 001, cut (id 2), train/cat/000..002, train/cat/bad (id 6)
    assert table["id"].to_pylist() == [0, 1, 3, 4, 5]
    assert table["image"].to_pylist() == [written[k] for k in sorted(written)]
    assert table["label"].to_pylist() == [1, 1, 0, 0, 0]


def test_shard_files_hold_their_counts_in_the_footer(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "src", {"train/cat": 3, "train/dog": 2, "test/cat": 2})
    cfg = Config()
    cfg.data.shard_size = 4
    manifest = ingest(str(tmp_path / "src"), str(tmp_path / "s"), cfg,
                      executor=LocalExecutor(cfg))
    files = sorted(f for f in manifest["files"] if f.endswith(".parquet"))
    footers = [pq.read_metadata(tmp_path / "s" / f) for f in files]
    # ids: test/cat 0-1, train/cat 2-4, train/dog 5-6
    assert [json.loads(f.metadata[shards.COUNTS_KEY.encode()]) for f in footers] == [
        {"test": {"0": 2}, "train": {"0": 2}}, {"train": {"0": 1, "1": 2}}]
    image = footers[0].row_group(0).column(1)
    assert image.path_in_schema == "image" and "RLE_DICTIONARY" not in image.encodings
    found = shards.file_counts(str(tmp_path / "s"), manifest["files"])
    assert found == {"test": {"0": 2}, "train": {"0": 3, "1": 2}}
    assert shards.count_mismatch(manifest["meta"], found) is None


def test_a_manifest_that_its_files_contradict_is_not_committed(tmp_path: Path,
                                                               image_folder) -> None:
    """A shard lost between its write and the commit (e.g. a stale-staging sweep by another
    writer) is caught by the footers check; the previous dataset stays."""
    image_folder(tmp_path / "src", {"cat": 3, "dog": 3})
    cfg = Config()
    cfg.data.shard_size = 2
    out = str(tmp_path / "out")
    before = ingest(str(tmp_path / "src"), out, cfg, executor=LocalExecutor(cfg))

    class LosesAShard(LocalExecutor):
        def map_blocks(self, fn, blocks):  # type: ignore[no-untyped-def]
            for i, row in enumerate(super().map_blocks(fn, blocks)):
                if i == 1:
                    Path(row["file"]).unlink()
                yield row

    with pytest.raises(SasRayError, match=r"do not match their metadata \(train: 6 in the "
                                          r"metadata, 4 in the files\); nothing was committed"):
        ingest(str(tmp_path / "src"), out, cfg, executor=LosesAShard(cfg), force=True)
    assert storage.read_manifest(out) == before
    left = {str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()}
    assert left == {*before["files"], "manifest.json"}  # the failed run's staging is gone


def test_info_reads_counts_from_the_footers(tmp_path: Path, image_folder, capsys) -> None:
    from sas_ray.cli import main

    image_folder(tmp_path / "src", {"train/cat": 2, "test/cat": 1, "train/dog": 1})
    (tmp_path / "src" / "test" / "dog").mkdir()
    out = tmp_path / "out"
    assert main(["ingest", str(tmp_path / "src"), str(out), "--run.executor", "local"]) == 0
    text = capsys.readouterr().out
    assert "empty class directories (not classes): 1 (test/dog)" in text
    assert "MISMATCH" not in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["meta"]["empty_classes"] == {"count": 1, "examples": ["test/dog"]}
    manifest["meta"]["splits"]["test"]["images"] = 10_000  # metadata that lies
    manifest["meta"]["splits"]["test"]["per_class"]["cat"] = 10_000
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["info", str(out)]) == 2
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "  total                          3           1" \
        in captured.out  # the table shows what the files hold
    assert captured.err.strip().endswith("(test: 10,000 in the metadata, 1 in the files); "
                                         "rebuild them with `sas-ray ingest --force`")


def test_info_counts_files_without_footer_counts(tmp_path: Path) -> None:
    """Shards written before the footers held counts: their columns are read instead."""
    table = pa.table({"id": pa.array([0, 1, 2], pa.int64()), "image": [b"a", b"b", b"c"],
                      "label": pa.array([0, None, 0], pa.int64()),
                      "split": ["train", "train", "test"]})
    _artifact(str(tmp_path / "old"), table)
    manifest = storage.read_manifest(str(tmp_path / "old"))
    assert shards.file_counts(str(tmp_path / "old"), manifest["files"]) == {
        "train": {"0": 1, "null": 1}, "test": {"0": 1}}


def test_ingest_refuses_an_artifact_of_another_stage(tmp_path: Path) -> None:
    out = str(tmp_path / "emb")
    with storage.write_artifact(out, "embeddings") as w:
        storage.write_bytes_atomic(storage.join(w.dir, "part-0.parquet"), b"x")
    cfg = Config()
    with pytest.raises(SasRayError) as err:
        ingest("synthetic", out, cfg, executor=LocalExecutor(cfg))
    assert str(err.value) == (f"{out} holds a 'embeddings' artifact; ingest would replace it "
                              "with shards: pass another output path, or --force to replace it")
    assert storage.read_manifest(out)["stage"] == "embeddings"
    manifest = ingest("synthetic", out, cfg, executor=LocalExecutor(cfg), force=True)
    assert manifest["stage"] == "shards"


def test_shuffled_tar_gives_the_directory_ids(tmp_path: Path, image_folder) -> None:
    """Members in reverse path order: shards hold archive-order runs of ids, the same rows."""
    written = image_folder(tmp_path / "src", {"train/cat": 3, "test/dog": 2})
    archive = tmp_path / "rev.tar"
    archive.write_bytes(_tar_bytes(sorted(written.items(), reverse=True)))
    cfg = Config()
    cfg.data.shard_size = 2
    a = ingest(str(archive), str(tmp_path / "t"), cfg, executor=LocalExecutor(cfg))
    b = ingest(str(tmp_path / "src"), str(tmp_path / "d"), cfg, executor=LocalExecutor(cfg))
    assert a["meta"]["splits"] == b["meta"]["splits"] and a["meta"]["num_shards"] == 3
    ta, tb = (shards.read_table(str(tmp_path / d)).sort_by("id") for d in ("t", "d"))
    assert ta.equals(tb)
    assert ta["id"].to_pylist() == list(range(5))


_PEAK_SCRIPT = """
import json, sys
from sas_ray.config import Config
from sas_ray.executors.local import LocalExecutor
from sas_ray.stages.ingest import ingest

def high_water_kib():  # VmHWM: unlike ru_maxrss, not inherited from pytest over fork/exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

cfg = Config()
cfg.data.shard_size = 8
ingest(sys.argv[1], sys.argv[3], cfg, executor=LocalExecutor(cfg))  # imports, allocator warm
before = high_water_kib()
ingest(sys.argv[2], sys.argv[4], cfg, executor=LocalExecutor(cfg))
print(json.dumps({"before_kib": before, "after_kib": high_water_kib()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_tar_ingest_memory_is_bounded_below_the_archive_size(tmp_path: Path) -> None:
    """A 160 MiB tar of 1 MiB PNGs ingests with a peak RSS under 48 MiB above the
    interpreter's (blocks of 8 images): the archive is never held whole."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    png = images.encode_png(rng.integers(0, 256, (591, 591, 3), dtype=np.uint8))
    assert 1_000_000 < len(png) < 1_100_000
    small, big = tmp_path / "small.tar", tmp_path / "big.tar"
    small.write_bytes(_tar_bytes([(f"c{i % 2}/{i}.png", png) for i in range(16)]))
    with tarfile.open(big, "w") as tar:
        for i in range(160):
            info = tarfile.TarInfo(f"c{i % 4}/{i:03d}.png")
            info.size = len(png)
            tar.addfile(info, io.BytesIO(png))
    size_mib = big.stat().st_size / 2**20
    assert size_mib > 160
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(small), str(big),
                             str(tmp_path / "o1"), str(tmp_path / "o2")],
                            capture_output=True, text=True, timeout=600, check=True)
    peak = json.loads(result.stdout.strip().splitlines()[-1])
    grown_mib = (peak["after_kib"] - peak["before_kib"]) / 1024
    assert grown_mib < 48, f"peak RSS grew {grown_mib:.0f} MiB ingesting a {size_mib:.0f} MiB tar"
    assert shards.read_table(str(tmp_path / "o2"), columns=["id"]).num_rows == 160


def test_ingest_rejects_bad_settings(tmp_path: Path) -> None:
    cfg = Config()
    cfg.data.on_corrupt = "ignore"
    with pytest.raises(SasRayError, match="on_corrupt"):
        ingest("synthetic", str(tmp_path / "x"), cfg, executor=LocalExecutor(cfg))
    cfg = Config()
    cfg.data.shard_size = 0
    with pytest.raises(SasRayError, match="shard_size"):
        ingest("synthetic", str(tmp_path / "x"), cfg, executor=LocalExecutor(cfg))
    assert not (tmp_path / "x").exists()
