"""The executor interface: the few parallel primitives that the stages need.

A stage (``sas_ray.stages``) decides *what* to compute, fingerprints it, and commits its
artifact; an executor decides *where* the heavy work runs. Two implement this protocol:

- ``local`` (:mod:`sas_ray.executors.local`): one process, torch threads, an optional process
  pool for per-class selection. Imports no Ray, so the pipeline runs on a single GPU box that
  has only torch, torchvision, numpy, pyarrow and PyYAML.
- ``ray`` (:mod:`sas_ray.executors.ray`): Ray Data tasks and actor pools, Ray tasks, Ray Train
  and Ray Tune, on a laptop's local Ray or a cluster.

Both run the same core functions on the same inputs, so they write the same artifacts with the
same fingerprints, and a stage computed by one is reused by the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from sas_ray.config import Config
from sas_ray.core.selection.ranking import ClassMap

# One block of planned ingest rows -> one row of per-shard stats (see stages.ingest).
BlockFn = Callable[[pa.Table], pa.Table]
# A batch class: ``cls(**fn_kwargs, threads=t, device=d)`` is built once per worker (torch
# threads and "cpu" | "cuda" chosen by the executor); the instance maps a table of shard rows
# to a table of output rows (see stages.embed.EmbedBatch). It must be picklable (Ray ships it
# to actors).
BatchClass = Callable[..., Callable[[pa.Table], pa.Table]]
# The CPU half of a batch's work (e.g. decoding images), run before the batch class where the
# CPUs are; a picklable function (a module-level one, or a functools.partial of one).
Prepare = Callable[[pa.Table], pa.Table]
ROWS_PER_FILE = 8192  # map_batches writes Parquet files of about this many rows
# One sweep trial: its JSON parameters -> its flat metrics (see stages.sweep.run_trial); it
# must be picklable (the Ray executor ships it to Tune trials).
TrialFn = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Workers:
    """How many copies of a batch class run at once, and what each gets."""

    count: int = 1  # Ray: actors (on GPUs: the least, the pool may grow); local: one, in-process
    cpus: float | None = None  # Ray: CPUs per actor; None: the cluster's CPUs but one, shared
    threads: int | None = None  # torch threads each; None: floor(cpus) (local: every core)
    gpus: float = 1.0  # Ray on GPUs: the share of a GPU each actor takes (the pool may grow)


def last_line(text: str) -> str:
    """The last non-empty line of an error text (at most 300 characters): a failed trial's
    :attr:`TrialOutcome.error`."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "unknown error"


@dataclass
class TrialOutcome:
    """What became of one trial: ``metrics`` when it returned, ``error`` (the last line) when
    it failed after its retries, neither when it never ran to the end (interrupted)."""

    params: dict[str, Any]
    metrics: dict[str, Any] | None = None
    error: str | None = None


class Executor(Protocol):
    """What a stage may ask of an executor. Every method blocks until its work is done."""

    name: str

    def map_blocks(self, fn: BlockFn, blocks: Iterable[pa.Table]) -> Iterable[dict[str, Any]]:
        """Apply ``fn`` to every block (in any order, in parallel where possible); yield the
        rows of the returned stats tables. ``blocks`` may be a generator over a streamed
        source: take blocks from it lazily, a bounded number in flight."""
        ...

    def map_batches(self, fn: BatchClass, fn_kwargs: dict[str, Any], data: str, split: str,
                    columns: list[str], batch_size: int, out_dir: str,
                    workers: Workers, prepare: Prepare | None = None) -> dict[str, Any]:
        """Stream the ``split`` rows (``columns``) of the shards at ``data`` through
        ``prepare`` (on CPUs, overlapping ``fn``'s work on earlier batches) and then ``fn``,
        in the batches of :func:`sas_ray.io.shards.plan_batches` (at most ``batch_size``
        rows, the same on every executor), and write the output tables as Parquet files
        (about :data:`ROWS_PER_FILE` rows each, rows in no particular order) under
        ``out_dir``. The device is a GPU where there is one. Returns ``{"workers",
        "threads", "device"}`` as used."""
        ...

    def class_map(self, num_workers: int) -> ClassMap:
        """A :data:`~sas_ray.core.selection.ranking.ClassMap` that ranks latent classes with
        up to ``num_workers`` workers; results in job order."""
        ...

    def fit(self, cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
            name: str = "train", callbacks: Iterable[Any] = ()) -> dict[str, Any]:
        """Train the SSL model of ``cfg`` on the train split of the shards at ``data`` (only
        ``train_ids`` when given) into the run directory ``out``; resumable. Returns
        ``{"metrics", "checkpoint", "history", "seconds", "startup_seconds", "num_images"}``
        and writes ``out/encoder.pt``, ``out/metrics.json`` and ``out/run.json``. Each epoch
        is a global shuffle seeded by ``(run.seed, epoch)``; with one worker both executors
        give the same weights. ``callbacks`` (:class:`sas_ray.core.training.loop.Callback`,
        picklable) run in every training process after the executor's own."""
        ...

    def run_trials(self, fn: TrialFn, trials: Sequence[dict[str, Any]], experiment: str, *,
                   callbacks: Sequence[Any] = ()) -> list[TrialOutcome]:
        """Run ``fn`` on every trial's parameters (each has a unique ``"name"``), retrying a
        failing one ``sweep.max_failures`` times; outcomes in the order of ``trials``.
        ``experiment`` is where the executor may keep its own records (Ray: the Tune
        experiment); ``callbacks`` are executor-specific (Ray: ``ray.tune.Callback``; local:
        callables of each :class:`TrialOutcome` as it finishes)."""
        ...

    def close(self) -> None:
        """Release what the executor started (Ray, process pools)."""
        ...
