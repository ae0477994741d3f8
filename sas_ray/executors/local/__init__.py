"""The local executor: every stage in this process, no Ray import anywhere below it.

Parallelism: torch's intra-op threads for the models, and a process pool of
``select.num_workers`` processes for per-class selection (classes are independent; with one
worker they run in this process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from sas_ray.config import Config
from sas_ray.core.selection.backends import cuda_available
from sas_ray.core.selection.ranking import ClassFn, ClassJob, ClassMap, ClassOrder, map_serial
from sas_ray.executors.base import (
    BatchClass,
    BlockFn,
    Prepare,
    TrialFn,
    TrialOutcome,
    Workers,
)
from sas_ray.executors.grouping import balanced_groups, own_rows, rank_chunk


class LocalExecutor:
    """:class:`~sas_ray.executors.base.Executor` in one process."""

    name = "local"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def map_blocks(self, fn: BlockFn, blocks: Iterable[pa.Table]) -> Iterator[dict[str, Any]]:
        for block in blocks:
            yield from fn(block).to_pylist()

    def map_batches(self, fn: BatchClass, fn_kwargs: dict[str, Any], data: str, split: str,
                    columns: list[str], batch_size: int, out_dir: str,
                    workers: Workers, prepare: Prepare | None = None) -> dict[str, Any]:
        """The batches one after another in this process, on a GPU when torch sees one; the
        next batch is read and prepared by a thread meanwhile."""
        from sas_ray.executors.local.batches import map_batches

        return map_batches(fn, fn_kwargs, data, split, columns, batch_size, out_dir, workers,
                           prepare)

    def class_map(self, num_workers: int) -> ClassMap:
        """A pool of ``num_workers`` processes over groups of classes; in this process where
        one worker is asked for, or where the greedy will run on a CUDA device (torch backend:
        classes are batched on it, and one process owns the device)."""
        on_gpu = self.cfg.select.backend != "numpy" and self.cfg.select.device != "cpu"
        if num_workers <= 1 or (on_gpu and cuda_available()):
            return map_serial

        def run(fn: ClassFn, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
            groups = balanced_groups(jobs, min(len(jobs), 4 * num_workers))
            with ProcessPoolExecutor(num_workers) as pool:
                futures = [pool.submit(rank_chunk, fn, *own_rows(x, group)) for group in groups]
                results = {job.index: res for group, fut in zip(groups, futures, strict=True)
                           for job, res in zip(group, fut.result(), strict=True)}
            return [results[job.index] for job in jobs]

        return run

    def fit(self, cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
            name: str = "train", callbacks: Iterable[Any] = ()) -> dict[str, Any]:
        """The core training loop in this process (:mod:`sas_ray.executors.local.train`)."""
        from sas_ray.executors.local.train import fit

        return fit(cfg, data, out, train_ids, name, list(callbacks))

    def run_trials(self, fn: TrialFn, trials: Sequence[dict[str, Any]], experiment: str, *,
                   callbacks: Sequence[Callable[[TrialOutcome], None]] = ()
                   ) -> list[TrialOutcome]:
        """One trial after another (``experiment`` is unused: stored results resume)."""
        from sas_ray.executors.local.sweep import run_trials

        return run_trials(fn, trials, self.cfg.sweep.max_failures, callbacks)

    def close(self) -> None:
        pass
