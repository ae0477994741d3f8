"""`sas-ray pipeline` on tiny data with each SSL method (local executor, no Ray): the proxy
and every trial train with ``train.method``, their checkpoints record it, the embed stage
reads the proxy's encoder whatever the method, and the report is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sas_ray import config
from sas_ray.analysis.records import read_sweep
from sas_ray.core.methods import METHODS, load_method
from sas_ray.core.models.checkpoint import load_encoder, read_checkpoint
from sas_ray.io import storage
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
