"""Readers and a writer of the Parquet artifacts of the embed, latent and rank stages.

Every artifact is Parquet files plus a manifest (:mod:`sas_ray.io.storage`), readable by
pandas/pyarrow without sas-ray:

* ``embeddings``: ``id`` int64, ``label`` int64 (nullable), ``emb``
  fixed_size_list<float32|float16>[dim]; rows in no particular order, split over files.
* ``partition``: ``id`` int64, ``latent_class`` int64.
* ``ranking``: ``id``, ``rank`` (0 = best), ``score``, ``latent_class``, sorted by rank; the
  subset for a fraction f is the rows with ``rank < floor(f n + 1/2)``.

Readers read only the files the manifest lists, check the columns they need, and return rows
sorted by id (rankings: by rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sas_ray.core.selection.ranking import Ranking
from sas_ray.errors import SasRayError
from sas_ray.io import storage

EMBEDDINGS, PARTITION, RANKING = "embeddings", "partition", "ranking"


@dataclass(frozen=True)
class Embeddings:
    """An embeddings artifact in memory, rows sorted by id."""

    ids: np.ndarray  # (n,) int64
    x: np.ndarray  # (n, d) float32 or float16
    labels: np.ndarray  # (n,) int64, -1 where unknown
    fingerprint: str
    shards: str | None  # fingerprint of the shards they were computed from


def read_parquet(uri: str, stage: str, columns: list[str]) -> tuple[pa.Table, dict[str, Any]]:
    """``columns`` of every Parquet file of the ``stage`` artifact at ``uri``, sorted by id,
    and its manifest."""
    manifest = storage.require_manifest(uri, stage)
    files = [f for f in storage.artifact_files(uri, manifest) if f.endswith(".parquet")]
    if not files:
        raise SasRayError(f"the {stage} artifact at {uri} lists no Parquet files; rerun the "
                          "stage that writes it")
    tables = []
    for f in files:
        fs, path = storage.filesystem(f)
        with storage.s3_errors(f):
            schema = pq.read_schema(path, filesystem=fs)
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise SasRayError(f"{f} has no column(s) {', '.join(missing)} (columns: "
                                  f"{', '.join(schema.names)}); rerun the {stage} stage")
            tables.append(pq.read_table(path, columns=columns, filesystem=fs))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by("id"), manifest


def write_table(table: pa.Table, uri: str) -> None:
    """Write ``table`` as one zstd Parquet file at ``uri`` (local or ``s3://``)."""
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        if not storage.is_s3(uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs, compression="zstd")


def write_file(uri: str, data: bytes) -> None:
    """Write ``data`` as the file at ``uri`` (local or ``s3://``; inside a staging directory,
    so not atomic by itself)."""
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        if not storage.is_s3(uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)


def commit_table(out: str, stage: str, table: pa.Table, meta: dict[str, Any], config: Any,
                 inputs: dict[str, str], seed: int,
                 files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """Commit ``table`` as the Parquet file of a new ``stage`` artifact at ``out``, with the
    extra ``files`` (path relative to the artifact's version directory -> bytes, written as
    given; not Parquet); returns its manifest. On failure nothing is left at ``out`` (a
    previous artifact stays)."""
    existed = storage.exists(out)
    try:
        with storage.write_artifact(out, stage, config=config, inputs=inputs, seed=seed) as w:
            write_table(table, storage.join(w.dir, f"{stage}.parquet"))
            for rel, data in (files or {}).items():
                write_file(storage.join(w.dir, rel), data)
            w.meta.update(meta)
    except BaseException:
        if not existed:
            storage.delete(out)
        raise
    return storage.require_manifest(out, stage)


def ranking_table(ids: np.ndarray, ranking: Ranking) -> pa.Table:
    """The ``ranking`` artifact's table of ``ranking`` over rows ``ids``, sorted by rank."""
    return pa.table({
        "id": pa.array(ids[ranking.order], pa.int64()),
        "rank": pa.array(np.arange(ranking.order.size), pa.int64()),
        "score": pa.array(ranking.scores, pa.float64()),
        "latent_class": pa.array(ranking.latent[ranking.order], pa.int64()),
    })


def _check_unique(ids: np.ndarray, uri: str) -> None:
    if ids.size > 1 and (np.diff(ids) == 0).any():
        raise SasRayError(f"{uri} holds {int((np.diff(ids) == 0).sum())} duplicated ids; "
                          "rerun the stage that writes it")


def read_embeddings(uri: str) -> Embeddings:
    """Ids, embedding matrix and labels of an ``embeddings`` artifact (local or s3://)."""
    table, manifest = read_parquet(uri, EMBEDDINGS, ["id", "label", "emb"])
    ids = table["id"].to_numpy()
    _check_unique(ids, uri)
    emb = table["emb"].combine_chunks()
    if not pa.types.is_list(emb.type) and not pa.types.is_fixed_size_list(emb.type):
        raise SasRayError(f"{uri}: column 'emb' is {emb.type}, expected a list of floats; "
                          "rerun `sas-ray embed`")
    if emb.null_count:
        raise SasRayError(f"{uri}: {emb.null_count} rows have no embedding; rerun "
                          "`sas-ray embed`")
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != lengths[0]).any():
        raise SasRayError(f"{uri}: embeddings have different lengths "
                          f"({lengths.min()}..{lengths.max()}); rerun `sas-ray embed`")
    values = pc.list_flatten(emb).to_numpy(zero_copy_only=False)
    x = values.reshape(ids.size, int(lengths[0]) if lengths.size else 0)
    labels = table["label"].fill_null(-1).to_numpy().astype(np.int64)
    return Embeddings(ids=ids, x=x, labels=labels, fingerprint=manifest["fingerprint"],
                      shards=manifest["inputs"].get("shards"))


def read_partition(uri: str, ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Latent class of each of ``ids`` (sorted) from a ``partition`` artifact, and its
    fingerprint; the partition must cover exactly these ids and have no empty class."""
    table, manifest = read_parquet(uri, PARTITION, ["id", "latent_class"])
    part_ids = table["id"].to_numpy()
    _check_unique(part_ids, uri)
    if not np.array_equal(part_ids, ids):
        differ = np.setxor1d(part_ids, ids).size
        raise SasRayError(f"the partition at {uri} covers other examples than the embeddings "
                          f"({differ} ids differ); rerun `sas-ray latent` on these embeddings")
    latent = table["latent_class"].to_numpy().astype(np.int64)
    declared = {int(k) for k in manifest["meta"].get("sizes", {})}
    empty = sorted(declared - set(np.unique(latent).tolist()))
    if empty:
        raise SasRayError(f"the partition at {uri} declares {len(empty)} latent class(es) "
                          f"with no rows (e.g. class {empty[0]}); rerun `sas-ray latent`")
    return latent, manifest["fingerprint"]


@dataclass(frozen=True)
class StoredRanking:
    """A ranking artifact: ids and latent classes in rank order, and its cut rule."""

    uri: str
    ids: np.ndarray
    ranking: Ranking  # order = 0..n-1 (rows are already in rank order)
    strategy: str
    shards: str | None  # fingerprint of the shards its embeddings came from

    def check_shards(self, shards: str, data: str) -> None:
        """Refuse to cut this ranking for shards other than the ones it was computed on:
        ids alone cannot tell two data sets apart."""
        if self.shards is not None and self.shards != shards:
            raise SasRayError(f"the ranking at {self.uri} was computed on shards {self.shards}, "
                              f"but {data} holds shards {shards}; rank these shards "
                              "(sas-ray embed, latent, select) or train on the ranked ones")

    def subset(self, fraction: float | None) -> np.ndarray:
        return self.ids[self.ranking.cut(fraction)]


def load_ranking(uri: str) -> StoredRanking:
    """Read a ``ranking`` artifact (local or s3://)."""
    table, manifest = read_parquet(uri, RANKING, ["id", "rank", "score", "latent_class"])
    table = table.sort_by("rank")
    meta = manifest["meta"]
    n = table.num_rows
    ranking = Ranking(order=np.arange(n), scores=table["score"].to_numpy(),
                      latent=table["latent_class"].to_numpy(), nested=bool(meta["nested"]),
                      balanced=bool(meta["balanced"]), fraction=meta.get("fraction"),
                      limit=float(meta.get("rank_limit", 1.0)))
    return StoredRanking(uri=uri, ids=table["id"].to_numpy(), ranking=ranking,
                         strategy=str(meta["strategy"]), shards=meta.get("shards"))


def subset_ids(ranking_uri: str, fraction: float | None = None,
               data: str | None = None) -> np.ndarray:
    """Ids of the subset at ``fraction`` (the first ``floor(f n + 1/2)`` ranks: a
    per-class-proportional prefix for balanced strategies). Non-nested rankings accept only
    their own fraction, which is also the default. With ``data`` (a shards artifact), the
    ranking must have been computed on those shards."""
    ranking = load_ranking(ranking_uri)
    if data is not None:
        ranking.check_shards(storage.require_manifest(data, "shards")["fingerprint"], data)
    return ranking.subset(fraction)


def encoder_file(uri: str) -> str:
    """The encoder checkpoint that ``uri`` names, so every output that holds one is accepted
    where an encoder is expected: a checkpoint file itself; a training run directory (its
    ``encoder.pt``); a ``proxy`` artifact (its committed ``encoder.pt``); a sweep trial's run
    directory or its ``result`` artifact (the training that trial evaluated)."""
    from sas_ray.core.models.checkpoint import ENCODER_FILE

    if not storage.exists(uri):
        raise SasRayError(f"{uri} does not exist; pass a checkpoint file, a training run "
                          "directory, a proxy artifact or a sweep trial directory")
    if storage.is_file(uri) or storage.exists(storage.join(uri, ENCODER_FILE)):
        return uri
    manifest = storage.read_manifest(uri) or storage.read_manifest(storage.join(uri, "result"))
    stage = manifest and manifest.get("stage")
    if stage == "proxy":
        (path,) = [f for f in storage.artifact_files(uri, manifest)
                   if f.endswith("/" + ENCODER_FILE)]
        return path
    if stage == "trial" and manifest["meta"].get("run"):
        return encoder_file(manifest["meta"]["run"])
    found = f"a '{stage}' artifact" if stage else "no encoder.pt and no sas-ray manifest"
    raise SasRayError(f"{uri} holds {found}; pass a checkpoint file, a training run directory, "
                      "a proxy artifact or a sweep trial directory")

