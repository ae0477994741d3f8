"""Ingest: an image source -> a ``shards`` artifact, on either executor.

The driver lists the source (:func:`sas_ray.core.data.sources.open_source`) and cuts it into
blocks of ``data.shard_size`` items in id order; a block carries each item's payload (encoded
bytes, a file path, or raw pixels). The executor maps :func:`write_block` over the blocks
(:meth:`~sas_ray.executors.base.Executor.map_blocks`: Ray Data tasks, or a loop in this
process): each call reads/decodes/encodes its images, writes one Parquet shard into the
artifact's staging directory and returns a one-row stats table. The driver sums the stats
into the manifest, so both executors write the same shards and manifest. For a directory the
reads happen in the workers; a tar stream is decompressed once on the driver (a gzip stream
is sequential), and the workers do the decoding and writing.

Corrupt images: ``data.on_corrupt=fail`` stops with the file's name; ``skip`` drops them and
lists them in the manifest (their ids stay unused, so other ids do not move).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from sas_ray.config import Config, DataConfig
from sas_ray.core.data.images import CorruptImageError, check_image, encode_png
from sas_ray.core.data.sources import Source, open_source
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor
from sas_ray.io import storage
from sas_ray.io.shards import SCHEMA, STAGE, format_info, write_shard

log = logging.getLogger(__name__)

ON_CORRUPT = ("fail", "skip")
EXAMPLES = 100  # names of skipped/ignored files kept in the manifest
STATS_SCHEMA = pa.schema([("file", pa.string()), ("rows", pa.int64()),
                          ("image_bytes", pa.int64()), ("counts", pa.string()),
                          ("sizes", pa.string()), ("corrupt", pa.string()),
                          ("error", pa.string())])


def ingest_config(data: DataConfig, source: str) -> dict[str, Any]:
    """The settings that determine the shards' content (they go into the fingerprint)."""
    keys = ["shard_size", "on_corrupt"]
    if source == "synthetic":
        keys += ["synthetic_classes", "synthetic_train_per_class", "synthetic_test_per_class",
                 "synthetic_size"]
    return {"source": source, **{k: getattr(data, k) for k in keys}}


def source_fingerprint(spec: str) -> str:
    """A fingerprint of a source's files (paths, sizes, modification times), so that a changed
    source invalidates the shards. Built-in and torchvision sources are named by ``spec``."""
    if spec == "synthetic" or spec.startswith("torchvision:"):
        return storage.fingerprint(spec)
    uri = spec.removeprefix("idx:")
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        info = fs.get_file_info(path)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True)) \
            if info.type == pafs.FileType.Directory else [info]
    return storage.fingerprint(sorted((i.path, i.size, str(i.mtime)) for i in infos))


def plan_blocks(src: Source, shard_size: int) -> Iterator[pa.Table]:
    """The source as Arrow tables of ``shard_size`` rows: id, name, split, label, payload."""
    payload_type = pa.string() if src.kind == "file" else pa.binary()
    for start in range(0, len(src), shard_size):
        items = src.items[start:start + shard_size]
        payloads = [np.ascontiguousarray(it.payload).tobytes() if src.kind == "pixels"
                    else it.payload for it in items]
        yield pa.table({
            "id": pa.array(range(start, start + len(items)), pa.int64()),
            "name": pa.array([it.name for it in items], pa.string()),
            "split": pa.array([it.split for it in items], pa.string()),
            "label": pa.array([it.label for it in items], pa.int64()),
            "payload": pa.array(payloads, payload_type),
        })


def _image_bytes(kind: str, payload: Any,
                 pixel_shape: tuple[int, ...] | None) -> tuple[bytes, tuple[int, int]]:
    """Stored bytes and ``(height, width)`` of one payload; raises CorruptImageError."""
    if kind == "pixels":
        return encode_png(np.frombuffer(payload, np.uint8).reshape(pixel_shape)), pixel_shape[:2]
    if kind == "file":
        try:
            payload = storage.read_bytes(payload)
        except OSError as err:
            raise SasRayError(f"cannot read {payload} ({err}); check that the file is "
                              "readable") from err
    return check_image(payload)


def _shard(block: pa.Table, out_dir: str, kind: str, pixel_shape: tuple[int, ...] | None,
           on_corrupt: str) -> dict[str, Any]:
    """Read, check and write one block as a shard; return its stats (see write_block)."""
    images: list[bytes | None] = []
    corrupt: list[str] = []
    sizes: collections.Counter[str] = collections.Counter()
    for name, payload in zip(block["name"].to_pylist(), block["payload"].to_pylist(),
                             strict=True):
        try:
            data, (h, w) = _image_bytes(kind, payload, pixel_shape)
        except CorruptImageError as err:
            if on_corrupt == "fail":
                raise SasRayError(f"corrupt image {name} ({err}); remove or replace it, or pass "
                                  "--data.on_corrupt skip") from err
            corrupt.append(name)
            images.append(None)
            continue
        images.append(data)
        sizes[f"{h}x{w}"] += 1
    shard = pa.table({"id": block["id"], "image": pa.array(images, pa.binary()),
                      "label": block["label"], "split": block["split"]}, schema=SCHEMA)
    shard = shard.filter(pa.array([im is not None for im in images]))
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for split, label in zip(shard["split"].to_pylist(), shard["label"].to_pylist(), strict=True):
        counts[split]["null" if label is None else str(label)] += 1
    path = None
    if shard.num_rows:
        path = storage.join(out_dir, f"part-{block['id'][0].as_py():010d}.parquet")
        write_shard(shard, path)
    return {"file": path, "rows": shard.num_rows,
            "image_bytes": sum(len(im) for im in images if im is not None),
            "counts": json.dumps(counts), "sizes": json.dumps(sizes),
            "corrupt": json.dumps(corrupt), "error": None}


def write_block(block: pa.Table, out_dir: str, kind: str, pixel_shape: tuple[int, ...] | None,
                on_corrupt: str) -> pa.Table:
    """Turn one planned block into one shard under ``out_dir``; return its stats as one row.

    Stats: ``file`` (None when every image was skipped), ``rows``, ``image_bytes``, JSON
    ``counts`` ({split: {label or "null": n}}), ``sizes`` ({"HxW": n}) and ``corrupt``
    ([name]), and ``error``: the user-facing message when the block failed (a corrupt image
    under ``on_corrupt=fail``, an unreadable file), returned rather than raised so that it
    reaches the driver intact through Ray.
    """
    try:
        row = _shard(block, out_dir, kind, pixel_shape, on_corrupt)
    except SasRayError as err:
        row = {"file": None, "rows": 0, "image_bytes": 0, "counts": "{}", "sizes": "{}",
               "corrupt": "[]", "error": str(err)}
    return pa.Table.from_pylist([row], schema=STATS_SCHEMA)


def run_blocks(blocks: Iterator[pa.Table], out_dir: str, src: Source, on_corrupt: str,
               executor: Executor) -> list[dict[str, Any]]:
    """Apply :func:`write_block` to every block on ``executor``; stop at the first block that
    reports an error and raise it."""
    fn = functools.partial(write_block, out_dir=out_dir, kind=src.kind,
                           pixel_shape=src.pixel_shape, on_corrupt=on_corrupt)
    stats = []
    for row in executor.map_blocks(fn, blocks):
        if row["error"] is not None:
            raise SasRayError(row["error"])
        stats.append(row)
    return stats


def summarise(src: Source, stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Manifest ``meta`` of a shard dataset from its source and per-shard stats."""
    splits: dict[str, dict[str, Any]] = {}
    for split in dict.fromkeys(it.split for it in src.items):
        splits[split] = {"images": 0, "no_label": 0,
                         "per_class": dict.fromkeys(src.class_names, 0)}
    sizes: collections.Counter[str] = collections.Counter()
    corrupt: list[str] = []
    for row in stats:
        for split, per_label in json.loads(row["counts"]).items():
            for label, n in per_label.items():
                entry = splits[split]
                entry["images"] += n
                if label == "null":
                    entry["no_label"] += n
                else:
                    entry["per_class"][src.class_names[int(label)]] += n
        sizes.update(json.loads(row["sizes"]))
        corrupt += json.loads(row["corrupt"])
    return {
        "source": src.spec,
        "class_names": src.class_names,
        "num_images": sum(s["images"] for s in splits.values()),
        "splits": splits,
        "image_bytes": sum(row["image_bytes"] for row in stats),
        "image_sizes": dict(sizes.most_common()),
        "num_shards": sum(row["file"] is not None for row in stats),
        "skipped_corrupt": {"count": len(corrupt), "examples": sorted(corrupt)[:EXAMPLES]},
        "ignored_files": {"count": len(src.ignored), "examples": src.ignored[:EXAMPLES]},
    }


def ingest(source: str, out: str, cfg: Config, *, executor: Executor | None = None,
           force: bool = False) -> dict[str, Any]:
    """Convert ``source`` into a committed shard dataset at ``out``; return its manifest.

    Nothing is rewritten when ``out`` already holds shards of the same source files and
    settings (unless ``force``). The per-block work runs on ``executor`` (default: the one
    ``run.executor`` names).
    """
    data = cfg.data
    if data.on_corrupt not in ON_CORRUPT:
        raise SasRayError(f"--data.on_corrupt {data.on_corrupt!r} is not one of "
                          f"{', '.join(ON_CORRUPT)}; pass fail or skip")
    if data.shard_size < 1:
        raise SasRayError(f"--data.shard_size {data.shard_size} must be at least 1; pass e.g. "
                          "4096")
    config = ingest_config(data, source)
    seed = cfg.run.seed if source == "synthetic" else None
    started = time.perf_counter()
    src = open_source(source, data, cfg.run.seed, storage.FILES)
    inputs = {"source": source_fingerprint(source)}
    if not force and storage.is_fresh(out, storage.stage_fingerprint(STAGE, config, inputs, seed)):
        log.info("%s already holds shards of %s with these settings; nothing to do", out, source)
        return storage.require_manifest(out, STAGE)
    with storage.write_artifact(out, STAGE, config=config, inputs=inputs, seed=seed) as w:
        stats = run_blocks(plan_blocks(src, data.shard_size), w.dir, src, data.on_corrupt,
                           executor or get_executor(cfg))
        w.meta = summarise(src, stats)
    meta = w.meta
    seconds = time.perf_counter() - started
    counts = ", ".join(f"{k} {v['images']:,}" for k, v in meta["splits"].items())
    log.info("ingested %s images (%s) from %s into %s in %.1f s (%.0f images/s)",
             f"{meta['num_images']:,}", counts, source, out, seconds,
             meta["num_images"] / max(seconds, 1e-9))
    if meta["skipped_corrupt"]["count"]:
        log.warning("skipped %d corrupt image(s): %s", meta["skipped_corrupt"]["count"],
                    ", ".join(meta["skipped_corrupt"]["examples"][:10]))
    if meta["ignored_files"]["count"]:
        log.info("ignored %d non-image file(s): %s", meta["ignored_files"]["count"],
                 ", ".join(meta["ignored_files"]["examples"][:10]))
    return storage.require_manifest(out, STAGE)


def cli_ingest(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray ingest SOURCE OUT``: ingest, then print the dataset summary."""
    manifest = ingest(args.source, args.out, cfg, force=args.force)
    print(format_info(args.out, manifest))
