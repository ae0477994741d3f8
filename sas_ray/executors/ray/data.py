"""Ray Data over shards: a reader for training, and an actor pool for batch functions.

:func:`read_dataset` is the shards as a ``ray.data.Dataset`` (Ray Train's input).
:func:`map_batches` runs a batch class (e.g. :class:`sas_ray.stages.embed.EmbedBatch`) over
the planned batches of :func:`sas_ray.io.shards.plan_batches`: one read task per batch (with
the batch's CPU work, e.g. :func:`sas_ray.stages.embed.decode_batch`) -> an actor pool (each
actor builds the class once, e.g. loads the proxy) -> Parquet files written straight into
the output directory; the driver never holds the data. Each batch reaches an actor whole, so
a function sees the same rows together as on the local executor (unless a batch exceeds Ray
Data's block size limit, 128 MiB by default, and is split). Actors that die are restarted
and their batches retried (at most :data:`MAX_ACTOR_RESTARTS` times, so a deterministic
crash fails the stage instead of looping).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from sas_ray.config import RunConfig
from sas_ray.errors import SasRayError
from sas_ray.executors.base import ROWS_PER_FILE, BatchClass, Prepare, Workers
from sas_ray.executors.ray.session import cluster_cpus, cluster_gpus, ensure_ray
from sas_ray.io import shards, storage

MAX_ACTOR_RESTARTS = 3


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

    shards.check_columns(columns)
    dataset, paths, _ = shards.open_dataset(uri)
    if not paths:
        return ray.data.from_arrow(shards.SCHEMA.empty_table().select(columns or
                                                                      shards.SCHEMA.names))
    ids_array = None if ids is None else np.asarray(
        ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
    files = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    return files.map_batches(shards.read_shard_files, batch_size=1, batch_format="pyarrow",
                             fn_kwargs={"filesystem": dataset.filesystem, "columns": columns,
                                        "split": split, "ids": ids_array})


def actor_resources(workers: Workers, cluster_cpus: float, node_cpus: float,
                    cluster_gpus: float) -> dict[str, Any]:
    """Pool size (``num_actors`` at first, growing to ``max_actors``), Ray resources and torch
    threads per actor.

    One CPU is left to the batch reader and the Parquet writer; the rest is split between
    the most actors the pool may have (at most one node's CPUs each, so every actor can be
    placed). On a cluster with GPUs every actor takes ``workers.gpus`` of one (a fraction:
    several actors share a GPU, one decoding and augmenting while another runs the model),
    and the pool starts at ``workers.count`` actors (at most what the GPUs hold) and grows to
    ``cluster_gpus / workers.gpus`` while batches wait for an actor (Ray Data's autoscaling
    actor pool); on a cluster without GPUs the pool is ``workers.count`` actors, none asking
    for a GPU (it would leave them pending forever).
    """
    num_actors = max_actors = max(1, workers.count)
    num_gpus = 0.0
    if cluster_gpus >= 1:
        num_gpus = workers.gpus
        max_actors = max(1, math.floor(cluster_gpus / num_gpus + 1e-9))
        num_actors = min(num_actors, max_actors)
    cpus = workers.cpus
    if cpus is None:
        cpus = min((cluster_cpus - 1) / max_actors, node_cpus)
        if cpus <= 0:
            raise SasRayError(f"the Ray cluster has {cluster_cpus:g} CPU(s); an actor pool "
                              "needs at least 2 (one reads shards): set --run.num_cpus 2 or "
                              "more")
    threads = workers.threads or max(1, math.floor(cpus))
    return {"num_actors": num_actors, "max_actors": max_actors, "num_cpus": cpus,
            "num_gpus": num_gpus, "threads": threads}


def node_cpus() -> float:
    """CPUs of the largest alive node."""
    import ray

    return max(float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])


def read_planned(items: pa.Table, filesystem: pafs.FileSystem, split: str,
                 columns: list[str]) -> pa.Table:
    """Ray Data map function: the rows of the planned batch in ``items`` (one row)."""
    (item,) = items.to_pylist()
    return shards.read_batch(shards.ShardBatch(**item), filesystem, split, columns)


def map_batches(run: RunConfig, fn: BatchClass, fn_kwargs: dict[str, Any], data: str,
                split: str, columns: list[str], batch_size: int, out_dir: str,
                workers: Workers, prepare: Prepare | None = None) -> dict[str, Any]:
    """:meth:`sas_ray.executors.base.Executor.map_batches` on a Ray actor pool; ``prepare``
    runs in the CPU read tasks (Ray Data streams them ahead of the actors, so on a GPU
    cluster the decoding runs on every node's CPUs while the actors run the model)."""
    ray = ensure_ray(run)
    filesystem, batches = shards.plan_batches(data, split, batch_size)
    res = actor_resources(dataclasses.replace(workers, count=min(workers.count, len(batches))),
                          cluster_cpus(), node_cpus(), cluster_gpus())
    device = "cuda" if res["num_gpus"] else "cpu"
    ds = ray.data.from_items([dataclasses.asdict(b) for b in batches],
                             override_num_blocks=len(batches))
    ds = ds.map_batches(read_planned, batch_size=1, batch_format="pyarrow",
                        fn_kwargs={"filesystem": filesystem, "split": split, "columns": columns})
    if prepare is not None:
        ds = ds.map_batches(prepare, batch_size=None, batch_format="pyarrow")
    with warnings.catch_warnings():  # Ray 2.60 has no named max_restarts parameter
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        ds = ds.map_batches(
            fn, batch_format="pyarrow", batch_size=None,  # one planned batch per call
            compute=ray.data.ActorPoolStrategy(min_size=res["num_actors"],
                                               max_size=res["max_actors"]),
            num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
            max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=MAX_ACTOR_RESTARTS,
            fn_constructor_kwargs={**fn_kwargs, "threads": res["threads"], "device": device})
    fs, path = storage.filesystem(out_dir)
    ds.write_parquet(path, filesystem=fs, min_rows_per_file=ROWS_PER_FILE)
    return {"workers": res["num_actors"], "threads": res["threads"], "device": device}
