"""The Ray executor: Ray tasks for ingest and per-class selection, Ray Data for embedding,
Ray Train for SSL training and Ray Tune for sweeps. Ray is joined or started on first use
(:func:`~sas_ray.executors.ray.session.ensure_ray`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sas_ray.config import Config
from sas_ray.core.selection.ranking import ClassFn, ClassJob, ClassMap, ClassOrder
from sas_ray.errors import SasRayError
from sas_ray.executors.base import (
    BatchClass,
    BlockFn,
    Prepare,
    TrialFn,
    TrialOutcome,
    Workers,
)
from sas_ray.executors.grouping import balanced_groups, rank_chunk
from sas_ray.executors.ray.session import cluster_cpus, cluster_gpus, ensure_ray


def _apply(fn: BlockFn, block: pa.Table) -> pa.Table:
    return fn(block)


class RayExecutor:
    """:class:`~sas_ray.executors.base.Executor` on a Ray cluster (local or remote)."""

    name = "ray"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def map_blocks(self, fn: BlockFn, blocks: Iterable[pa.Table]) -> Iterator[dict[str, Any]]:
        """One Ray task (1 CPU) per block, submitted as the blocks are planned with at most
        two per cluster CPU in flight, so a streamed source (a tar read on the driver) never
        sits whole in the object store; rows in completion order."""
        ray = ensure_ray(self.cfg.run)
        task, fn_ref = ray.remote(num_cpus=1)(_apply), ray.put(fn)
        window = max(2, 2 * int(cluster_cpus()))
        pending: list[Any] = []
        for block in blocks:
            if len(pending) >= window:
                done, pending = ray.wait(pending, num_returns=1)
                yield from ray.get(done[0]).to_pylist()
            pending.append(task.remote(fn_ref, block))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done[0]).to_pylist()

    def map_batches(self, fn: BatchClass, fn_kwargs: dict[str, Any], data: str, split: str,
                    columns: list[str], batch_size: int, out_dir: str,
                    workers: Workers, prepare: Prepare | None = None) -> dict[str, Any]:
        """Ray Data read tasks (and ``prepare``) feeding an actor pool
        (:mod:`sas_ray.executors.ray.data`)."""
        from sas_ray.executors.ray.data import map_batches

        return map_batches(self.cfg.run, fn, fn_kwargs, data, split, columns, batch_size,
                           out_dir, workers, prepare)

    def class_map(self, num_workers: int) -> ClassMap:
        """Groups of classes as Ray tasks, ``num_workers`` in flight; on a cluster with GPUs
        each task takes ``min(1, GPUs / num_workers)`` of one (unless ``select.backend`` is
        numpy), where the ``auto`` backend ranks with torch on it."""
        if num_workers < 1:
            raise SasRayError(f"select.num_workers={num_workers}; pass 1 or more")
        run_cfg, use_gpus = self.cfg.run, self.cfg.select.backend != "numpy"

        def run(fn: ClassFn, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
            ray = ensure_ray(run_cfg)
            gpus = min(1.0, cluster_gpus() / num_workers) if use_gpus else 0.0
            task = ray.remote(num_cpus=1, num_gpus=gpus)(rank_chunk)
            x_ref = ray.put(x)
            queue = balanced_groups(jobs, min(len(jobs), 4 * num_workers))
            pending: dict[Any, list[ClassJob]] = {}
            results: dict[int, ClassOrder] = {}
            while queue or pending:
                while queue and len(pending) < num_workers:
                    group = queue.pop(0)
                    pending[task.remote(fn, x_ref, group)] = group
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    group = pending.pop(ref)
                    results.update({job.index: res
                                    for job, res in zip(group, ray.get(ref), strict=True)})
            return [results[job.index] for job in jobs]

        return run

    def fit(self, cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
            name: str = "train", callbacks: Iterable[Any] = ()) -> dict[str, Any]:
        """Ray Train workers running the core loop (:mod:`sas_ray.executors.ray.train`)."""
        from sas_ray.executors.ray.train import fit

        return fit(cfg, data, out, train_ids, name, list(callbacks))

    def run_trials(self, fn: TrialFn, trials: Sequence[dict[str, Any]], experiment: str, *,
                   callbacks: Sequence[Any] = ()) -> list[TrialOutcome]:
        """The trials as one Ray Tune experiment at ``experiment``."""
        from sas_ray.executors.ray.tune import run_trials

        return run_trials(self.cfg, fn, trials, experiment, callbacks)

    def close(self) -> None:
        pass
