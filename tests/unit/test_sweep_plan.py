"""Sweep planning without a Ray cluster: grid cells, fingerprints, run names, how many trials
run at once, and the checks that fail before any trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from sas_ray import config
from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.pipeline import Layout
from sas_ray.stages.sweep import (
    SweepSpec,
    check_subset_sizes,
    completed_fit,
    make_cells,
    max_concurrent_trials,
    run_name,
    sweep_spec,
)

ROOT = Path(__file__).resolve().parents[2]
SHARDS = {"fingerprint": "shards-fp", "meta": {"splits": {"train": {"images": 1000}}}}
RANKINGS = {("sas", 0.2): ("r/sas", "fp-sas"), ("sas", 0.5): ("r/sas", "fp-sas"),
            ("random", 0.2): ("r/random", "fp-random"), ("random", 0.5): ("r/random", "fp-random")}


def small_cfg(**overrides: object) -> Config:
    return config.load(overrides={"train.batch_size": 64, **overrides})


def test_cells_cover_the_grid_plus_full_data() -> None:
    cells = make_cells(small_cfg(), SHARDS, RANKINGS)
    assert [(c["strategy"], c["fraction"]) for c in cells] == [*RANKINGS, ("full", 1.0)]
    assert cells[-1]["ranking"] is None
    assert len({c["fingerprint"] for c in cells}) == len(cells)
    no_full = make_cells(small_cfg(**{"sweep.include_full": False}), SHARDS, RANKINGS)
    assert [c["strategy"] for c in no_full] == ["sas", "sas", "random", "random"]


def test_fingerprints_follow_what_a_trial_computes() -> None:
    base = {(c["strategy"], c["fraction"]): c["fingerprint"]
            for c in make_cells(small_cfg(), SHARDS, RANKINGS)}
    # bookkeeping settings do not change results, so they keep every stored trial
    same = make_cells(small_cfg(**{"train.max_failures": 7, "sweep.max_concurrent": 3,
                                   "analyze.tolerance": 2.0}), SHARDS, RANKINGS)
    assert {(c["strategy"], c["fraction"]): c["fingerprint"] for c in same} == base
    # a new ranking for one strategy changes only that strategy's cells
    changed = make_cells(small_cfg(), SHARDS, {**RANKINGS, ("sas", 0.2): ("r/sas", "new"),
                                               ("sas", 0.5): ("r/sas", "new")})
    moved = {(c["strategy"], c["fraction"]) for c in changed
             if c["fingerprint"] != base[(c["strategy"], c["fraction"])]}
    assert moved == {("sas", 0.2), ("sas", 0.5)}
    # training longer changes all of them
    longer = make_cells(small_cfg(**{"train.epochs": 9}), SHARDS, RANKINGS)
    assert all(c["fingerprint"] != base[(c["strategy"], c["fraction"])] for c in longer)
    # another evaluation changes every result, but not the trained encoders (run names)
    cell = make_cells(small_cfg(), SHARDS, RANKINGS)[0]
    probe = make_cells(small_cfg(**{"eval.knn_k": 20}), SHARDS, RANKINGS)[0]
    assert probe["fingerprint"] != cell["fingerprint"]
    assert run_name(probe, 0) == run_name(cell, 0)
    assert run_name(cell, 0).startswith("sas-f0.20-s0-")
    assert run_name(cell, 0) != run_name(cell, 1)


def test_spec_fingerprint_is_the_grid() -> None:
    cells = make_cells(small_cfg(), SHARDS, RANKINGS)
    a = SweepSpec(data="d", runs="runs", cells=cells, seeds=[0, 1], config={})
    b = SweepSpec(data="d", runs="runs", cells=cells, seeds=[0, 1], config={"other": 1})
    c = SweepSpec(data="d", runs="runs", cells=cells[:-1], seeds=[0, 1], config={})
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize(("cpus", "gpus", "overrides", "expected"), [
    (2, 0, {}, 1),  # 1 worker x 1 CPU; one CPU kept free for Ray Data reads
    (2, 0, {"train.cpus_per_worker": 0.5}, 2),
    (16, 0, {}, 6),  # capped by the 6 trials of the grid
    (16, 0, {"train.num_workers": 2, "train.cpus_per_worker": 2}, 3),
    (16, 0, {"sweep.max_concurrent": 2}, 2),
    (16, 0, {"sweep.trial_cpus": 1}, 6),
    (8, 0, {"sweep.trial_cpus": 1}, 3),
    (32, 4, {"train.num_workers": 2}, 2),  # GPUs limit: 2 workers x 1 GPU per trial
    (1, 0, {}, 1),
])
def test_concurrency_fits_the_cluster(cpus: float, gpus: float, overrides: dict,
                                      expected: int) -> None:
    assert max_concurrent_trials(small_cfg(**overrides), cpus, gpus, trials=6) == expected


def test_a_trial_larger_than_the_cluster_is_an_error() -> None:
    with pytest.raises(SasRayError, match="one trial needs 4 CPUs"):
        max_concurrent_trials(small_cfg(**{"train.num_workers": 4}), 2, 0, trials=6)


def test_fractions_must_fill_a_batch() -> None:
    check_subset_sizes(small_cfg(**{"sweep.fractions": "0.1,0.5"}), 1000)  # 100 >= 64
    with pytest.raises(SasRayError, match=r"fraction 0\.05 keeps 50 of 1000 train images"):
        check_subset_sizes(small_cfg(**{"sweep.fractions": "0.05,0.5"}), 1000)
    with pytest.raises(SasRayError, match=r"out of range \(0, 1\]"):
        check_subset_sizes(small_cfg(**{"sweep.fractions": "0.5,1.5"}), 1000)
    with pytest.raises(SasRayError, match="names the full-data baseline"):
        make_cells(small_cfg(), SHARDS, {("full", 0.5): ("r", "fp")})


def test_the_builtin_defaults_are_the_quickstart() -> None:
    assert config.load(ROOT / "configs" / "quickstart.yaml") == Config()
    quick = Config()
    num_train = quick.data.synthetic_classes * quick.data.synthetic_train_per_class
    check_subset_sizes(quick, num_train)  # every default fraction trains on a full batch
    cifar = config.load(ROOT / "configs" / "cifar10_cpu.yaml")
    check_subset_sizes(cifar, 50_000)
    assert cifar.data.source.endswith("cifar10-jpeg.tar.gz")


def test_trials_get_absolute_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune runs each trial in a working directory of its own: a relative run.storage must
    reach the trials as absolute paths (S3 URIs stay as they are)."""
    monkeypatch.chdir(tmp_path)
    layout = Layout("outputs/run")
    rankings = {("sas", 0.2): (storage.join(layout.rankings, "sas"), "fp")}
    spec = sweep_spec(small_cfg(), layout.shards, SHARDS, rankings, layout.runs)
    paths = [spec.data, spec.runs, *(c["ranking"] for c in spec.cells if c["ranking"])]
    assert len(paths) == 3 and all(p.startswith(f"{tmp_path}/outputs/run/") for p in paths)
    assert Layout("s3://bucket/run").sweep == "s3://bucket/run/sweep"


def test_a_finished_training_is_found_where_it_is(tmp_path: Path) -> None:
    """The checkpoint of a finished run is its directory's encoder.pt, even when metrics.json
    spelled the path relative to the working directory of the process that trained it."""
    out = str(tmp_path / "runs" / "full")
    assert completed_fit(out) is None
    storage.write_json_atomic(f"{out}/metrics.json", {"checkpoint": "outputs/runs/full/encoder.pt",
                                                      "history": []})
    assert completed_fit(out)["checkpoint"] == f"{out}/encoder.pt"
