"""The shard format: Parquet files of encoded images, committed as a ``shards`` artifact.

Columns (:data:`SCHEMA`)::

    id     int64    stable and unique across the dataset (the image's position in its source)
    image  binary   PNG or JPEG bytes, exactly as in the source (raw pixels become PNG)
    label  int64    index into ``class_names``; null when the source has no label
    split  string   "train" | "test" | "unlabeled" | ...

Rows are in id order within a shard. The manifest's ``meta`` (written by
:func:`sas_ray.stages.ingest.ingest`)::

    source           the source string given to ingest
    class_names      label i is class_names[i]
    num_images       images in all splits
    splits           {split: {"images": n, "no_label": n, "per_class": {class name: n}}}
    image_bytes      total size of the image column
    image_sizes      {"HxW": n}, most common first
    num_shards       Parquet files
    skipped_corrupt  {"count": n, "examples": [names]}  (data.on_corrupt=skip)
    ignored_files    {"count": n, "examples": [names]}  (non-image files in the source)

Readers read only the files the manifest lists, and check the schema first. Nothing here
imports Ray (the Ray Data reader is :func:`sas_ray.executors.ray.data.read_dataset`).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sas_ray.config import Config
from sas_ray.core.data.sources import SPLIT_NAMES
from sas_ray.errors import SasRayError
from sas_ray.io import storage

STAGE = "shards"
SCHEMA = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("label", pa.int64()),
                    ("split", pa.string())])
_ACCEPTED = {  # types a reader accepts per column (large variants appear after some writers)
    "id": (pa.int64(),),
    "image": (pa.binary(), pa.large_binary()),
    "label": (pa.int64(),),
    "split": (pa.string(), pa.large_string()),
}


def validate_schema(schema: pa.Schema, where: str) -> None:
    """Raise one clear error naming the first missing or mistyped column."""
    for name, types in _ACCEPTED.items():
        if name not in schema.names:
            raise SasRayError(f"{where} has no '{name}' column (columns: "
                              f"{', '.join(schema.names)}); rebuild it with `sas-ray ingest`")
        found = schema.field(name).type
        if found not in types:
            raise SasRayError(f"{where}: column '{name}' is {found}, expected {types[0]}; "
                              "rebuild it with `sas-ray ingest`")


def write_shard(table: pa.Table, uri: str) -> None:
    """Write one shard (a table with exactly :data:`SCHEMA`) to a local path or ``s3://`` URI."""
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        if not storage.is_s3(uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table.cast(SCHEMA), path, filesystem=fs, compression="zstd",
                       row_group_size=1024)


def _id_array(ids: Iterable[int]) -> np.ndarray:
    return np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)


def _filter(split: str | None, ids: Iterable[int] | None) -> pads.Expression | None:
    expr = None
    if split is not None:
        expr = pads.field("split") == split
    if ids is not None:
        in_ids = pads.field("id").isin(pa.array(_id_array(ids)))
        expr = in_ids if expr is None else expr & in_ids
    return expr


def check_columns(columns: list[str] | None) -> None:
    """Raise when ``columns`` names a column the shard schema does not have."""
    unknown = [c for c in columns or [] if c not in SCHEMA.names]
    if unknown:
        raise SasRayError(f"unknown shard column(s) {', '.join(unknown)}; columns are "
                          f"{', '.join(SCHEMA.names)}")


def open_dataset(uri: str) -> tuple[pads.Dataset, list[str], dict[str, Any]]:
    """A pyarrow dataset over the Parquet files the manifest lists (schema checked), those
    files' in-filesystem paths, and the manifest."""
    manifest = storage.require_manifest(uri, STAGE)
    fs, base = storage.filesystem(uri)
    paths = [f"{base}/{f}" for f in manifest["files"] if f.endswith(".parquet")]
    with storage.s3_errors(uri):
        dataset = pads.dataset(paths, schema=None if paths else SCHEMA, format="parquet",
                               filesystem=fs)
    validate_schema(dataset.schema, f"shards at {uri}")
    return dataset, paths, manifest


def read_table(uri: str, split: str | None = None, columns: list[str] | None = None,
               ids: Iterable[int] | None = None) -> pa.Table:
    """The shards at ``uri`` as one Arrow table (no Ray), optionally one split / an id set."""
    check_columns(columns)
    dataset, _, _ = open_dataset(uri)
    with storage.s3_errors(uri):
        try:
            return dataset.to_table(columns=columns, filter=_filter(split, ids))
        except pa.ArrowInvalid as err:
            raise SasRayError(f"shards at {uri} are inconsistent ({err}); rebuild them with "
                              "`sas-ray ingest`") from err


def read_shard_files(batch: pa.Table, filesystem: pafs.FileSystem, columns: list[str] | None,
                     split: str | None, ids: np.ndarray | None) -> pa.Table:
    """Read the shard files named in ``batch["path"]``, filtered (a Ray Data map function)."""
    expr = _filter(split, ids)
    tables = [pads.dataset(path, format="parquet", filesystem=filesystem)
              .to_table(columns=columns, filter=expr) for path in batch["path"].to_pylist()]
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class ShardBatch:
    """One planned batch: the ``rows`` rows of one split in one shard file whose ids lie in
    ``first_id..last_id`` (consecutive ids of that split in that file)."""

    path: str  # the shard file, in its filesystem
    first_id: int
    last_id: int
    rows: int


def plan_batches(uri: str, split: str, batch_size: int
                 ) -> tuple[pafs.FileSystem, list[ShardBatch]]:
    """Cut the ``split`` rows of every shard file at ``uri`` into batches of ``batch_size``
    consecutive ids (the last of each file smaller); returns the shards' filesystem and the
    batches in file order. Reads only the ``id`` and ``split`` columns.

    Every executor maps over exactly these batches, so a batch function sees the same rows
    together whichever executor (and however many workers) runs it: float results that depend
    on the batch composition (a convolution's algorithm can) are then identical too.
    """
    dataset, paths, _ = open_dataset(uri)
    batches = []
    with storage.s3_errors(uri):
        for path in paths:
            ids = np.sort(pads.dataset(path, format="parquet", filesystem=dataset.filesystem)
                          .to_table(columns=["id"], filter=_filter(split, None))["id"]
                          .to_numpy())
            for start in range(0, ids.size, batch_size):
                chunk = ids[start:start + batch_size]
                batches.append(ShardBatch(path, int(chunk[0]), int(chunk[-1]), int(chunk.size)))
    return dataset.filesystem, batches


def read_batch(batch: ShardBatch, filesystem: pafs.FileSystem, split: str,
               columns: list[str] | None) -> pa.Table:
    """The rows of a planned batch (``columns`` of them), in file order; row groups whose id
    statistics exclude the batch are skipped."""
    ids = pads.field("id")
    expr = (pads.field("split") == split) & (ids >= batch.first_id) & (ids <= batch.last_id)
    table = pads.dataset(batch.path, format="parquet", filesystem=filesystem).to_table(
        columns=columns, filter=expr)
    if table.num_rows != batch.rows:
        raise SasRayError(f"shard {batch.path} changed while being read ({table.num_rows} "
                          f"rows of ids {batch.first_id}..{batch.last_id}, planned "
                          f"{batch.rows}); rerun the stage")
    return table


def info(uri: str) -> dict[str, Any]:
    """The manifest of the shards at ``uri`` (after checking they are readable)."""
    return open_dataset(uri)[2]


def format_info(uri: str, manifest: dict[str, Any]) -> str:
    """A readable multi-line summary of a shard dataset's manifest."""
    meta = manifest["meta"]
    names = meta["class_names"]
    lines = [f"shards      {uri}",
             f"source      {meta['source']}",
             f"fingerprint {manifest['fingerprint']}  (created {manifest['created']})",
             f"images      {meta['num_images']:,} in {meta['num_shards']} shard(s), "
             f"{meta['image_bytes'] / 2**20:,.1f} MiB of image bytes",
             f"image sizes {', '.join(f'{k} ({v:,})' for k, v in meta['image_sizes'].items())}",
             f"classes     {len(names)}"]
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    splits = dict(sorted(meta["splits"].items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    header = f"  {'class':<20}" + "".join(f"{s:>12}" for s in splits)
    lines += ["", header]
    for name in names:
        lines.append(f"  {name:<20}" + "".join(f"{splits[s]['per_class'].get(name, 0):>12,}"
                                                for s in splits))
    if any(splits[s]["no_label"] for s in splits):
        lines.append(f"  {'(no label)':<20}" + "".join(f"{splits[s]['no_label']:>12,}"
                                                      for s in splits))
    lines.append(f"  {'total':<20}" + "".join(f"{splits[s]['images']:>12,}" for s in splits))
    for key, what in (("skipped_corrupt", "corrupt images skipped"),
                      ("ignored_files", "non-image files ignored")):
        if meta[key]["count"]:
            more = ", ..." if meta[key]["count"] > 5 else ""
            lines.append(f"{what}: {meta[key]['count']} "
                         f"({', '.join(meta[key]['examples'][:5])}{more})")
    return "\n".join(lines)


def cli_info(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray info SHARDS``."""
    print(format_info(args.shards, info(args.shards)))
