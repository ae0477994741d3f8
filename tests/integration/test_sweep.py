"""The sweep on the Ray executor (Ray Tune) end to end on tiny synthetic data: 2 strategies x
2 fractions, interrupted (Ctrl+C) after its first finished trial and resumed without
redoing it, with a strategy whose ranking is corrupt (its trial fails, is retried and
reported); then the analysis report. (The full-data trial runs in test_pipeline, where it
reuses the proxy's training; tests/unit/test_sweep_plan runs the sweep driver on the local
executor.)"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray.tune

from sas_ray import config
from sas_ray.analysis.records import read_sweep
from sas_ray.analysis.report import PLOT_FILE, analyze, render, write_report
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.executors.ray import RayExecutor
from sas_ray.io import storage
from sas_ray.pipeline import Layout, State, ranking_stage, shards_stage
from sas_ray.stages.embed import embed
from sas_ray.stages.sweep import run_sweep, sweep_spec

pytestmark = pytest.mark.ray

SWEEP = {"select.strategies": "sas,random", "sweep.fractions": "0.25,0.5",
         "sweep.max_failures": 1, "sweep.include_full": False, "run.executor": "ray"}


class InterruptOnce(ray.tune.Callback):
    """Sends Ctrl+C to this process when the first trial finishes, once per marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_tune_sweep_resumes_reports_failures_and_analyzes(ray_session: Any, tmp_path: Path,
                                                          tiny_run: dict[str, object]) -> None:
    cfg = config.load(overrides={**tiny_run, **SWEEP, "run.storage": str(tmp_path / "run")})
    layout = Layout(cfg.run.storage)
    state = State(layout)
    executor = RayExecutor(cfg)
    proxy = str(tmp_path / "proxy.pt")
    save_encoder(proxy, model_from_config(cfg), cfg)  # untrained proxy: selection still runs
    shards_uri, shards = shards_stage(cfg, layout, state, executor)
    embed(cfg, shards_uri, proxy, layout.embeddings, executor)
    rankings = dict(ranking_stage(cfg, layout, state, executor))
    # a strategy whose ranking file got corrupted after it was committed: its trials fail
    uri, fp = rankings[("random", None, 0.25)]
    broken = str(tmp_path / "broken")
    manifest = storage.require_manifest(uri)
    for f in manifest["files"]:
        os.makedirs(os.path.dirname(os.path.join(broken, f)), exist_ok=True)
        Path(broken, f).write_bytes(b"not parquet")
    storage.write_json_atomic(storage.join(broken, "manifest.json"), manifest)
    rankings[("broken", "labels", 0.25)] = (broken, "broken-" + fp)

    spec = sweep_spec(cfg, shards_uri, shards, rankings, layout.runs)
    assert len(spec.cells) == 5  # sas, random x 0.25, 0.5; broken x 0.25

    first = run_sweep(cfg, spec, executor, layout.sweep, layout.tune,
                      callbacks=[InterruptOnce(str(tmp_path / "interrupted"))])
    assert not first.complete, "the sweep should have been interrupted"
    done_before = {t["name"]: storage.read_manifest(t["result"])["created"]
                   for t in first.having("finished")}
    assert done_before and first.having("not started")
    assert not storage.read_manifest(layout.sweep)["meta"]["complete"]

    second = run_sweep(cfg, spec, executor, layout.sweep, layout.tune)
    finished = {t["name"]: t for t in second.having("finished")}
    assert {(t["subset"]["strategy"], t["subset"]["fraction"]) for t in finished.values()} == {
        ("sas", 0.25), ("sas", 0.5), ("random", 0.25), ("random", 0.5)}
    for name, created in done_before.items():  # not redone: the same stored result
        assert storage.read_manifest(finished[name]["result"])["created"] == created
    assert second.trained == 4 - len(done_before)
    (failed,) = second.having("failed")
    assert failed["subset"]["strategy"] == "broken" and failed["error"]

    report = analyze(layout.sweep, cfg.analyze)
    num_train = {r.key: r.metrics.get("num_train") for r in read_sweep(layout.sweep)}
    assert num_train[("sas", 0.25, 0)] == 16  # a quarter of 2 x 32 train images
    files = write_report(report, layout.report)
    with open(files["table.csv"]) as f:
        rows = [(r["strategy"], float(r["fraction"])) for r in csv.DictReader(f)]
    assert rows == [("sas", 0.25), ("sas", 0.5), ("random", 0.25), ("random", 0.5)]
    assert storage.read_bytes(files[PLOT_FILE])[:4] == b"\x89PNG"
    text = render(report)
    assert "FAILED broken f=0.25 seed=0" in text
    assert "no full-data baseline finished" in text

