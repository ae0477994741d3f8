"""Training on Ray Train: one 2-worker run on a subset, killed once mid-run, then evaluated;
and one 1-worker run that must match the local executor's.

A TorchTrainer fit costs ~20 s even when tiny, so one run carries most assertions:
subset restriction (ids seen per epoch, in the global shuffle's order), checkpointing,
resume after a worker failure, the final encoder and its evaluation through the CLI.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ray import cloudpickle

from sas_ray import cli
from sas_ray.config import Config
from sas_ray.core.models.checkpoint import load_encoder
from sas_ray.core.training.loop import Callback
from sas_ray.core.training.order import epoch_batches
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray import RayExecutor
from sas_ray.io import storage
from sas_ray.io.shards import read_table
from sas_ray.stages.train import read_subset

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get CrashOnce

TRAIN_FLAGS = ["--train.num_workers", "2", "--train.cpus_per_worker", "0.5",
               "--train.epochs", "3", "--train.batch_size", "32", "--train.record_ids", "true",
               "--model.width", "0.125", "--train.max_failures", "2"]


class CrashOnce(Callback):
    """The last worker exits hard (``os._exit``) after its first step of ``epoch``, once the
    checkpoint due before it is committed (it shows up in Ray Train's checkpoint manager
    snapshot, so the restart deterministically resumes from it), and once per run directory
    (a marker file remembers it)."""

    def __init__(self, epoch: int, out: str, run_dir: str) -> None:
        self.epoch, self.out, self.run_dir = epoch, out, run_dir

    def on_batch(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        import torch.distributed as dist

        if epoch != self.epoch or step != 0 or dist.get_rank() != dist.get_world_size() - 1:
            return
        marker = storage.join(self.out, f".test-crash-epoch-{epoch}")
        if storage.exists(marker):
            return
        snapshot = storage.join(self.run_dir, "checkpoint_manager_snapshot.json")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest = storage.read_json(snapshot).get("latest_checkpoint_result") \
                if storage.exists(snapshot) else None
            if latest and latest["metrics"]["epoch"] >= epoch:
                break
            time.sleep(0.5)
        storage.write_bytes_atomic(marker, b"")
        print(f"[test] worker {dist.get_rank()} exits at epoch {epoch}", flush=True)
        os._exit(1)


@pytest.mark.slow
def test_subset_run_killed_once_resumes_and_evaluates(
        synthetic_shards: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    train_ids = read_table(synthetic_shards, split="train", columns=["id"])["id"].to_numpy()
    subset = np.sort(train_ids)[::2][:96]  # 96 of 256: 48 per worker, 3 steps of 16
    manifest = tmp_path / "subset.json"
    manifest.write_text(json.dumps(subset.tolist()))
    out = str(tmp_path / "run")
    cfg = Config()
    cfg.train.num_workers, cfg.train.cpus_per_worker, cfg.train.epochs = 2, 0.5, 3
    cfg.train.batch_size, cfg.train.record_ids, cfg.train.max_failures = 32, True, 2
    cfg.model.width = 0.125
    crash = CrashOnce(1, out, os.path.join(out, "train"))  # the last worker dies in epoch 1

    RayExecutor(cfg).fit(cfg, synthetic_shards, out, read_subset(str(manifest)),
                         callbacks=[crash])
    assert os.path.exists(os.path.join(out, ".test-crash-epoch-1"))  # it did crash
    summary = storage.read_json(os.path.join(out, "metrics.json"))
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert summary["metrics"]["start_epoch"] == 1  # the restarted group resumed at epoch 1
    assert all(h["images"] == 96 and np.isfinite(h["loss"]) for h in history)

    for epoch in range(3):  # every epoch saw exactly the subset, each id once, shuffled
        seen = [np.load(f) for f in sorted(glob.glob(f"{out}/ids/epoch-{epoch:03d}-rank-*.npy"))]
        assert len(seen) == 2 and min(len(s) for s in seen) == 48
        both = np.concatenate(seen)
        assert len(both) == len(np.unique(both)) and set(both.tolist()) == set(subset.tolist())
        for rank in range(2):  # in the global shuffle's order, rank r's slice of each batch
            plan = epoch_batches(len(subset), 32, cfg.run.seed, epoch, rank, world=2)
            assert seen[rank].tolist() == subset[np.concatenate(plan)].tolist()

    ray_checkpoints = sorted(glob.glob(f"{out}/train/checkpoint_*/"))
    assert 1 <= len(ray_checkpoints) <= 2  # num_to_keep=2
    model = load_encoder(ray_checkpoints[-1])  # a Ray checkpoint directory loads too
    assert model.spec["width"] == 0.125

    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", out, "--data", synthetic_shards,
                     "--out", out, "--eval.probe_epochs", "20", "--eval.knn_k", "20"]) == 0
    printed = capsys.readouterr().out
    assert "linear probe" in printed and "kNN" in printed
    result = storage.read_json(os.path.join(out, "eval.json"))
    assert result["n_train"] == 256 and result["n_test"] == 64  # all labelled images
    assert 0 <= result["knn_acc"] <= 100 and 0 <= result["linear_acc"] <= 100

    manifest.write_text(json.dumps(subset[:64].tolist()))  # other ids into the same run dir
    assert cli.main(["train", "--data", synthetic_shards, "--subset", str(manifest),
                     "--out", out, *TRAIN_FLAGS]) == 2
    assert "different ids" in capsys.readouterr().err


def test_bad_subsets_are_clear_errors(synthetic_shards: str, tmp_path,
                                      capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([0, 1, 10**9]))
    out = tmp_path / "run"
    assert cli.main(["train", "--data", synthetic_shards, "--subset", str(bad),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not in the train split" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written
    with pytest.raises(SasRayError, match="does not exist"):
        read_subset(str(tmp_path / "missing.json"))
    with pytest.raises(SasRayError, match="out of range"):
        read_subset(str(bad), 1.5)
    with pytest.raises(SasRayError, match="applies to rankings"):
        read_subset(str(bad), 0.5)


def test_subset_from_ranking_and_parquet(tmp_path) -> None:
    ids = np.array([7, 3, 5, 1], dtype=np.int64)
    uri = str(tmp_path / "ranking")
    with storage.write_artifact(uri, "ranking") as w:
        table = pa.table({"id": ids, "rank": np.arange(4), "score": np.ones(4),
                          "latent_class": np.zeros(4, dtype=np.int64)})
        os.makedirs(w.dir, exist_ok=True)
        pq.write_table(table, os.path.join(w.dir, "ranking.parquet"))
        w.meta.update(strategy="sas", nested=True, balanced=True, fraction=None)
    assert read_subset(uri, 0.5).tolist() == [7, 3]
    pq.write_table(pa.table({"id": ids}), tmp_path / "ids.parquet")
    assert read_subset(str(tmp_path / "ids.parquet")).tolist() == ids.tolist()


def test_online_knn_monitor_uses_a_validation_split_of_train(synthetic_shards: str) -> None:
    from sas_ray.core.methods.registry import model_from_config
    from sas_ray.executors.training import knn_monitor

    cfg = Config()
    cfg.train.knn_images, cfg.eval.knn_k = 200, 20
    knn = knn_monitor(cfg, synthetic_shards)
    acc = knn(model_from_config(cfg))
    # 200 of the 256 train images, about 10% of each class's as val queries: the accuracy
    # is a whole number of those queries (not of the test split's 64 images)
    from sas_ray.core.evaluation import stratified_split
    from sas_ray.io.shards import read_table

    labels = read_table(synthetic_shards, split="train", columns=["label"])["label"].to_numpy()
    rows = np.sort(np.random.default_rng(cfg.run.seed).permutation(labels.size)[:200])
    _, query = stratified_split(labels[rows].astype(np.int64), cfg.eval.val_fraction,
                                cfg.run.seed)
    assert 15 <= len(query) <= 25
    assert 0 <= acc <= 100 and abs(acc * len(query) / 100 - round(acc * len(query) / 100)) < 1e-6


@pytest.mark.slow
def test_one_ray_worker_trains_like_the_local_executor(synthetic_shards: str, tmp_path) -> None:
    train_ids = read_table(synthetic_shards, split="train", columns=["id"])["id"].to_numpy()
    subset = np.sort(train_ids)[1::2][:96]
    cfg = Config()
    cfg.model.width, cfg.train.epochs, cfg.train.batch_size = 0.125, 2, 32
    cfg.train.num_workers, cfg.train.cpus_per_worker, cfg.train.use_gpu = 1, 1.0, "false"
    cfg.train.record_ids, cfg.run.seed = True, 5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (1 CPU): the same float summation order
    try:
        local = LocalExecutor(cfg).fit(cfg, synthetic_shards, str(tmp_path / "local"), subset)
    finally:
        torch.set_num_threads(threads)
    on_ray = RayExecutor(cfg).fit(cfg, synthetic_shards, str(tmp_path / "ray"), subset)

    for epoch in range(2):  # the same ids in the same order
        ids = [np.load(tmp_path / run / "ids" / f"epoch-{epoch:03d}-rank-0.npy")
               for run in ("local", "ray")]
        assert ids[0].tolist() == ids[1].tolist()
    assert [h["loss"] for h in on_ray["history"]] == pytest.approx(
        [h["loss"] for h in local["history"]], rel=1e-5)
    a, b = load_encoder(local["checkpoint"]), load_encoder(on_ray["checkpoint"])
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    for run in ("local", "ray"):
        assert sorted(os.listdir(tmp_path / run)) == ["encoder.pt", "ids", "metrics.json",
                                                      "run.json", "train"]
