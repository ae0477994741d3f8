"""`sas-ray pipeline` end to end on tiny data with local files (the laptop flow;
tests/integration/test_jobs.py runs the cluster flow on S3):

* on the local executor, then on the Ray executor over the same storage: Ray reuses every
  artifact the local executor wrote (same fingerprints), and a changed select.strategies
  reruns only the new ranking, the new strategy's trial (a Tune trial) and the report;
  `sas-ray status` tells what is done;
* the GPU replication command (`--config configs/replicate_cifar10_gpu.yaml --run.executor
  local`) with tiny overrides, on CPU, in a process where `import ray` fails, on a
  CIFAR-shaped ImageFolder tar.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sas_ray import config
from sas_ray.analysis.records import read_sweep
from sas_ray.cli import main
from sas_ray.core import machine
from sas_ray.io import storage
from sas_ray.pipeline import State, run_pipeline, status_lines

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_RAY = ("import sys\nsys.modules['ray'] = None\nfrom sas_ray.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")


def stage_lines(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """stage -> "cached" | "ran" from this run's "stage X: ..." log lines."""
    out = {}
    for rec in caplog.records:
        if m := re.match(r"stage (\S+): (cached|ran)", rec.getMessage()):
            out[m.group(1)] = m.group(2)
    caplog.clear()
    return out


@pytest.mark.ray
def test_local_then_ray_pipeline_reuses_every_stage(ray_session: Any, tmp_path: Path,
                                                    tiny_run: dict[str, object],
                                                    caplog: pytest.LogCaptureFixture,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="sas_ray")
    root = str(tmp_path / "run")
    overrides = {**tiny_run, "select.strategies": "random", "sweep.fractions": "0.5",
                 "run.storage": root}
    layout = run_pipeline(config.load(overrides={**overrides, "run.executor": "local"}))
    assert stage_lines(caplog) == {s: "ran" for s in (
        "shards", "proxy", "embeddings", "partition/labels", "rankings/random", "sweep",
        "report")}
    printed = capsys.readouterr().out
    assert "random" in printed and "report:" in printed
    for name in ("table.md", "table.csv", "tests.csv", "savings.csv",
                 "accuracy_vs_fraction.png"):
        assert (tmp_path / "run" / "report" / name).stat().st_size > 0, name
    state = State(layout).stages
    assert all(state[s]["seconds"] > 0 for s in ("proxy", "embeddings", "sweep"))
    assert state["sweep"]["complete"] and state["sweep"]["trials"] == 2
    # proxy.epochs == train.epochs: the proxy run is the full-data trial, trained once and
    # aliased (the proxy wrote nothing under runs/)
    records = {r.strategy: r.metrics for r in read_sweep(layout.sweep)}
    assert records["full"]["reused_training"] and not records["random"]["reused_training"]
    where = records["random"]["machine"]  # what the report's "where the trials ran" reads
    assert where["cores"] == machine.cores() and where["load_before"] >= 0
    assert "## Where the trials ran" in (tmp_path / "run" / "report" / "table.md").read_text()
    assert not any(p.name == "metrics.json" for p in (tmp_path / "run" / "runs").rglob("*")
                   if "full-" in str(p))
    assert state["sweep"]["trained"] == 1

    # the Ray executor through the CLI on the same storage: everything cached, same report
    table = storage.read_bytes(storage.join(root, "report", "table.md"))
    argv = ["pipeline", "--run.executor", "ray"] + [
        a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    assert main(argv) == 0
    assert set(stage_lines(caplog).values()) == {"cached"}
    assert State(layout).stages["report"]["status"] == "cached"
    assert storage.read_bytes(storage.join(root, "report", "table.md")) == table

    # one more strategy on Ray: only its ranking and its (Tune) trial run
    run_pipeline(config.load(overrides={**overrides, "select.strategies": "random,sas"}))
    assert stage_lines(caplog) == {
        "shards": "cached", "proxy": "cached", "embeddings": "cached",
        "partition/labels": "cached", "rankings/random": "cached", "rankings/labels/sas": "ran",
        "sweep": "ran", "report": "ran"}
    assert State(layout).stages["sweep"]["trained"] == 1
    assert (tmp_path / "run" / "tune").is_dir()
    assert {r.strategy for r in read_sweep(layout.sweep) if r.finished} == {
        "random", "sas", "full"}

    text = "\n".join(status_lines(root))
    assert "sweep trials (3): 3 finished" in text
    assert re.search(r"proxy\s+done\s+fp [0-9a-f]{8}", text), text
    assert main(["status", root]) == 0 and "rankings/labels/sas" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nothing")]) == 2


@pytest.fixture
def cifar_like_tar(tmp_path: Path, image_folder: Callable[..., object]) -> Path:
    """A CIFAR-10-shaped ImageFolder tar: train/ and test/ with 10 classes of 32 px PNGs."""
    root = tmp_path / "cifar_like"
    counts = {f"{split}/class{k}": n for split, n in (("train", 8), ("test", 4))
              for k in range(10)}
    image_folder(root / "cifar", counts, size=32)
    path = root / "cifar.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(root / "cifar", arcname="cifar")
    return path


def test_gpu_replication_command_runs_without_ray(cifar_like_tar: Path, tmp_path: Path) -> None:
    """The README's command for a GPU machine without Ray, shrunk: a pool of 60 of the 80
    train images, two latent methods, SAS, random and the forgetting ranking, one epoch."""
    tiny = {"data.source": cifar_like_tar, "run.storage": tmp_path / "rep",
            "data.pool_size": 60, "model.arch": "resnet10", "model.width": 0.0625,
            "model.proj_dim": 16, "proxy.width": 0.0625, "proxy.epochs": 1,
            "train.epochs": 1, "train.batch_size": 16, "embed.views": 1,
            "embed.batch_size": 64, "eval.probe_epochs": 20, "eval.probe_l2_grid": "[]",
            "eval.knn_k": 5, "latent.k": 3, "select.supervised_epochs": 3,
            "select.strategies": "sas,random,forgetting-least",
            "sweep.latent_methods": "labels,kmeans", "sweep.fractions": 0.5,
            "sweep.seeds": 0}
    argv = ["pipeline", "--config", "configs/replicate_cifar10_gpu.yaml", "--run.executor",
            "local", *(a for k, v in tiny.items() for a in (f"--{k}", str(v)))]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", WITHOUT_RAY, *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr  # stage lines reach the terminal on stdout
    assert "on the local executor" in log and "stage pool: ran" in log
    assert re.search(r"trials done - sas/kmeans 50%: linear probe", log)  # names the latent
    records = read_sweep(str(tmp_path / "rep" / "sweep"))
    # full data and random once; sas and forgetting-least under each latent method
    assert sorted(r.strategy for r in records) == sorted([
        "full", "random", "sas/labels", "forgetting-least/labels", "sas/kmeans",
        "forgetting-least/kmeans"])
    assert all(r.finished and 0 <= r.metrics["linear_acc"] <= 100 for r in records)
    assert {r.metrics["num_train"] for r in records if r.strategy != "full"} == {30}
    table = (tmp_path / "rep" / "report" / "table.md").read_text()
    assert "## Strategy comparisons" in table and "## Agreement with forgetting" in table
    assert "| sas/kmeans " in table

    again = run()  # everything is stored: nothing reruns
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert " ran in " not in log and "stage sweep: cached" in log


def test_bad_sweep_settings_fail_before_any_work(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "run"
    assert main(["pipeline", "--run.storage", str(root), "--sweep.fractions", "0.5,1.5"]) == 2
    assert "sweep.fractions" in capsys.readouterr().err
    assert not (root / "shards").exists()
    assert main(["pipeline", "--run.storage", str(root), "--select.strategies", "nope"]) == 2
    assert "'nope' is not allowed" in capsys.readouterr().err
    assert not (root / "shards").exists()
