"""`sas-ray pipeline` end to end on tiny synthetic data with local Ray and local files (the
laptop flow; tests/integration/test_jobs.py runs the cluster flow on S3), and its caching: a
second run redoes nothing (not even starting a trial), a changed select.strategies reruns only
the new ranking, the new strategy's trial and the report; `sas-ray status` tells what is
done."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from sas_ray import config
from sas_ray.analysis.report import read_experiment
from sas_ray.cli import main
from sas_ray.io import storage
from sas_ray.pipeline import State, run_pipeline, status_lines

pytestmark = pytest.mark.ray

def stage_lines(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """stage -> "cached" | "ran" from this run's "stage X: ..." log lines."""
    out = {}
    for rec in caplog.records:
        if m := re.match(r"stage (\S+): (cached|ran)", rec.getMessage()):
            out[m.group(1)] = m.group(2)
    caplog.clear()
    return out


def test_pipeline_caches_every_stage(ray_session: Any, tmp_path: Path,
                                     tiny_run: dict[str, object],
                                     caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="sas_ray")
    root = str(tmp_path / "run")
    overrides = {**tiny_run, "select.strategies": "random", "sweep.fractions": "0.5",
                 "run.storage": root}
    layout = run_pipeline(config.load(overrides=overrides))
    assert stage_lines(caplog) == {s: "ran" for s in (
        "shards", "proxy", "embeddings", "partition", "rankings/random", "sweep", "report")}
    printed = capsys.readouterr().out
    assert "random" in printed and "report:" in printed
    for name in ("table.md", "table.csv", "savings.csv", "accuracy_vs_fraction.png"):
        assert (tmp_path / "run" / "report" / name).stat().st_size > 0, name
    state = State(layout).stages
    assert all(state[s]["seconds"] > 0 for s in ("proxy", "embeddings", "sweep"))
    assert state["sweep"]["complete"] and state["sweep"]["trials"] == 2
    # proxy.epochs == train.epochs: the proxy run is the full-data trial, trained once
    records = {r.strategy: r.metrics for r in read_experiment(layout.sweep)[0]}
    assert records["full"]["reused_training"] and not records["random"]["reused_training"]

    # 2nd run through the CLI: everything cached, no trial started, same report
    table = storage.read_bytes(storage.join(root, "report", "table.md"))
    argv = ["pipeline"] + [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    assert main(argv) == 0
    assert set(stage_lines(caplog).values()) == {"cached"}
    assert State(layout).stages["report"]["status"] == "cached"
    assert storage.read_bytes(storage.join(root, "report", "table.md")) == table

    # one more strategy: only its ranking and trial run (random's result is reused)
    cfg = config.load(overrides={**overrides, "select.strategies": "random,sas"})
    run_pipeline(cfg)
    lines = stage_lines(caplog)
    assert lines == {"shards": "cached", "proxy": "cached", "embeddings": "cached",
                     "partition": "cached", "rankings/random": "cached", "rankings/sas": "ran",
                     "sweep": "ran", "report": "ran"}
    records, _ = read_experiment(layout.sweep)
    assert {r.strategy: r.metrics["cached"] for r in records} == {
        "random": True, "sas": False, "full": True}
    assert State(layout).stages["sweep"]["trained"] == 1

    text = "\n".join(status_lines(root))
    assert "sweep trials (3): 3 finished" in text
    assert re.search(r"proxy\s+done\s+fp [0-9a-f]{8}", text), text
    assert main(["status", root]) == 0 and "rankings/sas" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nothing")]) == 2


def test_bad_sweep_settings_fail_before_any_work(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "run"
    assert main(["pipeline", "--run.storage", str(root), "--sweep.fractions", "0.5,1.5"]) == 2
    assert "out of range (0, 1]" in capsys.readouterr().err
    assert not (root / "shards").exists()
    assert main(["pipeline", "--run.storage", str(root), "--select.strategies", "nope"]) == 2
    assert "unknown selection strategy 'nope'" in capsys.readouterr().err
    assert not (root / "shards").exists()
