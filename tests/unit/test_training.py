"""The training loop without Ray: the per-epoch global shuffle, the core loop's contract, and
the local executor's fit (checkpoints, resume after a crash, the ids audit)."""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np
import pytest
import torch

from sas_ray.config import Config
from sas_ray.core.methods import build_method
from sas_ray.core.models.checkpoint import load_encoder
from sas_ray.core.training.loop import Callback, Precision, fit, method_step
from sas_ray.core.training.order import epoch_batches, steps_per_epoch
from sas_ray.executors.local import LocalExecutor
from sas_ray.io import storage
from sas_ray.io.shards import read_table
from sas_ray.stages.ingest import ingest


# ---------------------------------------------------------------- order
def test_batches_of_class_sorted_rows_are_mixed() -> None:
    labels = np.repeat(np.arange(10), 500)  # CIFAR-10-like: ids sorted by class
    for epoch in range(3):
        for batch in epoch_batches(len(labels), 256, seed=0, epoch=epoch):
            share = np.bincount(labels[batch], minlength=10).max() / len(batch)
            assert share <= 2 / 10  # within 2x of uniform (measured before: 0.76)


def test_workers_split_the_global_batch_of_one_worker() -> None:
    n, batch, seed = 103, 12, 7
    one = epoch_batches(n, batch, seed, epoch=2)
    three = [epoch_batches(n, batch, seed, epoch=2, rank=r, world=3) for r in range(3)]
    assert len(one) == steps_per_epoch(n, batch) == n // batch  # last partial batch dropped
    for s, global_batch in enumerate(one):
        assert np.array_equal(np.concatenate([w[s] for w in three]), global_batch)
    seen = np.concatenate(one)
    assert len(np.unique(seen)) == len(seen)  # each row at most once per epoch
    assert not np.array_equal(seen, np.concatenate(epoch_batches(n, batch, seed, epoch=3)))
    assert np.array_equal(seen, np.concatenate(epoch_batches(n, batch, seed, epoch=2)))


# ---------------------------------------------------------------- core loop
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_epoch_start(self, epoch: int) -> None:
        self.events.append(("start", epoch))

    def on_batch(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        self.events.append(("batch", epoch, step))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        metrics["extra"] = epoch
        self.events.append(("end", epoch))


def _core_run(seed: int) -> tuple[list[dict[str, Any]], Recorder, torch.nn.Module]:
    cfg = Config()
    cfg.model.width, cfg.data.image_size = 0.125, 16
    torch.manual_seed(seed)
    model = build_method(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    step = method_step(model.augments(16), optimizer, Precision(torch.device("cpu")))
    recorder = Recorder()
    state = fit(model, lambda e: [images[:12], images[12:]], step, optimizer, None, range(1, 3),
                seed=seed, device=torch.device("cpu"), callbacks=[recorder])
    return state.history, recorder, model


def test_core_fit_calls_back_in_order_and_is_deterministic() -> None:
    history, recorder, model = _core_run(seed=3)
    assert recorder.events == [("start", 1), ("batch", 1, 0), ("batch", 1, 1), ("end", 1),
                               ("start", 2), ("batch", 2, 0), ("batch", 2, 1), ("end", 2)]
    assert [h["epoch"] for h in history] == [2, 3] and history[0]["start_epoch"] == 1
    assert all(h["images"] == 24 and h["steps"] == 2 and h["extra"] == h["epoch"] - 1
               for h in history)
    assert history[1]["train_seconds"] == pytest.approx(history[0]["seconds"]
                                                        + history[1]["seconds"])
    again, _, model2 = _core_run(seed=3)
    assert [h["loss"] for h in again] == [h["loss"] for h in history]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- local executor
@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic data set (4 classes x 64 train images, 32 px), ingested without Ray."""
    out = str(tmp_path_factory.mktemp("synthetic") / "shards")
    cfg = Config()
    ingest("synthetic", out, cfg, executor=LocalExecutor(cfg))
    return out


def _config(epochs: int = 3) -> Config:
    cfg = Config()
    cfg.model.width, cfg.data.image_size = 0.125, 16
    cfg.train.epochs, cfg.train.batch_size, cfg.train.record_ids = epochs, 32, True
    cfg.train.use_gpu = "false"
    return cfg


class Crash(Callback):
    """Raises after the first step of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_batch(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        if epoch == self.epoch:
            raise RuntimeError("injected crash")


def test_local_fit_resumes_after_a_crash_to_the_same_weights(shards: str, tmp_path) -> None:
    ids = np.sort(read_table(shards, split="train", columns=["id"])["id"].to_numpy())
    subset = ids[::2][:96]  # 3 steps of 32 per epoch
    cfg, executor = _config(), LocalExecutor(_config())
    crashed = str(tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="injected"):
        executor.fit(cfg, shards, crashed, subset, callbacks=[Crash(epoch=1)])
    summary = executor.fit(cfg, shards, crashed, subset)
    assert [h["start_epoch"] for h in summary["history"]] == [0, 1, 1]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert all(h["images"] == 96 for h in summary["history"])
    assert len(glob.glob(f"{crashed}/train/checkpoint_epoch-*/")) == 2  # the two newest
    for epoch in range(3):  # every epoch trained on exactly the subset, each id once
        seen = np.load(f"{crashed}/ids/epoch-{epoch:03d}-rank-0.npy")
        assert sorted(seen.tolist()) == subset.tolist()

    straight = executor.fit(cfg, shards, str(tmp_path / "straight"), subset)
    assert [h["loss"] for h in straight["history"]] == pytest.approx(
        [h["loss"] for h in summary["history"]], rel=1e-5)
    a, b = load_encoder(summary["checkpoint"]), load_encoder(straight["checkpoint"])
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert storage.read_json(os.path.join(crashed, "metrics.json"))["num_images"] == 96
