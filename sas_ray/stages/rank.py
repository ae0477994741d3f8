"""Ray layer of selection: latent classes -> ``partition``, strategies -> ``ranking``.

Artifacts (Parquet + manifest, readable by pandas/pyarrow without sas-ray):

* ``partition``: columns ``id`` int64, ``latent_class`` int64; meta ``method``, ``k`` (number
  of classes), ``sizes`` (class -> rows), ``purity``/``nmi`` against the labels (null
  without labels), ``merged`` (small classes folded into others).
* ``ranking``: columns ``id``, ``rank`` (0 = best), ``score``, ``latent_class``, sorted by
  rank; the subset for a fraction f is the rows with ``rank < floor(f n + 1/2)``; meta
  ``strategy``, ``nested``, ``balanced``, ``seed``, ``fraction`` (non-nested only),
  ``num_rows``, ``sizes``.

The per-class work of a strategy runs as Ray tasks (``select.num_workers`` at a time) over
groups of latent classes; the embeddings are put in the object store once and every task
reads its classes' rows from it. Per-class results depend only on the class and the seed,
so the merged ranking is identical to the single-process one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sas_ray.config import Config
from sas_ray.core.selection.latent import latent_classes
from sas_ray.core.selection.ranking import (
    Ranking,
    check_fraction,
)
from sas_ray.core.selection.registry import get_selector, is_nested
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor
from sas_ray.io import storage

log = logging.getLogger(__name__)

EMBEDDINGS, PARTITION, RANKING = "embeddings", "partition", "ranking"


# ---------------------------------------------------------------- reading artifacts
@dataclass(frozen=True)
class Embeddings:
    """An embeddings artifact in memory, rows sorted by id."""

    ids: np.ndarray  # (n,) int64
    x: np.ndarray  # (n, d) float32 or float16
    labels: np.ndarray  # (n,) int64, -1 where unknown
    fingerprint: str


def _read_parquet(uri: str, stage: str, columns: list[str]) -> tuple[pa.Table, dict[str, Any]]:
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


def _check_unique(ids: np.ndarray, uri: str) -> None:
    if ids.size > 1 and (np.diff(ids) == 0).any():
        raise SasRayError(f"{uri} holds {int((np.diff(ids) == 0).sum())} duplicated ids; "
                          "rerun the stage that writes it")


def read_embeddings(uri: str) -> Embeddings:
    """Ids, embedding matrix and labels of an ``embeddings`` artifact (local or s3://)."""
    table, manifest = _read_parquet(uri, EMBEDDINGS, ["id", "label", "emb"])
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
    return Embeddings(ids=ids, x=x, labels=labels, fingerprint=manifest["fingerprint"])


def read_partition(uri: str, ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Latent class of each of ``ids`` (sorted) from a ``partition`` artifact, and its
    fingerprint; the partition must cover exactly these ids and have no empty class."""
    table, manifest = _read_parquet(uri, PARTITION, ["id", "latent_class"])
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


def _write_table(table: pa.Table, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    with storage.s3_errors(uri):
        if not storage.is_s3(uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=fs, compression="zstd")


def _commit(out: str, stage: str, table: pa.Table, meta: dict[str, Any], config: Any,
            inputs: dict[str, str], seed: int) -> dict[str, Any]:
    """Write ``table`` as the single file of a new artifact; nothing is left on failure."""
    existed = storage.exists(out)
    try:
        with storage.write_artifact(out, stage, config=config, inputs=inputs, seed=seed) as w:
            _write_table(table, storage.join(w.dir, f"{stage}.parquet"))
            w.meta.update(meta)
    except BaseException:
        if not existed:
            storage.delete(out)
        raise
    return storage.require_manifest(out, stage)


def _sizes(latent: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(latent, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


# ---------------------------------------------------------------- latent stage
def partition(cfg: Config, embeddings_uri: str, out: str) -> dict[str, Any]:
    """Latent classes of the embeddings at ``embeddings_uri`` (``cfg.latent``), committed as
    a ``partition`` artifact at ``out``; returns its manifest (reused when up to date)."""
    emb = read_embeddings(embeddings_uri)
    config = dataclasses.asdict(cfg.latent)
    inputs = {EMBEDDINGS: emb.fingerprint}
    seed = cfg.run.seed
    if storage.is_fresh(out, storage.stage_fingerprint(PARTITION, config, inputs, seed)):
        log.info("partition at %s is up to date; reusing it", out)
        return storage.require_manifest(out, PARTITION)
    start = time.perf_counter()
    part = latent_classes(emb.x, emb.labels, cfg.latent, seed)
    agree = part.agreement or {}
    meta = {"method": part.method, "k": part.num_classes, "sizes": _sizes(part.classes),
            "purity": agree.get("purity"), "nmi": agree.get("nmi"),
            "labeled_rows": agree.get("rows", 0),
            "merged": {str(k): v for k, v in part.merged.items()},
            "num_rows": int(emb.ids.size), "seconds": round(time.perf_counter() - start, 2)}
    table = pa.table({"id": pa.array(emb.ids, pa.int64()),
                      "latent_class": pa.array(part.classes, pa.int64())})
    return _commit(out, PARTITION, table, meta, config, inputs, seed)


# ---------------------------------------------------------------- rank stage
def _ranking_config(cfg: Config, strategy: str, fraction: float | None) -> dict[str, Any]:
    select = dataclasses.asdict(cfg.select)
    for key in ("strategies", "num_workers"):  # do not change the result
        select.pop(key)
    return {"strategy": strategy, "fraction": fraction, "select": select}


def rank(cfg: Config, embeddings_uri: str, partition_uri: str, strategy: str, out: str,
         fraction: float | None = None, executor: Executor | None = None) -> dict[str, Any]:
    """Rank the embeddings with ``strategy`` within the latent classes of the partition and
    commit a ``ranking`` artifact at ``out``; returns its manifest (reused when up to date).

    ``fraction`` is needed by strategies that are not nested (``sas`` with
    ``select.double_greedy``) and ignored by the others.
    """
    selector = get_selector(strategy)
    nested = is_nested(strategy, cfg.select)
    if fraction is not None:
        check_fraction(fraction)
    if not nested and fraction is None:
        raise SasRayError(f"strategy '{strategy}' with these settings ranks for one fraction "
                          "only; pass --fraction")
    fraction = None if nested else fraction
    emb = read_embeddings(embeddings_uri)
    latent, part_fp = read_partition(partition_uri, emb.ids)
    config = _ranking_config(cfg, strategy, fraction)
    inputs = {EMBEDDINGS: emb.fingerprint, PARTITION: part_fp}
    seed = cfg.run.seed
    if storage.is_fresh(out, storage.stage_fingerprint(RANKING, config, inputs, seed)):
        log.info("ranking at %s is up to date; reusing it", out)
        return storage.require_manifest(out, RANKING)
    start = time.perf_counter()
    ranking = selector(emb.x, latent, fraction, seed, cfg.select, emb.labels,
                       map_classes=(executor or get_executor(cfg)).class_map(
                           cfg.select.num_workers))
    table = pa.table({
        "id": pa.array(emb.ids[ranking.order], pa.int64()),
        "rank": pa.array(np.arange(ranking.order.size), pa.int64()),
        "score": pa.array(ranking.scores, pa.float64()),
        "latent_class": pa.array(latent[ranking.order], pa.int64()),
    })
    meta = {"strategy": strategy, "nested": ranking.nested, "balanced": ranking.balanced,
            "seed": seed, "fraction": ranking.fraction, "num_rows": int(emb.ids.size),
            "sizes": _sizes(latent), "seconds": round(time.perf_counter() - start, 2)}
    return _commit(out, RANKING, table, meta, config, inputs, seed)


# ---------------------------------------------------------------- subsets
@dataclass(frozen=True)
class StoredRanking:
    """A ranking artifact: ids and latent classes in rank order, and its cut rule."""

    uri: str
    ids: np.ndarray
    ranking: Ranking  # order = 0..n-1 (rows are already in rank order)
    strategy: str

    def subset(self, fraction: float | None) -> np.ndarray:
        return self.ids[self.ranking.cut(fraction)]


def load_ranking(uri: str) -> StoredRanking:
    """Read a ``ranking`` artifact (local or s3://)."""
    table, manifest = _read_parquet(uri, RANKING, ["id", "rank", "score", "latent_class"])
    table = table.sort_by("rank")
    meta = manifest["meta"]
    n = table.num_rows
    ranking = Ranking(order=np.arange(n), scores=table["score"].to_numpy(),
                      latent=table["latent_class"].to_numpy(), nested=bool(meta["nested"]),
                      balanced=bool(meta["balanced"]), fraction=meta.get("fraction"))
    return StoredRanking(uri=uri, ids=table["id"].to_numpy(), ranking=ranking,
                         strategy=str(meta["strategy"]))


def subset_ids(ranking_uri: str, fraction: float | None = None) -> np.ndarray:
    """Ids of the subset at ``fraction`` (the first ``floor(f n + 1/2)`` ranks: a
    per-class-proportional prefix for balanced strategies). Non-nested rankings accept only
    their own fraction, which is also the default."""
    return load_ranking(ranking_uri).subset(fraction)


# ---------------------------------------------------------------- CLI
def cli_latent(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray latent --embeddings DIR --out DIR``."""
    meta = partition(cfg, args.embeddings, args.out)["meta"]
    agree = ("" if meta["purity"] is None else
             f", purity {meta['purity']:.3f}, NMI {meta['nmi']:.3f} on "
             f"{meta['labeled_rows']:,} labeled rows")
    merged = f", {len(meta['merged'])} small class(es) merged" if meta["merged"] else ""
    print(f"partition: {meta['num_rows']:,} rows in {meta['k']} latent classes by "
          f"{meta['method']}{agree}{merged} -> {args.out}")


def cli_select(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray select --embeddings DIR --partition DIR --strategy NAME --out DIR``."""
    meta = rank(cfg, args.embeddings, args.partition, args.strategy, args.out,
                args.fraction)["meta"]
    kind = "nested" if meta["nested"] else f"for fraction {meta['fraction']}"
    print(f"ranking: {meta['strategy']} ({kind}) of {meta['num_rows']:,} rows in "
          f"{len(meta['sizes'])} latent classes in {meta['seconds']} s -> {args.out}")


def cli_subset_info(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray subset-info RANKING [--fraction F] [--compare OTHER_RANKING]``."""
    ranking = load_ranking(args.subset)
    fraction = args.fraction if args.fraction is not None else ranking.ranking.fraction
    if fraction is None:
        raise SasRayError(f"{args.subset} is a nested ranking; pass --fraction to pick a "
                          "subset (e.g. --fraction 0.4)")
    chosen = ranking.ranking.cut(fraction)
    n = ranking.ids.size
    print(f"{args.subset}: strategy {ranking.strategy}, "
          f"{'nested' if ranking.ranking.nested else 'not nested'}, {n:,} rows")
    print(f"subset at fraction {fraction}: {chosen.size:,} rows")
    values, total = np.unique(ranking.ranking.latent, return_counts=True)
    kept = np.unique(ranking.ranking.latent[chosen], return_counts=True)
    kept_by = dict(zip(kept[0].tolist(), kept[1].tolist(), strict=True))
    print(f"{'class':>8} {'kept':>8} {'of':>8} {'share':>7}")
    for v, t in zip(values.tolist(), total.tolist(), strict=True):
        k = kept_by.get(v, 0)
        print(f"{v:>8} {k:>8} {t:>8} {k / t:>7.3f}")
    if args.compare:
        other = load_ranking(args.compare)
        mine, theirs = set(ranking.ids[chosen].tolist()), set(other.subset(fraction).tolist())
        both = len(mine & theirs)
        print(f"overlap with {args.compare} ({other.strategy}) at fraction {fraction}: "
              f"{both:,} rows, Jaccard {both / len(mine | theirs):.3f}")
