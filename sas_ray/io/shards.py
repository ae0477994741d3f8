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

Readers read only the files the manifest lists, and check the schema first.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
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


def _check_columns(columns: list[str] | None) -> None:
    unknown = [c for c in columns or [] if c not in SCHEMA.names]
    if unknown:
        raise SasRayError(f"unknown shard column(s) {', '.join(unknown)}; columns are "
                          f"{', '.join(SCHEMA.names)}")


def _dataset(uri: str) -> tuple[pads.Dataset, list[str], dict[str, Any]]:
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
    _check_columns(columns)
    dataset, _, _ = _dataset(uri)
    with storage.s3_errors(uri):
        try:
            return dataset.to_table(columns=columns, filter=_filter(split, ids))
        except pa.ArrowInvalid as err:
            raise SasRayError(f"shards at {uri} are inconsistent ({err}); rebuild them with "
                              "`sas-ray ingest`") from err


def read_shard_files(batch: pa.Table, filesystem: pa.fs.FileSystem, columns: list[str] | None,
                     split: str | None, ids: np.ndarray | None) -> pa.Table:
    """Read the shard files named in ``batch["path"]``, filtered (a Ray Data map function)."""
    expr = _filter(split, ids)
    tables = [pads.dataset(path, format="parquet", filesystem=filesystem)
              .to_table(columns=columns, filter=expr) for path in batch["path"].to_pylist()]
    return pa.concat_tables(tables)


def read_dataset(uri: str, split: str | None = None, ids: Iterable[int] | None = None,
                 columns: list[str] | None = None) -> Any:
    """The shards at ``uri`` as a ``ray.data.Dataset`` (local or ``s3://``): one read task
    per shard file listed in the manifest, with the split / id-set filter evaluated by
    pyarrow inside the task (row groups whose statistics exclude them are skipped).

    (``ray.data.read_parquet`` would work too, but in Ray 2.60 each call pays a fixed cost of
    seconds (tens of seconds on a loaded machine) for listing and footer indexing, which the
    manifest makes unnecessary.)
    """
    import ray.data

    _check_columns(columns)
    dataset, paths, _ = _dataset(uri)
    ids_array = None if ids is None else _id_array(ids)
    if not paths:
        return ray.data.from_arrow(SCHEMA.empty_table().select(columns or SCHEMA.names))
    files = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    return files.map_batches(read_shard_files, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"filesystem": dataset.filesystem, "columns": columns,
                                        "split": split, "ids": ids_array})


def info(uri: str) -> dict[str, Any]:
    """The manifest of the shards at ``uri`` (after checking they are readable)."""
    return _dataset(uri)[2]


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
