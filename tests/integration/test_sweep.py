"""The Tune sweep end to end on tiny synthetic data: 2 strategies x 2 fractions, interrupted
after its first finished trial and resumed, with a strategy whose ranking is corrupt (its
trial fails, is retried and reported); then the analysis report. (The full-data baseline
trial runs in test_pipeline, where it reuses the proxy's training.)"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray.tune

from sas_ray import config
from sas_ray.analysis.report import PLOT_FILE, analyze, render, write_report
from sas_ray.core.models import model_from_config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.io import storage
from sas_ray.pipeline import Layout, State, proxy_stage, ranking_stage, shards_stage
from sas_ray.stages.sweep import SweepSpec, make_cells, run_name, run_sweep, run_trial, seeds_of

pytestmark = pytest.mark.ray

SWEEP = {"select.strategies": "sas,random", "sweep.fractions": "0.25,0.5",
         "sweep.max_failures": 1, "sweep.include_full": False}


class InterruptOnce(ray.tune.Callback):
    """Sends Ctrl+C to this process when the first trial finishes, once per marker file
    (Tune saves callbacks with the experiment, so a restored sweep carries this one too)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_sweep_resumes_reports_failures_and_analyzes(ray_session: Any, tmp_path: Path,
                                                     tiny_run: dict[str, object]) -> None:
    cfg = config.load(overrides={**tiny_run, **SWEEP, "run.storage": str(tmp_path / "run")})
    layout = Layout(cfg.run.storage)
    state = State(layout)
    proxy = str(tmp_path / "proxy.pt")
    save_encoder(proxy, model_from_config(cfg), cfg)  # untrained proxy: selection still runs
    cfg.proxy.checkpoint = proxy
    shards_uri, shards = shards_stage(cfg, layout, state)
    proxy_stage(cfg, layout, state, shards_uri, shards)
    from sas_ray.stages.embed import embed
    from sas_ray.stages.latent import partition

    embed(cfg, shards_uri, proxy, layout.embeddings)
    partition(cfg, layout.embeddings, layout.partition)
    rankings = ranking_stage(cfg, layout, state)
    # a strategy whose ranking file got corrupted after it was committed: its trials fail
    uri, fp = rankings[("random", 0.25)]
    broken = str(tmp_path / "broken")
    manifest = storage.require_manifest(uri)
    for f in manifest["files"]:
        os.makedirs(os.path.dirname(os.path.join(broken, f)), exist_ok=True)
        Path(broken, f).write_bytes(b"not parquet")
    storage.write_json_atomic(storage.join(broken, "manifest.json"), manifest)
    rankings[("broken", 0.25)] = (broken, "broken-" + fp)

    spec = SweepSpec(data=shards_uri, runs=layout.runs,
                     cells=make_cells(cfg, shards, rankings),
                     seeds=seeds_of(cfg), config=cfg.to_dict())
    assert len(spec.cells) == 5  # sas, random x 0.25, 0.5; broken x 0.25

    first = run_sweep(cfg, spec, layout.sweep,
                      callbacks=[InterruptOnce(str(tmp_path / "interrupted"))])
    assert not first.restored and first.missing, "the sweep should have been interrupted"
    done_before = {r.key: r.metrics["timestamp"] for r in first.finished}
    assert done_before

    second = run_sweep(cfg, spec, layout.sweep)
    assert second.restored
    finished = {r.key: r for r in second.finished}
    assert set(finished) == {("sas", 0.25, 0), ("sas", 0.5, 0), ("random", 0.25, 0),
                             ("random", 0.5, 0)}
    for key, stamp in done_before.items():  # not redone: same report, not even from cache
        assert finished[key].metrics["timestamp"] == stamp
        assert finished[key].metrics["cached"] is False
    assert not second.missing
    (failed,) = second.failed
    assert failed.key == ("broken", 0.25, 0) and failed.error
    for r in finished.values():
        assert 0 <= r.metrics["linear_acc"] <= 100 and 0 <= r.metrics["knn_acc"] <= 100
        assert storage.exists(storage.join(layout.runs, run_name(
            next(c for c in spec.cells if c["strategy"] == r.strategy
                 and c["fraction"] == r.fraction), 0), "result", "manifest.json"))
    subset = finished[("sas", 0.25, 0)].metrics["num_train"]
    assert subset == 16  # a quarter of 2 x 32 train images

    report = analyze(layout.sweep, cfg.analyze)
    files = write_report(report, layout.report)
    with open(files["table.csv"]) as f:
        rows = [(r["strategy"], float(r["fraction"])) for r in csv.DictReader(f)]
    assert rows == [("sas", 0.25), ("sas", 0.5), ("random", 0.25), ("random", 0.5)]
    assert storage.read_bytes(files[PLOT_FILE])[:4] == b"\x89PNG"
    text = render(report)
    assert "FAILED broken f=0.25 seed=0" in text
    assert "no full-data baseline finished" in text

    # the Python API on Tune's own ResultGrid gives the same table
    grid = ray.tune.Tuner.restore(layout.sweep, trainable=run_trial).get_results()
    from_grid = analyze(grid, cfg.analyze)
    by_key = ["strategy", "fraction"]
    pd.testing.assert_frame_equal(
        from_grid.cells.sort_values(by_key).reset_index(drop=True),
        report.cells.sort_values(by_key).reset_index(drop=True))
    assert [r.key for r in from_grid.failed] == [("broken", 0.25, 0)]
