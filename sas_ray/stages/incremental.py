"""Per-class state of SAS rankings, and incremental ranking of a grown pool.

A SAS ranking artifact holds, besides ``ranking.parquet``, one Arrow IPC file per latent
class, ``state/<class>.arrow`` (columns ``id`` int64, ``score`` float64: the class's rows
best first and their greedy gains; readable by ``pyarrow.ipc`` or ``pandas.read_feather``),
and its meta has ``classes``: ``{class: {"fingerprint", "file", "rows", "how"}}`` with the
fingerprint of :func:`~sas_ray.core.selection.incremental.class_fingerprint` and ``how`` one
of ``rank``, ``reuse``, ``extend``.

``sas-ray select --incremental PREVIOUS`` (``select.incremental``) ranks the grown pool by
:func:`~sas_ray.core.selection.incremental.incremental_sas`; a reused class's file is the
previous artifact's file, copied byte for byte. Classes come from the partition given; rows
it lacks (e.g. with the previous partition) go to the nearest class mean. ``select.incremental
previous`` takes the stale ranking at the output itself (how the pipeline reuses its
rankings when ``data.source`` gains shards; with a fixed ``proxy.checkpoint``, since a new
proxy changes every embedding and so every class). The ranking's config records
``incremental`` (the greedy mode) and its inputs the previous ranking's fingerprint; it is
up to date while its config, embeddings and partition are (whatever it was extended from).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from sas_ray.config import Config, result_settings
from sas_ray.core.selection.incremental import (
    HOW,
    ClassState,
    class_fingerprint,
    incremental_sas,
    nearest_classes,
    within_class_orders,
)
from sas_ray.core.selection.ranking import Ranking, class_jobs
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor
from sas_ray.io import storage
from sas_ray.io.artifacts import (
    EMBEDDINGS,
    PARTITION,
    RANKING,
    Embeddings,
    commit_table,
    ranking_table,
    read_embeddings,
    read_parquet,
)
from sas_ray.stages.latent import class_sizes

log = logging.getLogger(__name__)

INCREMENTAL = frozenset({"sas"})  # strategies whose rankings keep per-class state
CLASS_DIR = "state"  # sorts after ranking.parquet: artifact_files(uri)[0] stays the table
PREVIOUS = "previous"  # select.incremental: the ranking at the output itself


def class_settings(cfg: Config, strategy: str) -> dict[str, Any]:
    """The settings a class's SAS order depends on (they go into its fingerprint)."""
    return {"strategy": strategy, "similarity_floor": cfg.select.similarity_floor}


def class_file(ids: np.ndarray, scores: np.ndarray) -> bytes:
    """Arrow IPC bytes of one class's ``id`` (int64) and ``score`` (float64), best first."""
    table = pa.table({"id": pa.array(ids, pa.int64()), "score": pa.array(scores, pa.float64())})
    sink = io.BytesIO()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def class_files(ranking: Ranking, ids: np.ndarray, fingerprints: Mapping[int, str],
                how: Mapping[int, str], reused: Mapping[int, bytes] | None = None
                ) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """Per-class files of ``ranking`` (rows ``ids``) and the meta ``classes`` entry; classes
    in ``reused`` take those bytes as they are."""
    files, meta = {}, {}
    for job, res in zip(jobs := class_jobs(ranking.latent, 0),
                        within_class_orders(ranking, jobs), strict=True):
        rel = f"{CLASS_DIR}/{job.label}.arrow"
        files[rel] = (reused or {}).get(job.label) or class_file(ids[job.rows[res.order]],
                                                                 res.scores)
        meta[str(job.label)] = {"fingerprint": fingerprints[job.label], "file": rel,
                                "rows": int(job.rows.size), "how": how[job.label]}
    return files, meta


def applies(strategy: str, nested: bool) -> bool:
    """Whether rankings of ``strategy`` keep per-class state (nested SAS only)."""
    return strategy in INCREMENTAL and nested


def class_state(cfg: Config, strategy: str, nested: bool, ranking: Ranking, emb: Embeddings
                ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(class files, ``{"classes": ...}`` meta) of a ranking computed from scratch; nothing
    for strategies without per-class state or a rank-limited ranking (past its limit the
    scores are not greedy gains; with ``select.incremental`` set the rank stage ranks whole)."""
    if not applies(strategy, nested) or ranking.limit < 1.0:
        return {}, {}
    settings = class_settings(cfg, strategy)
    fps = {job.label: class_fingerprint(settings, job.label, emb.ids[job.rows], emb.x[job.rows])
           for job in class_jobs(ranking.latent, 0)}
    files, meta = class_files(ranking, emb.ids, fps, dict.fromkeys(fps, "rank"))
    return files, {"classes": meta}


def read_class_states(uri: str, manifest: dict[str, Any]
                      ) -> tuple[dict[int, ClassState], dict[int, bytes]]:
    """The class states of the ranking at ``uri`` and each class file's bytes."""
    classes = manifest["meta"].get("classes")
    if not classes:
        raise SasRayError(f"the ranking at {uri} has no per-class state (made before "
                          "incremental selection existed, or not by sas); rank it once "
                          "without --incremental")
    by_suffix = {f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1]: f
                 for f in storage.artifact_files(uri, manifest) if f.endswith(".arrow")}
    states, raw = {}, {}
    for label, entry in classes.items():
        data = storage.read_bytes(by_suffix[entry["file"]])
        table = ipc.open_file(pa.BufferReader(data)).read_all()
        states[int(label)] = ClassState(ids=table["id"].to_numpy(),
                                        scores=table["score"].to_numpy(),
                                        fingerprint=entry["fingerprint"])
        raw[int(label)] = data
    return states, raw


def grown_classes(emb: Embeddings, partition_uri: str) -> tuple[np.ndarray, int, str]:
    """Latent class of every embedding row: the partition's where it has the row, else the
    nearest class mean of the rows it has; how many rows were assigned so; the partition's
    fingerprint."""
    table, manifest = read_parquet(partition_uri, PARTITION, ["id", "latent_class"])
    part_ids = table["id"].to_numpy()
    extra = np.setdiff1d(part_ids, emb.ids)
    if extra.size:
        raise SasRayError(f"the partition at {partition_uri} has {extra.size} ids that the "
                          "embeddings lack; pass the partition of these embeddings or of "
                          "an earlier, smaller pool")
    latent = np.full(emb.ids.size, -1, dtype=np.int64)
    known = np.searchsorted(emb.ids, part_ids)
    latent[known] = table["latent_class"].to_numpy()
    missing = np.flatnonzero(latent < 0)
    if missing.size:
        latent[missing] = nearest_classes(emb.x[missing], emb.x[known], latent[known])
    return latent, int(missing.size), manifest["fingerprint"]


def previous_ranking(uri: str, strategy: str, *, lenient: bool) -> dict[str, Any] | None:
    """The manifest of the ranking to extend, or None (``lenient``: nothing usable there)."""
    manifest = storage.read_manifest(uri)
    usable = (manifest is not None and manifest.get("stage") == RANKING
              and manifest["meta"].get("strategy") == strategy
              and bool(manifest["meta"].get("classes")))
    if usable or lenient:
        return manifest if usable else None
    if manifest is None or manifest.get("stage") != RANKING:
        raise SasRayError(f"--incremental {uri} is not a ranking artifact; pass the output of "
                          "an earlier `sas-ray select` (e.g. OUT/sas)")
    if manifest["meta"].get("strategy") != strategy:
        raise SasRayError(f"--incremental {uri} is a '{manifest['meta'].get('strategy')}' "
                          f"ranking; it can extend only a '{strategy}' one")
    read_class_states(uri, manifest)  # raises: no per-class state
    return None


def is_current(out: str, config: dict[str, Any], inputs: dict[str, str]) -> bool:
    """Whether the artifact at ``out`` is an incremental ranking of these settings and
    inputs (whichever ranking it extended)."""
    manifest = storage.read_manifest(out)
    if manifest is None or manifest.get("stage") != RANKING:
        return False
    theirs = {k: v for k, v in manifest.get("inputs", {}).items() if k != PREVIOUS}
    return (storage.fingerprint(manifest.get("config")) == storage.fingerprint(config)
            and theirs == inputs)


def rank_incremental(cfg: Config, embeddings_uri: str, partition_uri: str, strategy: str,
                     out: str, executor: Executor | None = None) -> dict[str, Any] | None:
    """Rank the grown pool from the ranking ``select.incremental`` names (see the module
    docstring) and commit it at ``out``; returns its manifest, or None when that is
    ``previous`` and nothing usable is there (the caller ranks from scratch)."""
    previous = cfg.select.incremental
    uri = out if previous == PREVIOUS else previous
    greedy = cfg.select.incremental_greedy
    config = {"strategy": strategy, "fraction": None, "select": result_settings(cfg.select),
              "incremental": greedy}
    emb = read_embeddings(embeddings_uri)
    latent, assigned, part_fp = grown_classes(emb, partition_uri)
    inputs = {EMBEDDINGS: emb.fingerprint, PARTITION: part_fp}
    if is_current(out, config, inputs):
        log.info("incremental ranking at %s is up to date; reusing it", out)
        return storage.require_manifest(out, RANKING)
    manifest = previous_ranking(uri, strategy, lenient=previous == PREVIOUS)
    if manifest is None:
        return None
    if cfg.select.rank_limit < 1.0:
        raise SasRayError("incremental selection extends complete greedy orders; set "
                          "--select.rank_limit 1")
    start = time.perf_counter()
    states, raw = read_class_states(uri, manifest)
    result = incremental_sas(emb.x, emb.ids, latent, states, class_settings(cfg, strategy),
                             cfg.run.seed, cfg.select, greedy=greedy,
                             map_classes=(executor or get_executor(cfg)).class_map(
                                 cfg.select.num_workers))
    reused = {k: raw[k] for k, h in result.how.items() if h == "reuse"}
    files, classes = class_files(result.ranking, emb.ids, result.fingerprints, result.how,
                                 reused)
    counts = {h: sum(1 for v in result.how.values() if v == h) for h in HOW}
    old = np.concatenate([s.ids for s in states.values()])
    ranking = result.ranking
    meta = {"strategy": strategy, "nested": True, "balanced": True, "seed": cfg.run.seed,
            "fraction": None, "num_rows": int(emb.ids.size), "sizes": class_sizes(latent),
            "shards": emb.shards, "classes": classes,
            "incremental": {"previous": uri, "greedy": greedy, "classes": counts,
                            "assigned_rows": assigned,
                            "new_rows": int(np.setdiff1d(emb.ids, old).size)},
            "seconds": round(time.perf_counter() - start, 2)}
    log.info("incremental %s: %s classes (%d rows assigned to the nearest class)", strategy,
             ", ".join(f"{v} {k}" for k, v in counts.items()), assigned)
    return commit_table(out, RANKING, ranking_table(emb.ids, ranking), meta, config,
                        {**inputs, PREVIOUS: manifest["fingerprint"]}, cfg.run.seed, files)
