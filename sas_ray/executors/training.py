"""What both executors' ``fit`` share (no Ray): the driver's checks, the rows to train on, one
process's training around the core loop, its checkpoints and the run's outputs.

Driver side (:func:`prepare_run`): check the settings, check the subset ids against the train
split, refuse a run directory that holds another run (``out/run.json``).

Process side (:func:`~sas_ray.core.training.loop.prepare_module` then :func:`train_process`,
one call per worker): malloc set to keep freed memory (:mod:`sas_ray.core.memory`), the
optimiser and schedule, resume from a checkpoint, the step of the method (``train.method``,
:mod:`sas_ray.core.methods`) and its per-step hook, the per-epoch batches (a global shuffle
per epoch, :mod:`sas_ray.core.training.order`, over :class:`TrainRows`, decoded ahead of the
step by threads: :mod:`sas_ray.core.training.prefetch`), and the callbacks: online kNN,
the ids audit (``train.record_ids``), the log line and the checkpoint, handed to the executor's
``commit`` every epoch (with the files on rank 0 every ``train.checkpoint_every`` epochs and
at the end, else without).

A checkpoint is a directory of two files: ``encoder.pt`` (the whole method, loadable by
:func:`~sas_ray.core.models.checkpoint.load_encoder` and
:func:`~sas_ray.core.methods.load_method`; ``meta`` holds the history) and
``train_state.pt`` (optimiser, schedule, scaler, last epoch, history, training seconds).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from sas_ray.config import Config, TrainConfig, result_settings
from sas_ray.core.data.images import decode_images
from sas_ray.core.memory import keep_freed_memory
from sas_ray.core.models.checkpoint import ENCODER_FILE, encoder_payload
from sas_ray.core.models.optim import build_optimizer
from sas_ray.core.training.loop import (
    AfterStep,
    Callback,
    Precision,
    TrainState,
    fit,
    method_step,
)
from sas_ray.core.training.order import epoch_batches, per_worker_batch, steps_per_epoch
from sas_ray.core.training.prefetch import TrainInput
from sas_ray.errors import SasRayError
from sas_ray.io import storage

STATE_FILE = "train_state.pt"
CheckpointFiles = dict[str, bytes]  # file name -> content
Commit = Callable[[dict[str, Any], CheckpointFiles | None], None]


# ---------------------------------------------------------------- driver side
def train_ids(data: str, ids: np.ndarray | None) -> np.ndarray:
    """The sorted ids to train on: all of the train split, or ``ids`` after checking them."""
    from sas_ray.io.shards import read_table

    available = read_table(data, split="train", columns=["id"]).column("id").to_numpy()
    if ids is None:
        return np.sort(available)
    unique = np.unique(np.asarray(ids, dtype=np.int64))
    if len(unique) != len(ids):
        raise SasRayError(f"the subset lists {len(ids) - len(unique)} id(s) twice; "
                          "pass each id once")
    unknown = np.setdiff1d(unique, available)
    if len(unknown):
        raise SasRayError(f"{len(unknown)} subset id(s) (e.g. {unknown[:3].tolist()}) are not in "
                          f"the train split of {data}; rank the same dataset you train on")
    return unique


def claim_run_dir(cfg: Config, data: str, out: str, ids: np.ndarray) -> None:
    """Record what ``out`` trains (``out/run.json``); refuse to resume a run there that was
    started with other data, ids or settings that change the result (``train.epochs`` may
    change: a longer run continues a shorter one)."""
    settings = {k: result_settings(getattr(cfg, k)) for k in ("model", "train", "data")}
    del settings["train"]["epochs"]
    record = {"data": data, "ids": storage.fingerprint(ids.tolist()),
              "config": storage.fingerprint(settings)}
    path = storage.join(out, "run.json")
    if storage.exists(path):
        previous = storage.read_json(path)
        changed = [k for k in record if previous.get(k) != record[k]]
        if changed:
            raise SasRayError(f"{out} holds a training run with different {', '.join(changed)}; "
                              "pass a new --out (or delete the old run) to start over")
    else:
        storage.write_json_atomic(path, record)


def check_settings(t: TrainConfig, workers: int) -> None:
    if workers < 1 or t.epochs < 1 or t.checkpoint_every < 1:
        raise SasRayError("train.num_workers, train.epochs and train.checkpoint_every must be "
                          ">= 1; fix the config")
    if per_worker_batch(t.batch_size, workers) < 2:
        raise SasRayError(f"batch size {t.batch_size} over {workers} workers leaves < 2 "
                          "images per worker; raise --train.batch_size")


def prepare_run(cfg: Config, data: str, out: str, ids: np.ndarray | None,
                workers: int) -> np.ndarray:
    """Check everything a run needs before it starts and claim ``out``; the ids to train on."""
    check_settings(cfg.train, workers)
    chosen = train_ids(data, ids)
    if steps_per_epoch(len(chosen), cfg.train.batch_size, workers) < 1:
        raise SasRayError(f"{len(chosen)} training images make no full batch of "
                          f"{cfg.train.batch_size}; lower --train.batch_size or train on more "
                          "images")
    claim_run_dir(cfg, data, out, chosen)
    return chosen


def write_outputs(out: str, encoder: bytes, seconds: float) -> dict[str, Any]:
    """Write ``out/encoder.pt`` (the final checkpoint's encoder file) and ``out/metrics.json``;
    returns the summary that ``fit`` returns."""
    history = torch.load(io.BytesIO(encoder), map_location="cpu",
                         weights_only=True)["meta"]["history"]
    checkpoint = storage.join(out, ENCODER_FILE)
    storage.write_bytes_atomic(checkpoint, encoder)
    summary = {"metrics": dict(history[-1]) if history else {}, "checkpoint": checkpoint,
               "history": history, "seconds": seconds,
               "startup_seconds": seconds - sum(h["seconds"] for h in history),
               "num_images": int(history[-1]["images"]) if history else 0}
    storage.write_json_atomic(storage.join(out, "metrics.json"), summary)
    return summary


# ---------------------------------------------------------------- rows and batches
class TrainRows:
    """The encoded training images, ``n`` rows in id order, from an Arrow table of ``id`` and
    ``image`` in any order (not copied: a table in Ray's object store stays shared)."""

    def __init__(self, table: pa.Table) -> None:
        ids = table.column("id").to_numpy()
        self._take = np.argsort(ids, kind="stable")  # position in id order -> table row
        self.ids = ids[self._take]
        self._images = table.column("image")

    def __len__(self) -> int:
        return len(self.ids)

    def encoded(self, positions: np.ndarray) -> list[bytes]:
        """The encoded images at ``positions`` (into the id order)."""
        return self._images.take(pa.array(self._take[positions])).to_pylist()

    def input(self, image_size: int, **kwargs: Any) -> TrainInput:
        """Their decoded batches (:class:`~sas_ray.core.training.prefetch.TrainInput`)."""
        return TrainInput(self.encoded, len(self), image_size, **kwargs)


def read_rows(data: str, ids: np.ndarray | None) -> pa.Table:
    """The ``id`` and ``image`` columns of the train split (only ``ids`` when given), read
    once per fit: memory holds only the subset's rows. (Parquet is read by row group, 1024
    rows, skipped when its id statistics exclude the subset; a subset scattered over the ids
    still fetches most row groups' bytes, once per fit rather than once per epoch.)"""
    from sas_ray.io.shards import read_table

    return read_table(data, split="train", columns=["id", "image"], ids=ids)


# ---------------------------------------------------------------- checkpoints
def checkpoint_files(model: nn.Module, cfg: Config, optimizer: torch.optim.Optimizer,
                     scheduler: Any, precision: Precision, state: TrainState) -> CheckpointFiles:
    def dump(obj: Any) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    meta = {"epoch": state.epochs_done, "history": state.history}
    return {ENCODER_FILE: dump(encoder_payload(model, cfg, meta)),
            STATE_FILE: dump({"optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(),
                              "scaler": precision.scaler.state_dict(),
                              "epoch": state.epochs_done - 1, "history": state.history,
                              "train_seconds": state.train_seconds})}


def read_checkpoint(directory: str, device: torch.device) -> dict[str, Any]:
    """A checkpoint directory's train state, with the method's weights under ``"model"``."""
    def load(name: str) -> Any:
        return torch.load(io.BytesIO(storage.read_bytes(storage.join(directory, name))),
                          map_location=device, weights_only=True)

    return {**load(STATE_FILE), "model": load(ENCODER_FILE)["state_dict"]}


# ---------------------------------------------------------------- callbacks
def knn_monitor(cfg: Config, data: str) -> Callable[[nn.Module], float]:
    """A function ``model -> kNN accuracy (%)`` on a validation split of the labelled train
    images (at most ``train.knn_images``); never on the test split."""
    from sas_ray.core.evaluation import extract_features, knn_accuracy, stratified_split
    from sas_ray.io.shards import read_table

    table = read_table(data, split="train", columns=["image", "label"])
    table = table.filter(table.column("label").is_valid())
    rng = np.random.default_rng(cfg.run.seed)
    rows = np.sort(rng.permutation(table.num_rows)[:cfg.train.knn_images])
    table = table.take(rows)
    images = decode_images(table.column("image").to_pylist(), size=cfg.data.image_size)
    labels = table.column("label").to_numpy().astype(np.int64)  # a writable copy for torch
    bank, query = stratified_split(labels, cfg.eval.val_fraction, cfg.run.seed)
    y = torch.from_numpy(labels)
    classes = int(labels.max()) + 1 if len(labels) else 1

    def knn(model: nn.Module) -> float:
        x = extract_features(model, images, cfg.eval.batch_size)
        return knn_accuracy(x[bank], y[bank], x[query], y[query], classes, cfg.eval.knn_k,
                            cfg.eval.knn_t)

    return knn


class KnnMonitor(Callback):
    """Adds ``knn_val_acc`` (of ``encoder``) every ``every`` epochs."""

    def __init__(self, knn: Callable[[nn.Module], float], encoder: nn.Module, every: int) -> None:
        self.knn, self.encoder, self.every = knn, encoder, every

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        if (epoch + 1) % self.every == 0:
            metrics["knn_val_acc"] = self.knn(self.encoder)


class RecordIds(Callback):
    """Writes the ids this worker trained on in each epoch to ``out/ids/`` (an audit)."""

    def __init__(self, out: str, rank: int, ids: np.ndarray,
                 plan: Callable[[int], list[np.ndarray]]) -> None:
        self.out, self.rank, self.ids, self.plan = out, rank, ids, plan

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        positions = self.plan(epoch)
        buf = io.BytesIO()
        np.save(buf, self.ids[np.concatenate(positions)] if positions else np.zeros(0, np.int64))
        storage.write_bytes_atomic(
            storage.join(self.out, "ids", f"epoch-{epoch:03d}-rank-{self.rank}.npy"),
            buf.getvalue())


class LogLine(Callback):
    """One line per epoch: loss, images/s, learning rate, elapsed training time, kNN."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        knn = f"  kNN(val) {metrics['knn_val_acc']:.1f}%" if "knn_val_acc" in metrics else ""
        print(f"epoch {epoch + 1}/{self.epochs}  loss {metrics['loss']:.4f}  "
              f"img/s {metrics['images_per_s']:.0f}  lr {metrics['lr']:.2e}  "
              f"elapsed {metrics['train_seconds']:.0f}s{knn}", flush=True)


class Checkpointer(Callback):
    """Hands every epoch's metrics to ``commit``, with the checkpoint files on rank 0 when
    one is due (every ``checkpoint_every`` epochs and after the last)."""

    def __init__(self, commit: Commit, files: Callable[[], CheckpointFiles], rank: int,
                 every: int, epochs: int) -> None:
        self.commit, self.files, self.rank = commit, files, rank
        self.every, self.epochs = every, epochs

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        due = epoch + 1 == self.epochs or (epoch + 1) % self.every == 0
        self.commit(metrics, self.files() if due and self.rank == 0 else None)


# ---------------------------------------------------------------- one process
def decode_threads(t: TrainConfig, device: torch.device, cores: int) -> int:
    """``train.decode_threads``, or auto: a GPU worker's ``cores``; beside a CPU step, 1."""
    return t.decode_threads or (max(1, cores) if device.type == "cuda" else 1)


def train_process(cfg: Config, data: str, out: str, rows: TrainRows, model: nn.Module,
                  device: torch.device, commit: Commit, *, rank: int = 0, world: int = 1,
                  cores: int = 1, resume: dict[str, Any] | None = None,
                  callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train ``model`` (the method of ``train.method`` on ``device``, prepared by
    :func:`~sas_ray.core.training.loop.prepare_module`, DDP-wrapped when ``world > 1``) as
    worker ``rank`` of ``world`` with ``cores`` CPU cores on ``rows`` from ``resume`` (a
    :func:`read_checkpoint`) or from scratch. Batches are decoded once when the decoded rows
    fit in ``train.decoded_cache_mb``, else ``train.prefetch`` ahead by
    :func:`decode_threads` threads, into pinned memory on CUDA."""
    keep_freed_memory()  # a step's buffers are reused, not mapped and zeroed again
    t = cfg.train
    method = getattr(model, "module", model)
    steps = steps_per_epoch(len(rows), t.batch_size, world)
    optimizer, scheduler = build_optimizer(model, t, steps)
    precision = Precision.for_device(device, t.amp)
    state = TrainState()
    if resume is not None:
        method.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        precision.scaler.load_state_dict(resume["scaler"])
        state = TrainState(resume["history"], resume["train_seconds"])
        if rank == 0:
            print(f"resuming from the checkpoint after epoch {state.epochs_done}", flush=True)

    def plan(epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(rows), t.batch_size, cfg.run.seed, epoch, rank, world)

    own: list[Callback] = [AfterStep(model, steps, t.epochs)]
    if t.knn_every and rank == 0:
        own.append(KnnMonitor(knn_monitor(cfg, data), method.encoder, t.knn_every))
    if t.record_ids:
        own.append(RecordIds(out, rank, rows.ids, plan))
    if rank == 0:
        own.append(LogLine(t.epochs))
    own.append(Checkpointer(
        commit, lambda: checkpoint_files(model, cfg, optimizer, scheduler, precision, state),
        rank, t.checkpoint_every, t.epochs))
    step = method_step(method.augments(cfg.data.image_size), optimizer, precision)
    source = rows.input(cfg.data.image_size, prefetch=t.prefetch,
                        threads=decode_threads(t, device, cores), pin=device.type == "cuda",
                        cache_mb=t.decoded_cache_mb)
    return fit(model, lambda epoch: source.batches(plan(epoch)), step, optimizer, scheduler,
               range(state.epochs_done, t.epochs), seed=cfg.run.seed, device=device, rank=rank,
               state=state, callbacks=[*own, *callbacks])
