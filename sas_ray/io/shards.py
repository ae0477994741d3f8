"""The shard format: Parquet files of encoded images, committed as a ``shards`` artifact.

Columns (:data:`SCHEMA`)::

    id     int64    stable and unique across the dataset (the image's position in its source)
    image  binary   PNG or JPEG bytes, exactly as in the source (raw pixels become PNG)
    label  int64    index into ``class_names``; null when the source has no label
    split  string   "train" | "test" | "unlabeled" | ...

Rows are in id order within a shard (a shard of a tar holds the ids of consecutive
archive members, which are consecutive ids when the archive is in path order). Image bytes
are never re-encoded (Parquet's zstd on top is lossless, see :func:`write_shard`). Each
file's footer records its rows per split and label (:data:`COUNTS_KEY`). The manifest's
``meta`` (written by :func:`sas_ray.stages.ingest.ingest`)::

    source           the source string given to ingest
    class_names      label i is class_names[i]
    num_images       images in all splits
    splits           {split: {"images": n, "no_label": n, "per_class": {class name: n}}}
    image_bytes      total size of the image column
    image_sizes      {"HxW": n}, most common first
    num_shards       Parquet files
    skipped_corrupt  {"count": n, "examples": [names]}  (data.on_corrupt=skip)
    ignored_files    {"count": n, "examples": [names]}  (non-image files in the source)
    empty_classes    {"count": n, "examples": [dirs]}   (class directories with no image)
    kinds            {kind: [ids]}  (only from a source that knows its examples' kinds: the
                     synthetic pool's clean, duplicate, blank, noise, off-class)

Before ingest commits, the footers of the files it lists must hold exactly the rows that
``splits`` counts (:func:`verify_commit`); ``sas-ray info`` shows the footers' counts and
flags any difference. Readers read only the files the manifest lists, and check the schema
first. Nothing here
imports Ray (the Ray Data reader is :func:`sas_ray.executors.ray.data.read_dataset`).
"""

from __future__ import annotations

import argparse
import collections
import json
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
COUNTS_KEY = "sas_ray.counts"  # footer key of a shard's JSON {split: {label or "null": rows}}
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


def split_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """Rows of a shard table per split and label: ``{split: {label or "null": n}}``."""
    counts: dict[str, dict[str, int]] = {}
    pairs = zip(table["split"].to_pylist(), table["label"].to_pylist(), strict=True)
    for (split, label), n in collections.Counter(pairs).items():
        counts.setdefault(split, {})["null" if label is None else str(label)] = n
    return counts


def write_shard(table: pa.Table, uri: str) -> dict[str, dict[str, int]]:
    """Write one shard (a table with exactly :data:`SCHEMA`) to a local path or ``s3://`` URI;
    return its :func:`split_counts`, which are also stored in the file's footer
    (:data:`COUNTS_KEY`). Every column is zstd-compressed by Parquet (lossless: the image
    bytes read back exactly as given) and only label and split are dictionary-encoded.
    Measured on 8,192 CIFAR-10 JPEGs (32 px, ~920 bytes each, ~600 of them tables that
    every file repeats): zstd stores the image column in 2.5 MB instead of 7.6 MB, writes
    in 6 ms and reads faster than uncompressed; on incompressible 256 px JPEGs it saves
    nothing and costs ~1 ms per MiB written."""
    counts = split_counts(table)
    table = table.cast(SCHEMA).replace_schema_metadata({COUNTS_KEY: json.dumps(counts)})
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        if not storage.is_s3(uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs, row_group_size=1024, compression="zstd",
                       use_dictionary=["label", "split"])
    return counts


def file_counts(uri: str, files: list[str]) -> dict[str, dict[str, int]]:
    """Rows per split and label of the Parquet ``files`` (relative to the artifact ``uri``),
    from their footers: the row count, and the per-split counts written there by
    :func:`write_shard` (whose sum must equal it); a file written without them (by an older
    version) has its split and label columns read instead."""
    fs, base = storage.filesystem(uri)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with storage.s3_errors(uri):
        for name in files:
            if not name.endswith(".parquet"):
                continue
            path = f"{base}/{name}"
            with fs.open_input_file(path) as f:
                footer = pq.read_metadata(f)
            stored = (footer.metadata or {}).get(COUNTS_KEY.encode())
            if stored is None:
                counts = split_counts(pq.read_table(path, columns=["split", "label"],
                                                    filesystem=fs))
            else:
                counts = json.loads(stored)
                if sum(n for c in counts.values() for n in c.values()) != footer.num_rows:
                    raise SasRayError(f"shard {uri}/{name} holds {footer.num_rows} rows but "
                                      "its footer counts differ; rebuild it with "
                                      "`sas-ray ingest --force`")
            for split, per_label in counts.items():
                total[split].update(per_label)
    return {split: dict(c) for split, c in total.items()}


def meta_counts(meta: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The manifest meta's ``splits`` in the shape of :func:`file_counts` (zeros left out)."""
    index = {name: str(i) for i, name in enumerate(meta["class_names"])}
    out: dict[str, dict[str, int]] = {}
    for split, entry in meta["splits"].items():
        per = {index[name]: n for name, n in entry["per_class"].items() if n}
        if entry["no_label"]:
            per["null"] = entry["no_label"]
        if per:
            out[split] = per
    return out


def count_mismatch(meta: dict[str, Any], found: dict[str, dict[str, int]]) -> str | None:
    """None when the files hold exactly the rows the meta counts; else what differs, in a
    few words per split (``"test: 10,000 in the metadata, 0 in the files"``)."""
    claimed = meta_counts(meta)
    if claimed == found:
        return None
    parts = []
    for split in sorted(set(claimed) | set(found)):
        a, b = claimed.get(split, {}), found.get(split, {})
        if a != b:
            parts.append(f"{split}: {sum(a.values()):,} in the metadata, {sum(b.values()):,} in "
                         f"the files" + ("" if sum(a.values()) != sum(b.values())
                                         else " (per-class counts differ)"))
    return "; ".join(parts)


def verify_commit(uri: str, files: list[str], meta: dict[str, Any]) -> None:
    """Refuse to commit a shards manifest whose meta counts differ from the footers of the
    files it lists (a :func:`sas_ray.io.storage.write_artifact` ``verify`` hook)."""
    mismatch = count_mismatch(meta, file_counts(uri, files))
    if mismatch:
        raise SasRayError(f"the shards staged for {uri} do not match their metadata "
                          f"({mismatch}); nothing was committed - rerun the ingest")


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


def info(uri: str) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The manifest of the shards at ``uri`` (after checking they are readable) and the rows
    its files hold (:func:`file_counts`, from their footers)."""
    manifest = open_dataset(uri)[2]
    return manifest, file_counts(uri, manifest["files"])


def format_info(uri: str, manifest: dict[str, Any],
                found: dict[str, dict[str, int]]) -> str:
    """A readable multi-line summary of a shard dataset: its manifest, with the counts per
    split and class that its files hold (``found``), and a last line naming any difference
    from the counts in the manifest's metadata."""
    meta = manifest["meta"]
    names = meta["class_names"]
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    splits = sorted(set(meta["splits"]) | set(found), key=lambda s: (order.get(s, 99), s))
    counts = {s: found.get(s, {}) for s in splits}
    total = sum(n for c in counts.values() for n in c.values())
    lines = [f"shards      {uri}",
             f"source      {meta['source']}",
             f"fingerprint {manifest['fingerprint']}  (created {manifest['created']})",
             f"images      {total:,} in {meta['num_shards']} shard(s), "
             f"{meta['image_bytes'] / 2**20:,.1f} MiB of image bytes",
             f"image sizes {', '.join(f'{k} ({v:,})' for k, v in meta['image_sizes'].items())}",
             f"classes     {len(names)}"]
    lines += ["", f"  {'class':<20}" + "".join(f"{s:>12}" for s in splits)]
    for i, name in enumerate(names):
        lines.append(f"  {name:<20}" + "".join(f"{counts[s].get(str(i), 0):>12,}"
                                                for s in splits))
    if any(counts[s].get("null") for s in splits):
        lines.append(f"  {'(no label)':<20}" + "".join(f"{counts[s].get('null', 0):>12,}"
                                                      for s in splits))
    lines.append(f"  {'total':<20}" + "".join(f"{sum(counts[s].values()):>12,}"
                                              for s in splits))
    for key, what in (("skipped_corrupt", "corrupt images skipped"),
                      ("ignored_files", "non-image files ignored"),
                      ("empty_classes", "empty class directories (not classes)")):
        entry = meta.get(key, {"count": 0})
        if entry["count"]:
            more = ", ..." if entry["count"] > 5 else ""
            lines.append(f"{what}: {entry['count']} ({', '.join(entry['examples'][:5])}{more})")
    mismatch = count_mismatch(meta, found)
    if mismatch:
        lines.append(f"MISMATCH: the files do not hold the rows the metadata counts "
                     f"({mismatch}); the table shows the files")
    return "\n".join(lines)


def cli_info(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray info SHARDS``: the summary; exit 2 when the files and metadata disagree."""
    manifest, found = info(args.shards)
    print(format_info(args.shards, manifest, found))
    mismatch = count_mismatch(manifest["meta"], found)
    if mismatch:
        raise SasRayError(f"the shards at {args.shards} do not hold the rows their manifest "
                          f"counts ({mismatch}); rebuild them with `sas-ray ingest --force`")
