"""Ingest: an image source -> a ``shards`` artifact, on either executor.

The driver lists the source (:func:`sas_ray.core.data.sources.open_source`) and cuts its
stream (:meth:`~sas_ray.core.data.sources.Source.stream`) into blocks of ``data.shard_size``
items as it arrives; a block carries each item's id, name, split, label and payload (encoded
bytes, a file path, or raw pixels). The executor maps :func:`write_block` over the blocks as
they are planned (:meth:`~sas_ray.executors.base.Executor.map_blocks`: Ray tasks with a
bounded number in flight, or a loop in this process): each call reads and checks its images
(:func:`~sas_ray.core.data.images.check_image`: header plus a cheap decode; PNG/JPEG bytes
stored as given), writes one Parquet shard into the artifact's staging directory and returns
a one-row stats table. The driver sums the stats into the manifest, so both executors write
the same shards and manifest. A tar is streamed member by member on the driver (a gzip
stream is sequential), so its memory is bounded by a few blocks, not the archive; for a
directory the reads happen in the workers. Before the commit, the footers of the staged
files must hold exactly the rows the manifest counts (:func:`sas_ray.io.shards.verify_commit`).

Corrupt images: ``data.on_corrupt=fail`` checks every image and then stops, naming the
corrupt ones (up to :data:`NAMED`, with the reasons); ``skip`` drops them and lists them in
the manifest (their ids stay unused, so other ids do not move). Class directories without an
image are warned about and counted in the manifest. Ingest refuses to write over an
artifact of another stage unless ``force``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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
from sas_ray.io.shards import SCHEMA, STAGE, format_info, info, verify_commit, write_shard

log = logging.getLogger(__name__)

ON_CORRUPT = ("fail", "skip")
EXAMPLES = 100  # names of skipped/ignored files kept in the manifest
NAMED = 10  # corrupt images named in a failing ingest's message
STATS_SCHEMA = pa.schema([("file", pa.string()), ("rows", pa.int64()),
                          ("image_bytes", pa.int64()), ("counts", pa.string()),
                          ("sizes", pa.string()), ("corrupt", pa.string()),
                          ("error", pa.string())])


def ingest_config(data: DataConfig, source: str) -> dict[str, Any]:
    """The settings that determine the shards' content (they go into the fingerprint)."""
    keys = ["shard_size", "on_corrupt"]
    if source == "synthetic":
        keys += [f.name for f in dataclasses.fields(data) if f.name.startswith("synthetic_")]
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
    """The source's stream as Arrow tables of ``shard_size`` rows (the last smaller): id,
    name, split, label, payload; each block is built as soon as its items have arrived."""
    payload_type = pa.string() if src.kind == "file" else pa.binary()

    def table(block: list[tuple[int, Any]]) -> pa.Table:
        items = [src.items[i] for i, _ in block]
        payloads = [np.ascontiguousarray(p).tobytes() if src.kind == "pixels" else p
                    for _, p in block]
        return pa.table({
            "id": pa.array([i for i, _ in block], pa.int64()),
            "name": pa.array([it.name for it in items], pa.string()),
            "split": pa.array([it.split for it in items], pa.string()),
            "label": pa.array([it.label for it in items], pa.int64()),
            "payload": pa.array(payloads, payload_type),
        })

    block: list[tuple[int, Any]] = []
    for entry in src.stream():
        block.append(entry)
        if len(block) == shard_size:
            yield table(block)
            block = []
    if block:
        yield table(block)


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
    corrupt: list[tuple[str, str]] = []
    sizes: collections.Counter[str] = collections.Counter()
    for name, payload in zip(block["name"].to_pylist(), block["payload"].to_pylist(),
                             strict=True):
        try:
            data, (h, w) = _image_bytes(kind, payload, pixel_shape)
        except CorruptImageError as err:
            corrupt.append((name, str(err)))
            images.append(None)
            continue
        images.append(data)
        sizes[f"{h}x{w}"] += 1
    shard = pa.table({"id": block["id"], "image": pa.array(images, pa.binary()),
                      "label": block["label"], "split": block["split"]}, schema=SCHEMA)
    shard = shard.filter(pa.array([im is not None for im in images]))
    path, counts = None, {}
    if shard.num_rows and not (corrupt and on_corrupt == "fail"):  # a failing run writes less
        path = storage.join(out_dir, f"part-{block['id'][0].as_py():010d}.parquet")
        counts = write_shard(shard, path)
    return {"file": path, "rows": shard.num_rows,
            "image_bytes": sum(len(im) for im in images if im is not None),
            "counts": json.dumps(counts), "sizes": json.dumps(sizes),
            "corrupt": json.dumps(corrupt), "error": None}


def write_block(block: pa.Table, out_dir: str, kind: str, pixel_shape: tuple[int, ...] | None,
                on_corrupt: str) -> pa.Table:
    """Turn one planned block into one shard under ``out_dir``; return its stats as one row.

    Stats: ``file`` (None when every image was skipped, or when the block has a corrupt image
    under ``on_corrupt=fail``), ``rows``, ``image_bytes``, JSON ``counts`` ({split: {label
    or "null": n}} of the written file), ``sizes`` ({"HxW": n}) and ``corrupt`` ([[name,
    reason]]), and ``error``: the user-facing message when the block failed (an unreadable
    file), returned rather than raised so that it reaches the driver intact through Ray.
    """
    try:
        row = _shard(block, out_dir, kind, pixel_shape, on_corrupt)
    except SasRayError as err:
        row = {"file": None, "rows": 0, "image_bytes": 0, "counts": "{}", "sizes": "{}",
               "corrupt": "[]", "error": str(err)}
    return pa.Table.from_pylist([row], schema=STATS_SCHEMA)


def corrupt_message(corrupt: list[tuple[str, str]]) -> str:
    """One line naming the first :data:`NAMED` corrupt images (sorted) with their reasons."""
    corrupt = sorted(corrupt)
    n = len(corrupt)
    named = ", ".join(f"{name} ({reason})" for name, reason in corrupt[:NAMED])
    more = f", and {n - NAMED} more" if n > NAMED else ""
    them = "them" if n > 1 else "it"
    return (f"{n} corrupt image{'s' if n > 1 else ''}: {named}{more}; remove or replace {them}, "
            f"or pass --data.on_corrupt skip to leave {them} out")


def run_blocks(blocks: Iterator[pa.Table], out_dir: str, src: Source, on_corrupt: str,
               executor: Executor) -> list[dict[str, Any]]:
    """Apply :func:`write_block` to every block on ``executor``; stop at the first block that
    reports an error and raise it; under ``on_corrupt=fail`` raise after the last block when
    any image was corrupt (:func:`corrupt_message`)."""
    fn = functools.partial(write_block, out_dir=out_dir, kind=src.kind,
                           pixel_shape=src.pixel_shape, on_corrupt=on_corrupt)
    stats = []
    for row in executor.map_blocks(fn, blocks):
        if row["error"] is not None:
            raise SasRayError(row["error"])
        stats.append(row)
    corrupt = [tuple(c) for row in stats for c in json.loads(row["corrupt"])]
    if corrupt and on_corrupt == "fail":
        raise SasRayError(corrupt_message(corrupt))
    return stats


def _examples(names: list[str]) -> dict[str, Any]:
    return {"count": len(names), "examples": sorted(names)[:EXAMPLES]}


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
        corrupt += [name for name, _ in json.loads(row["corrupt"])]
    return {
        "source": src.spec,
        "class_names": src.class_names,
        "num_images": sum(s["images"] for s in splits.values()),
        "splits": splits,
        "image_bytes": sum(row["image_bytes"] for row in stats),
        "image_sizes": dict(sizes.most_common()),
        "num_shards": sum(row["file"] is not None for row in stats),
        "skipped_corrupt": _examples(corrupt),
        "ignored_files": _examples(src.ignored),
        "empty_classes": _examples(src.empty_classes),
        **({"kinds": src.kinds} if src.kinds else {}),
    }


def refuse_other_stage(out: str, force: bool) -> None:
    """Raise when ``out`` holds a committed artifact of another stage (unless ``force``)."""
    existing = storage.read_manifest(out)
    stage = existing.get("stage") if existing is not None else STAGE
    if stage != STAGE and not force:
        raise SasRayError(f"{out} holds a '{stage}' artifact; ingest would replace it with "
                          "shards: pass another output path, or --force to replace it")


def ingest(source: str, out: str, cfg: Config, *, executor: Executor | None = None,
           force: bool = False) -> dict[str, Any]:
    """Convert ``source`` into a committed shard dataset at ``out``; return its manifest.

    Nothing is rewritten when ``out`` already holds shards of the same source files and
    settings (unless ``force``); an artifact of another stage at ``out`` is an error (unless
    ``force``). The per-block work runs on ``executor`` (default: the one ``run.executor``
    names).
    """
    data = cfg.data
    if data.on_corrupt not in ON_CORRUPT:
        raise SasRayError(f"--data.on_corrupt {data.on_corrupt!r} is not one of "
                          f"{', '.join(ON_CORRUPT)}; pass fail or skip")
    if data.shard_size < 1:
        raise SasRayError(f"--data.shard_size {data.shard_size} must be at least 1; pass e.g. "
                          "4096")
    refuse_other_stage(out, force)
    config = ingest_config(data, source)
    seed = cfg.run.seed if source == "synthetic" else None
    started = time.perf_counter()
    src = open_source(source, data, cfg.run.seed, storage.FILES)
    inputs = {"source": source_fingerprint(source)}
    if not force and storage.is_fresh(out, storage.stage_fingerprint(STAGE, config, inputs, seed)):
        log.info("%s already holds shards of %s with these settings; nothing to do", out, source)
        return storage.require_manifest(out, STAGE)
    with storage.write_artifact(out, STAGE, config=config, inputs=inputs, seed=seed,
                                verify=verify_commit) as w:
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
    if meta["empty_classes"]["count"]:
        log.warning("%d class director%s without an image (not classes): %s",
                    meta["empty_classes"]["count"],
                    "ies" if meta["empty_classes"]["count"] > 1 else "y",
                    ", ".join(meta["empty_classes"]["examples"][:10]))
    return storage.require_manifest(out, STAGE)


def cli_ingest(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray ingest SOURCE OUT``: ingest, then print the dataset summary."""
    ingest(args.source, args.out, cfg, force=args.force)
    print(format_info(args.out, *info(args.out)))
