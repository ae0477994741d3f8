"""SSL training in this process: the core loop of :mod:`sas_ray.core.training.loop`, no Ray.

The same run as the Ray executor's with one worker (same ids, order, seeds and checkpoint
files, so the two give the same weights to float tolerance): the subset's rows are read once
per fit (:func:`~sas_ray.executors.training.read_rows`), every epoch is a global shuffle of
them, decoded ahead of the step by threads (``train.prefetch``, ``train.decode_threads``),
and the model trains on ``train.use_gpu`` (auto: CUDA when available) with torch's threads.

Checkpoints: every ``train.checkpoint_every`` epochs and at the end, a directory
``out/<name>/checkpoint_epoch-NNNNNN/`` with ``encoder.pt`` and ``train_state.pt`` (written
last: a directory without it is incomplete and ignored); the two newest are kept. Rerunning
into the same ``out`` resumes from the newest. Outputs: ``out/encoder.pt``,
``out/metrics.json`` and ``out/run.json``, as on Ray.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sas_ray.config import Config
from sas_ray.core import machine
from sas_ray.core.methods import build_method
from sas_ray.core.models.checkpoint import ENCODER_FILE
from sas_ray.core.seeding import seed_model
from sas_ray.core.training.loop import Callback, prepare_module
from sas_ray.errors import SasRayError
from sas_ray.executors.training import (
    STATE_FILE,
    CheckpointFiles,
    TrainRows,
    prepare_run,
    read_checkpoint,
    read_rows,
    train_process,
    write_outputs,
)
from sas_ray.io import storage

PREFIX = "checkpoint_epoch-"
KEEP = 2


def device_for(use_gpu: str) -> torch.device:
    """``train.use_gpu`` (auto | true | false) resolved against this machine."""
    setting = use_gpu.lower()
    if setting in ("true", "1", "yes") and not torch.cuda.is_available():
        raise SasRayError("use_gpu=true but torch sees no CUDA device; set --train.use_gpu "
                          "auto/false")
    return torch.device("cuda" if setting != "false" and torch.cuda.is_available() else "cpu")


def checkpoints(run_dir: str) -> list[str]:
    """The complete checkpoint directories under ``run_dir``, oldest first."""
    return sorted(f.rsplit("/", 1)[0] for f in storage.list_files(run_dir)
                  if f.endswith(f"/{STATE_FILE}") and f.rsplit("/", 2)[-2].startswith(PREFIX))


def _committer(run_dir: str) -> Any:
    def commit(metrics: dict[str, Any], files: CheckpointFiles | None) -> None:
        if files is None:
            return
        directory = storage.join(run_dir, f"{PREFIX}{metrics['epoch']:06d}")
        for name in (ENCODER_FILE, STATE_FILE):  # the state last: it marks the directory done
            storage.write_bytes_atomic(storage.join(directory, name), files[name])
        for old in checkpoints(run_dir)[:-KEEP]:
            storage.delete(old)

    return commit


def fit(cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
        name: str = "train", callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """:meth:`~sas_ray.executors.base.Executor.fit` in this process."""
    start = time.perf_counter()
    ids = prepare_run(cfg, data, out, train_ids, workers=1)
    device = device_for(cfg.train.use_gpu)
    seed_model(cfg.run.seed)
    model = prepare_module(build_method(cfg), device, cfg.train.compile).to(device)
    rows = TrainRows(read_rows(data, None if train_ids is None else ids))
    run_dir = storage.join(out, name)
    done = checkpoints(run_dir)
    resume = read_checkpoint(done[-1], device) if done else None
    train_process(cfg, data, out, rows, model, device, _committer(run_dir),
                  cores=machine.cores(), resume=resume, callbacks=callbacks)
    final = checkpoints(run_dir)[-1]
    return write_outputs(out, storage.read_bytes(storage.join(final, ENCODER_FILE)),
                         time.perf_counter() - start)
