"""`sas-ray pipeline` on tiny data with each SSL method (local executor, no Ray): the proxy
and every trial train with ``train.method``, their checkpoints record it, the embed stage
reads the proxy's encoder whatever the method, and the report is written; with
``sweep.methods`` every cell is trained with each method and reported per method."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from sas_ray import config
from sas_ray.analysis.records import read_sweep
from sas_ray.core.methods import METHODS, load_method
from sas_ray.core.models.checkpoint import load_encoder, read_checkpoint
from sas_ray.io import storage
from sas_ray.io.artifacts import encoder_file
from sas_ray.pipeline import run_pipeline


@pytest.mark.parametrize("method", list(METHODS))
def test_tiny_pipeline_with_each_method(method: str, tmp_path: Path,
                                        tiny_run: dict[str, object]) -> None:
    overrides = {**tiny_run, "select.strategies": "random", "sweep.fractions": "0.5",
                 "run.storage": str(tmp_path), "run.executor": "local", "train.method": method,
                 "method.moco.queue_size": 32}
    layout = run_pipeline(config.load(overrides=overrides))
    encoders = sorted(p for p in storage.list_files(layout.root)
                      if p.endswith("/encoder.pt") and "/checkpoint_epoch-" not in p)
    assert len(encoders) == 3  # the proxy and the two trials (random at 0.5, full)
    for path in encoders:
        payload = read_checkpoint(path)
        assert payload["method"]["name"] == method
        assert payload["method"]["params"] == config.method_settings(config.load(
            overrides=overrides))
        assert type(load_method(path)).name == method
        assert load_encoder(path).spec == payload["spec"]
    trials = read_sweep(layout.sweep)
    assert sorted(t.strategy for t in trials) == ["full", "random"]
    for trial in trials:
        assert trial.status == "finished" and math.isfinite(trial.metrics["loss"]), trial
        assert 0 <= trial.metrics["linear_acc"] <= 100
    assert Path(layout.report, "table.md").is_file()


def test_tiny_pipeline_sweeps_two_methods(tmp_path: Path, tiny_run: dict[str, object]) -> None:
    """--sweep.methods simclr,byol: one proxy (simclr), every cell trained with each method;
    the proxy's run is the simclr full-data trial only; the report has a row per method."""
    overrides = {**tiny_run, "select.strategies": "random", "sweep.fractions": "0.5",
                 "run.storage": str(tmp_path), "run.executor": "local",
                 "sweep.methods": "simclr,byol"}
    layout = run_pipeline(config.load(overrides=overrides))
    assert read_checkpoint(encoder_file(layout.proxy))["method"]["name"] == "simclr"
    trials = storage.read_json(next(p for p in storage.list_files(layout.sweep)
                                    if p.endswith("/trials.json")))
    by_cell = {(t["subset"]["method"], t["subset"]["strategy"]): t for t in trials}
    assert sorted(by_cell) == [("byol", "full"), ("byol", "random"), ("simclr", "full"),
                               ("simclr", "random")]
    for (method, strategy), t in by_cell.items():
        payload = read_checkpoint(f"{t['run']}/encoder.pt")
        assert payload["method"]["name"] == method, (method, strategy)
        assert ("/proxy-run/" in t["run"]) == ((method, strategy) == ("simclr", "full"))
        assert ("-byol-" in t["name"]) == (method == "byol")
    records = read_sweep(layout.sweep)
    assert all(r.finished and math.isfinite(r.metrics["loss"]) for r in records), records
    with open(Path(layout.report, "table.csv")) as f:
        rows = [(r["method"], r["strategy"]) for r in csv.DictReader(f)]
    assert rows == [("simclr", "random"), ("simclr", "full"), ("byol", "random"),
                    ("byol", "full")]
    table = [[c.strip() for c in line.split("|")[1:3]]
             for line in Path(layout.report, "table.md").read_text().splitlines()
             if line.startswith("| ")]
    assert table[:2] == [["strategy", "method"], ["random", "simclr"]]
    assert ["full", "byol"] in table
