"""SSL training on Ray Train: the process side of :mod:`sas_ray.executors.training` (the core
loop of :mod:`sas_ray.core.training.loop`) on ``train.num_workers`` workers.

- Data: one Ray task reads the ``id`` and ``image`` columns of the train split, only the
  subset's rows when training on a subset (:func:`sas_ray.executors.training.read_rows`, the
  local executor's reader), into Ray's object store, once per fit (spilled to disk by Ray if
  they exceed its memory). Every worker maps that table (zero-copy on its node) and reads its
  rows by position: each epoch is a global shuffle seeded by ``(run.seed, epoch)`` and worker
  ``r`` takes the ``r``-th slice of every global batch (:mod:`sas_ray.core.training.order`),
  decoded in the worker by threads ``train.prefetch`` batches ahead of its step (pinned on
  GPUs; :mod:`sas_ray.core.training.prefetch`). Why not Ray Data ``map_batches`` decode
  tasks: they need CPUs of their own and a copy through the object store per batch, while
  the worker's threads use the CPUs it already holds and write straight into the step's
  buffer.
  Why not Ray Data's shuffles: a ``random_shuffle`` per epoch moves every row between tasks
  every epoch, and ``local_shuffle_buffer_size`` over class-sorted rows left 76% of a
  CIFAR-10 batch in one class; a permutation of positions costs nothing, and with one worker
  the order (hence the weights) equals the local executor's.
- Workers: DDP (the method module wrapped) over gloo on CPUs, or NCCL with mixed precision
  when ``train.use_gpu`` resolves to GPUs (:func:`sas_ray.executors.ray.session.want_gpu`);
  losses that need negatives gather them across workers, so N workers train like one with
  the global batch.
  Batch norm statistics are per worker (no SyncBatchNorm, which needs CUDA).
- Checkpoints: rank 0 reports the checkpoint directory of
  :mod:`sas_ray.executors.training`. After a worker failure Ray Train restarts the group (up
  to ``train.max_failures`` times) and the loop resumes from the latest checkpoint; rerunning
  into the same ``out`` resumes too.
- Outputs under ``out``: Ray's run directory ``out/<name>/`` (checkpoints), plus
  ``out/encoder.pt`` (final encoder), ``out/metrics.json`` (per-epoch history) and
  ``out/run.json`` (data, ids and settings; a rerun into ``out`` with others is refused).
- ``callbacks`` (picklable :class:`~sas_ray.core.training.loop.Callback` objects) travel to
  every worker in the ``train_loop_config``; tests inject faults this way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sas_ray.config import Config, from_dict
from sas_ray.core.training.loop import Callback
from sas_ray.errors import SasRayError
from sas_ray.executors.training import CheckpointFiles, prepare_run, write_outputs
from sas_ray.io import storage


def _report(metrics: dict[str, Any], files: CheckpointFiles | None) -> None:
    """Every worker reports every epoch; rank 0 with the checkpoint when one is due."""
    import ray.train

    if files is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _read_rows(data: str, ids: np.ndarray | None) -> tuple[int, Any]:
    """The training rows (a Ray task: the table goes to the object store) and their count."""
    from sas_ray.executors.training import read_rows

    table = read_rows(data, ids)
    return table.num_rows, table


def train_loop(loop: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer (``loop`` is the train_loop_config)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from sas_ray.core.methods import build_method
    from sas_ray.core.seeding import seed_model
    from sas_ray.core.training.loop import prepare_module
    from sas_ray.executors.training import TrainRows, read_checkpoint, train_process

    cfg = from_dict(loop["cfg"])
    for name in ("ray.train", ""):  # no INFO line per report from Ray Train's loggers
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    torch.set_num_threads(loop["threads"])
    seed_model(cfg.run.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(prepare_module(build_method(cfg), device,
                                                         cfg.train.compile))
    rows = TrainRows(ray.get(loop["rows"]))
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = read_checkpoint(d, device)
    train_process(cfg, loop["data"], loop["out"], rows, model, device, _report,
                  rank=ctx.get_world_rank(), world=ctx.get_world_size(), cores=loop["threads"],
                  resume=resume, callbacks=loop["callbacks"])


def build_trainer(cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
                  name: str = "train", callbacks: Sequence[Callback] = ()) -> tuple[Any, Any]:
    """A TorchTrainer that trains on the train split of ``data`` (or only the ids in
    ``train_ids``), storing its run under ``out/name`` (``out`` local or ``s3://``), and the
    object reference of the training rows (keep it alive while the trainer runs)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sas_ray.executors.ray.session import ensure_ray, want_gpu

    t = cfg.train
    ray = ensure_ray(cfg.run)
    ids = prepare_run(cfg, data, out, train_ids, t.num_workers)
    use_gpu = want_gpu(t.use_gpu)
    # outside any placement group: in a Tune trial the task would be captured by the trial's
    # bundle, which holds no CPU (sweep.trial_cpus 0), and could never be scheduled
    outside = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy(None)
    count, rows = ray.remote(num_returns=2, scheduling_strategy=outside)(_read_rows).remote(
        data, None if train_ids is None else ids)
    if ray.get(count) != len(ids):  # raises the read's error, if any
        raise SasRayError(f"the shards at {data} changed while training started; rerun")
    loop = {"cfg": cfg.to_dict(), "data": data, "out": out, "rows": rows,
            "threads": max(1, int(t.cpus_per_worker)), "callbacks": list(callbacks)}
    fs, path = storage.filesystem(out)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )
    return trainer, rows


def fit(cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
        name: str = "train", callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """:meth:`~sas_ray.executors.base.Executor.fit` on Ray Train."""
    import ray.train

    from sas_ray.core.models.checkpoint import ENCODER_FILE

    start = time.perf_counter()
    trainer, _rows = build_trainer(cfg, data, out, train_ids, name, callbacks)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SasRayError(f"training failed more than train.max_failures={cfg.train.max_failures}"
                          f" times ({first[:200]}); see the worker error above") from err
    if result.checkpoint is None:
        raise SasRayError(f"training under {out} ended without a checkpoint; rerun it")
    with result.checkpoint.as_directory() as d, open(os.path.join(d, ENCODER_FILE), "rb") as f:
        encoder = f.read()
    return write_outputs(out, encoder, time.perf_counter() - start)
