"""SimCLR on Ray Train: the core loop of :mod:`sas_ray.core.training.loop` on N workers.

- Data: the train split of a shard dataset (optionally restricted to a set of ids) as a
  Ray Dataset (materialised in the object store once when the shards hold at most
  ``train.cache_mb`` MiB of images, else streamed from Parquet every epoch); each worker
  iterates its equal share (``get_dataset_shard``) in batches of ``train.batch_size /
  num_workers`` encoded images, decodes them and draws the two views.
- Workers: DDP over gloo on CPUs, or NCCL with mixed precision when ``train.use_gpu``
  resolves to GPUs (:func:`sas_ray.executors.ray.session.want_gpu`); the NT-Xent negatives are
  gathered across workers, so N workers train exactly like one with the global batch.
- Checkpoints: every ``train.checkpoint_every`` epochs and at the end, rank 0 reports a
  directory with ``encoder.pt`` (loadable by :func:`sas_ray.core.models.checkpoint.load_encoder`)
  and ``train_state.pt`` (optimiser, schedule, scaler, epoch, history). Batch norm
  statistics are per worker (no SyncBatchNorm, which needs CUDA). After a worker
  failure Ray Train restarts the group (up to ``train.max_failures`` times) and the loop
  resumes from the latest checkpoint; rerunning into the same ``out`` resumes too.
- Outputs under ``out``: Ray's run directory ``out/<name>/`` (checkpoints), plus
  ``out/encoder.pt`` (final encoder), ``out/metrics.json`` (per-epoch history) and
  ``out/run.json`` (data, ids and settings; a rerun into ``out`` with others is refused).

Test hook: with ``SAS_RAY_TEST_CRASH_AT_EPOCH=K`` in the driver's environment, the last
worker exits hard (``os._exit``) after its first step of epoch K (0-based), once the
checkpoint before it is committed, and once per run directory (a marker file
``out/.test-crash-epoch-K`` remembers it).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from sas_ray.config import Config, from_dict
from sas_ray.errors import SasRayError
from sas_ray.io import storage

CRASH_ENV = "SAS_RAY_TEST_CRASH_AT_EPOCH"
STATE_FILE = "train_state.pt"


# ---------------------------------------------------------------- subsets
def read_subset(uri: str, fraction: float | None = None) -> np.ndarray:
    """Train ids from a ranking artifact (cut at ``fraction``) or a subset manifest: a JSON
    list of ids, a JSON object ``{"ids": [...]}``, or a Parquet file with an ``id`` column."""
    if fraction is not None and not 0 < fraction <= 1:
        raise SasRayError(f"fraction {fraction} is out of range (0, 1]; pass e.g. --fraction 0.4")
    manifest = storage.read_manifest(uri) if not uri.endswith((".json", ".parquet")) else None
    if manifest is not None:
        if manifest.get("stage") != "ranking":
            raise SasRayError(f"{uri} holds a '{manifest.get('stage')}' artifact; --subset takes "
                              "a ranking (sas-ray select) or a list of ids (.json/.parquet)")
        from sas_ray.io.artifacts import subset_ids

        return np.asarray(subset_ids(uri, fraction), dtype=np.int64)
    if not storage.exists(uri):
        raise SasRayError(f"subset {uri} does not exist; pass a ranking directory or a "
                          ".json/.parquet list of ids")
    if fraction is not None:
        raise SasRayError(f"--fraction applies to rankings, but {uri} is a fixed list of ids; "
                          "drop --fraction or pass a ranking")
    try:
        if uri.endswith(".parquet"):
            import pyarrow.parquet as pq

            fs, path = storage.filesystem(uri)
            ids = pq.read_table(path, filesystem=fs, columns=["id"]).column("id").to_numpy()
        else:
            obj = storage.read_json(uri)
            ids = np.asarray(obj["ids"] if isinstance(obj, dict) else obj)
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise SasRayError(f"cannot read ids from {uri} ({type(err).__name__}: {err}); write a "
                          "JSON list of ids or a Parquet file with an 'id' column") from err
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise SasRayError(f"{uri} must hold a flat list of integer ids")
    return ids.astype(np.int64)


def _train_ids(data: str, train_ids: np.ndarray | None) -> np.ndarray:
    """The ids to train on: all of the train split, or ``train_ids`` after checking them."""
    from sas_ray.io.shards import read_table

    available = read_table(data, split="train", columns=["id"]).column("id").to_numpy()
    if train_ids is None:
        return available
    ids = np.unique(np.asarray(train_ids, dtype=np.int64))
    if len(ids) != len(train_ids):
        raise SasRayError(f"the subset lists {len(train_ids) - len(ids)} id(s) twice; "
                          "pass each id once")
    unknown = np.setdiff1d(ids, available)
    if len(unknown):
        raise SasRayError(f"{len(unknown)} subset id(s) (e.g. {unknown[:3].tolist()}) are not in "
                          f"the train split of {data}; rank the same dataset you train on")
    return ids


# ---------------------------------------------------------------- worker side
def _batches(shard: Any, batch_size: int, image_size: int, seen: list[np.ndarray],
             seed: int) -> Iterator[Any]:
    """uint8 ``(n, 3, size, size)`` tensors decoded from a worker's dataset shard; the ids
    of every batch are appended to ``seen``."""
    from sas_ray.core.data.augment import to_nchw
    from sas_ray.core.data.images import decode_images

    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                    local_shuffle_buffer_size=4 * batch_size,
                                    local_shuffle_seed=seed):
        seen.append(batch["id"])
        yield to_nchw(decode_images(batch["image"], size=image_size))


def _knn_monitor(cfg: Config, data: str) -> Any:
    """A function ``model -> kNN accuracy (%)`` on a validation split of the labelled train
    images (at most ``train.knn_images``); never on the test split."""
    import torch

    from sas_ray.core.data.images import decode_images
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

    def knn(model: Any) -> float:
        x = extract_features(model, images, cfg.eval.batch_size)
        return knn_accuracy(x[bank], y[bank], x[query], y[query], classes, cfg.eval.knn_k,
                            cfg.eval.knn_t)

    return knn


def _save_ids(out: str, epoch: int, rank: int, seen: list[np.ndarray]) -> None:
    buf = io.BytesIO()
    np.save(buf, np.concatenate(seen) if seen else np.zeros(0, np.int64))
    storage.write_bytes_atomic(storage.join(out, "ids", f"epoch-{epoch:03d}-rank-{rank}.npy"),
                               buf.getvalue())


def _crash_if_asked(loop: dict[str, Any], epoch: int, rank: int, world: int,
                    checkpoint_every: int) -> None:
    """The test hook of the module docstring. Before exiting it waits (up to 5 min) until
    Ray Train has committed the latest checkpoint due before ``epoch`` (it shows up in the
    checkpoint manager's snapshot), so the restart deterministically resumes from it."""
    if loop["crash_at_epoch"] != epoch or rank != world - 1:
        return
    marker = storage.join(loop["out"], f".test-crash-epoch-{epoch}")
    if storage.exists(marker):
        return
    due = epoch // checkpoint_every * checkpoint_every  # epochs done at the last checkpoint
    snapshot = storage.join(loop["run_dir"], "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 300
    while due and time.monotonic() < deadline:
        latest = storage.read_json(snapshot).get("latest_checkpoint_result") \
            if storage.exists(snapshot) else None
        if latest and latest["metrics"]["epoch"] >= due:
            break
        time.sleep(0.5)
    storage.write_bytes_atomic(marker, b"")
    print(f"[test hook] worker {rank} exits at epoch {epoch}", flush=True)
    os._exit(1)


def train_loop(loop: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer (``loop`` is the train_loop_config)."""
    import ray.train
    import ray.train.torch
    import torch

    from sas_ray.core.data.augment import SimCLRAugment
    from sas_ray.core.models import model_from_config
    from sas_ray.core.models.checkpoint import ENCODER_FILE, save_encoder
    from sas_ray.core.models.optim import build_optimizer
    from sas_ray.core.training.loop import Precision, train_epoch

    cfg = from_dict(loop["cfg"])
    for name in ("ray.train", ""):  # no INFO line per report from Ray Train's loggers
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(loop["threads"])
    torch.manual_seed(cfg.run.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model_from_config(cfg))
    per_worker = cfg.train.batch_size // world
    steps_per_epoch = loop["num_rows"] // world // per_worker
    optimizer, scheduler = build_optimizer(model, cfg.train, steps_per_epoch)
    precision = Precision.for_device(device, cfg.train.amp)
    start_epoch, history, train_seconds = 0, [], 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device,
                               weights_only=True)
            weights = torch.load(os.path.join(d, ENCODER_FILE), map_location=device,
                                 weights_only=True)["state_dict"]
        getattr(model, "module", model).load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        train_seconds = state["train_seconds"]
        if rank == 0:
            print(f"resuming from the checkpoint after epoch {start_epoch}", flush=True)
    knn = _knn_monitor(cfg, loop["data"]) if cfg.train.knn_every and rank == 0 else None
    augment = SimCLRAugment(size=cfg.data.image_size)
    shard = ray.train.get_dataset_shard("train")
    generator = torch.Generator()
    for epoch in range(start_epoch, cfg.train.epochs):
        seed = cfg.run.seed * 1_000_003 + epoch * 1009 + rank
        generator.manual_seed(seed)
        seen: list[np.ndarray] = []

        def batches(seen: list[np.ndarray] = seen, epoch: int = epoch,
                    seed: int = seed) -> Iterator[Any]:
            for i, batch in enumerate(_batches(shard, per_worker, cfg.data.image_size, seen,
                                               seed)):
                if i == 1:
                    _crash_if_asked(loop, epoch, rank, world, cfg.train.checkpoint_every)
                yield batch

        metrics = train_epoch(model, batches(), augment, optimizer, scheduler,
                              cfg.train.temperature, precision, generator)
        train_seconds += metrics["seconds"]
        metrics.update(epoch=epoch + 1, start_epoch=start_epoch, train_seconds=train_seconds)
        if knn is not None and (epoch + 1) % cfg.train.knn_every == 0:
            metrics["knn_val_acc"] = knn(getattr(model, "module", model))
        if cfg.train.record_ids:
            _save_ids(loop["out"], epoch, rank, seen)
        history.append(metrics)
        last = epoch + 1 == cfg.train.epochs
        if rank == 0:
            knn_text = f"  kNN(val) {metrics['knn_val_acc']:.1f}%" if "knn_val_acc" in metrics \
                else ""
            print(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics['loss']:.4f}  "
                  f"img/s {metrics['images_per_s']:.0f}  lr {metrics['lr']:.2e}  "
                  f"elapsed {train_seconds:.0f}s{knn_text}", flush=True)
        if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
            with tempfile.TemporaryDirectory() as d:
                save_encoder(os.path.join(d, ENCODER_FILE), model, cfg,
                             meta={"epoch": epoch + 1, "history": history})
                torch.save({"optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": precision.scaler.state_dict(), "epoch": epoch,
                            "history": history, "train_seconds": train_seconds},
                           os.path.join(d, STATE_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


# ---------------------------------------------------------------- driver side
def _claim_run_dir(cfg: Config, data: str, out: str, ids: np.ndarray) -> None:
    """Record what ``out`` trains (``out/run.json``); refuse to resume a run there that was
    started with other data, ids or settings (only ``train.epochs`` may change)."""
    settings = cfg.to_dict()
    settings["train"] = {k: v for k, v in settings["train"].items()
                         if k not in ("epochs", "max_failures", "record_ids")}
    record = {"data": data, "ids": storage.fingerprint(ids.tolist()),
              "config": storage.fingerprint({k: settings[k] for k in ("model", "train", "data")})}
    path = storage.join(out, "run.json")
    if storage.exists(path):
        previous = storage.read_json(path)
        changed = [k for k in record if previous.get(k) != record[k]]
        if changed:
            raise SasRayError(f"{out} holds a training run with different {', '.join(changed)}; "
                              "pass a new --out (or delete the old run) to start over")
    else:
        storage.write_json_atomic(path, record)


def build_trainer(cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
                  name: str = "train") -> Any:
    """A TorchTrainer that trains SimCLR on the train split of ``data`` (or only the ids in
    ``train_ids``), storing its run under ``out/name`` (``out`` local or ``s3://``)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from sas_ray.executors.ray.session import ensure_ray, want_gpu
    from sas_ray.io.shards import info, read_dataset

    t = cfg.train
    if t.num_workers < 1 or t.epochs < 1 or t.checkpoint_every < 1:
        raise SasRayError("train.num_workers, train.epochs and train.checkpoint_every must be "
                          ">= 1; fix the config")
    if t.batch_size // t.num_workers < 2:
        raise SasRayError(f"batch size {t.batch_size} over {t.num_workers} workers leaves < 2 "
                          "images per worker; raise --train.batch_size")
    ensure_ray(cfg.run)
    ids = _train_ids(data, train_ids)
    if len(ids) // t.num_workers < t.batch_size // t.num_workers:
        raise SasRayError(f"{len(ids)} training images make no full batch of {t.batch_size}; "
                          "lower --train.batch_size or train on more images")
    use_gpu = want_gpu(t.use_gpu)
    _claim_run_dir(cfg, data, out, ids)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-execution INFO lines
    # nor Ray Data's warning that progress bars are off: here that is deliberate (below)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    dataset = read_dataset(data, split="train", ids=None if train_ids is None else ids,
                           columns=["id", "image"])
    # the per-epoch log line replaces a progress bar per epoch (other stages keep theirs)
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    if info(data)["meta"].get("image_bytes", float("inf")) <= t.cache_mb * 2**20:
        dataset = dataset.materialize()  # small data: read once, not every epoch
    crash = os.environ.get(CRASH_ENV)
    loop = {"cfg": cfg.to_dict(), "data": data, "out": out, "run_dir": storage.join(out, name),
            "num_rows": len(ids),
            "threads": max(1, int(t.cpus_per_worker)),
            "crash_at_epoch": int(crash) if crash else None}
    fs, path = storage.filesystem(out)
    return TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets={"train": dataset},
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
    )


def fit(cfg: Config, data: str, out: str, train_ids: np.ndarray | None = None,
        name: str = "train") -> dict[str, Any]:
    """Train and return ``{"metrics": last epoch's metrics, "checkpoint": out/encoder.pt,
    "history": [per-epoch metrics], "seconds": wall time, "startup_seconds": wall time not
    spent in training epochs}``; also writes ``out/encoder.pt`` and ``out/metrics.json``."""
    import ray.train

    start = time.perf_counter()
    trainer = build_trainer(cfg, data, out, train_ids, name)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SasRayError(f"training failed more than train.max_failures={cfg.train.max_failures}"
                          f" times ({first[:200]}); see the worker error above") from err
    seconds = time.perf_counter() - start
    if result.checkpoint is None:
        raise SasRayError(f"training under {out} ended without a checkpoint; rerun it")
    import torch

    from sas_ray.core.models.checkpoint import ENCODER_FILE

    with result.checkpoint.as_directory() as d, open(os.path.join(d, ENCODER_FILE), "rb") as f:
        encoder = f.read()
    history = torch.load(io.BytesIO(encoder), map_location="cpu",
                         weights_only=True)["meta"]["history"]
    checkpoint = storage.join(out, ENCODER_FILE)
    storage.write_bytes_atomic(checkpoint, encoder)
    summary = {"metrics": dict(result.metrics), "checkpoint": checkpoint, "history": history,
               "seconds": seconds,
               "startup_seconds": seconds - sum(h["seconds"] for h in history),
               "num_images": int(history[-1]["images"]) if history else 0}
    storage.write_json_atomic(storage.join(out, "metrics.json"), summary)
    return summary


def cli_train(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray train --data D [--subset S [--fraction F]] --out O``."""
    if args.fraction is not None and not args.subset:
        raise SasRayError("--fraction cuts a ranking; pass the ranking with --subset")
    ids = read_subset(args.subset, args.fraction) if args.subset else None
    summary = fit(cfg, args.data, args.out, ids)
    m = summary["metrics"]
    print(json.dumps({"epochs": m["epoch"], "loss": round(m["loss"], 4),
                      "images_per_s": round(m["images_per_s"], 1),
                      "images_per_epoch": summary["num_images"],
                      "seconds": round(summary["seconds"], 1),
                      "checkpoint": summary["checkpoint"]}))
