"""Sweep planning and the sweep driver without Ray: grid cells, fingerprints, run names, the
trial order and aliases, the latent-method and SSL-method axes, how many Tune trials run at
once, the checks that fail before any trial starts, and a sweep on the local executor (training
replaced by a stub) that fails a trial, resumes from stored results and stops at its time
budget."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sas_ray import config
from sas_ray.analysis.records import read_sweep
from sas_ray.config import Config
from sas_ray.core.methods import METHODS
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray.tune import max_concurrent_trials
from sas_ray.io import storage
from sas_ray.pipeline import Layout, ranking_plan
from sas_ray.stages import sweep
from sas_ray.stages.pool import stratified
from sas_ray.stages.sweep import (
    SweepSpec,
    check_subset_sizes,
    completed_fit,
    make_cells,
    plan_trials,
    raise_if_incomplete,
    run_name,
    run_sweep,
    sweep_spec,
)

ROOT = Path(__file__).resolve().parents[2]
SHARDS = {"fingerprint": "shards-fp", "meta": {"splits": {"train": {"images": 1000}}}}
RANKINGS = {("sas", "labels", 0.2): ("r/sas", "fp-sas"),
            ("sas", "labels", 0.5): ("r/sas", "fp-sas"),
            ("random", None, 0.2): ("r/random", "fp-random"),
            ("random", None, 0.5): ("r/random", "fp-random")}


def small_cfg(**overrides: object) -> Config:
    return config.load(overrides={"train.batch_size": 64, **overrides})


def test_cells_cover_the_grid_plus_full_data() -> None:
    cells = make_cells(small_cfg(), SHARDS, RANKINGS)
    assert [(c["strategy"], c["latent"], c["fraction"]) for c in cells] == [
        ("full", None, 1.0), *RANKINGS]
    assert cells[0]["ranking"] is None
    assert len({c["fingerprint"] for c in cells}) == len(cells)
    no_full = make_cells(small_cfg(**{"sweep.include_full": False}), SHARDS, RANKINGS)
    assert [c["strategy"] for c in no_full] == ["sas", "sas", "random", "random"]


def test_fingerprints_follow_what_a_trial_computes() -> None:
    base = {(c["strategy"], c["fraction"]): c["fingerprint"]
            for c in make_cells(small_cfg(), SHARDS, RANKINGS)}
    # bookkeeping settings do not change results, so they keep every stored trial
    same = make_cells(small_cfg(**{"train.max_failures": 7, "sweep.max_concurrent": 3,
                                   "analyze.tolerance": 2.0, "run.executor": "local",
                                   "train.cpus_per_worker": 0.5}), SHARDS, RANKINGS)
    assert {(c["strategy"], c["fraction"]): c["fingerprint"] for c in same} == base
    # a new ranking for one strategy changes only that strategy's cells
    changed = make_cells(small_cfg(), SHARDS, {**RANKINGS,
                                               ("sas", "labels", 0.2): ("r/sas", "new"),
                                               ("sas", "labels", 0.5): ("r/sas", "new")})
    moved = {(c["strategy"], c["fraction"]) for c in changed
             if c["fingerprint"] != base[(c["strategy"], c["fraction"])]}
    assert moved == {("sas", 0.2), ("sas", 0.5)}
    # training longer changes all of them
    longer = make_cells(small_cfg(**{"train.epochs": 9}), SHARDS, RANKINGS)
    assert all(c["fingerprint"] != base[(c["strategy"], c["fraction"])] for c in longer)
    # another evaluation changes every result, but not the trained encoders (run names)
    cell = make_cells(small_cfg(), SHARDS, RANKINGS)[1]
    probe = make_cells(small_cfg(**{"eval.knn_k": 20}), SHARDS, RANKINGS)[1]
    assert probe["fingerprint"] != cell["fingerprint"]
    assert run_name(probe, 0, "simclr") == run_name(cell, 0, "simclr")
    assert run_name(cell, 0, "simclr").startswith("sas-f0.20-s0-")
    assert run_name(cell, 0, "simclr") != run_name(cell, 1, "simclr")


def test_spec_fingerprint_is_the_grid() -> None:
    cells = make_cells(small_cfg(), SHARDS, RANKINGS)
    a = SweepSpec(data="d", runs="runs", cells=cells, seeds=[0, 1], config={})
    b = SweepSpec(data="d", runs="runs", cells=cells, seeds=[0, 1], config={"other": 1},
                  deadline=123.0)
    c = SweepSpec(data="d", runs="runs", cells=cells[1:], seeds=[0, 1], config={})
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_trials_run_seed_by_seed_and_the_proxy_alias() -> None:
    """Every cell's first seed before any second one; the full-data trial whose training is
    the proxy's (same train fingerprint and seed) runs in the proxy's run directory, its
    result still goes to runs/."""
    cells = make_cells(small_cfg(), SHARDS, RANKINGS)
    spec = SweepSpec(data="d", runs="/x/runs", cells=cells, seeds=[0, 1],
                     config=small_cfg().to_dict())
    full = cells[0]
    trials = plan_trials(spec, {(full["train_fingerprint"], 0): "/x/proxy-run/ab"})
    assert [(t["subset"]["strategy"], t["seed"]) for t in trials] == [
        *((c["strategy"], 0) for c in cells), *((c["strategy"], 1) for c in cells)]
    assert trials[0]["run"] == "/x/proxy-run/ab"
    assert trials[0]["result"] == f"/x/runs/{trials[0]['name']}/result"
    assert trials[5]["run"] == f"/x/runs/{trials[5]['name']}"  # seed 1: no alias
    assert len({t["name"] for t in trials}) == len(trials)


def test_latent_methods_are_a_sweep_axis() -> None:
    cfg = small_cfg(**{"sweep.latent_methods": "labels,kmeans", "sweep.fractions": "0.2,0.5",
                       "select.strategies": "sas,random,forgetting-least"})
    plan = [(s, latent, method, f) for s, latent, method, f, _ in ranking_plan(cfg)]
    assert plan == [("sas", "labels", "labels", None), ("random", None, "labels", None),
                    ("forgetting-least", "labels", "labels", None),
                    ("sas", "kmeans", "kmeans", None),
                    ("forgetting-least", "kmeans", "kmeans", None)]
    double = small_cfg(**{"select.double_greedy": True, "sweep.fractions": "0.2,0.5",
                          "select.strategies": "sas"})
    assert [(f, serves) for *_, f, serves in ranking_plan(double)] == [(0.2, [0.2]),
                                                                      (0.5, [0.5])]


def test_ssl_methods_are_a_sweep_axis() -> None:
    """sweep.methods: every cell once per method, each trained with its method (train
    fingerprints hold that method's section, and only that one's); the trials of train.method
    keep the names of a one-method sweep; the proxy's alias reaches only its own method's
    full-data trial."""
    grid = {"sweep.methods": "simclr,byol"}
    cells = make_cells(small_cfg(**grid), SHARDS, RANKINGS)
    one = make_cells(small_cfg(), SHARDS, RANKINGS)
    assert [(c["method"], c["strategy"], c["fraction"]) for c in cells] == [
        (m, c["strategy"], c["fraction"]) for m in ("simclr", "byol") for c in one]
    assert cells[:5] == one  # the simclr cells are those of a simclr-only sweep
    simclr, byol = cells[:5], cells[5:]
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(simclr, byol, strict=True))
    only_byol = make_cells(small_cfg(**{"sweep.methods": "byol"}), SHARDS, RANKINGS)
    assert only_byol == byol
    assert make_cells(small_cfg(**{"train.method": "byol"}), SHARDS, RANKINGS) == byol

    def moved(overrides: dict) -> set[str]:
        new = make_cells(small_cfg(**grid, **overrides), SHARDS, RANKINGS)
        return {c["method"] for c, old in zip(new, cells, strict=True)
                if c["train_fingerprint"] != old["train_fingerprint"]}

    assert moved({"method.byol.tau_base": 0.9}) == {"byol"}
    assert moved({"method.simclr.temperature": 0.2}) == {"simclr"}
    assert moved({"method.moco.queue_size": 32}) == set()  # not swept
    assert moved({"train.epochs": 9}) == {"simclr", "byol"}

    spec = sweep_spec(small_cfg(**grid), "d", SHARDS, RANKINGS, "/x/runs")
    full = {c["method"]: c for c in spec.cells if c["strategy"] == "full"}
    trials = plan_trials(spec, {(full["simclr"]["train_fingerprint"], 0): "/x/proxy-run/ab"})
    names = [t["name"] for t in trials]
    assert len(set(names)) == len(trials) == 10
    assert names[:5] == [t["name"] for t in plan_trials(sweep_spec(
        small_cfg(), "d", SHARDS, RANKINGS, "/x/runs"))]
    assert [n.split("-f")[0] for n in names[5:]] == [
        "full-byol", "sas-byol", "sas-byol", "random-byol", "random-byol"]
    assert [t["run"] == "/x/proxy-run/ab" for t in trials] == [True] + [False] * 9
    with pytest.raises(config.ConfigError, match=r"'sweep\.methods': 'byl' is not allowed"):
        small_cfg(**{"sweep.methods": "simclr,byl"})
    assert set(typing.get_args(config.MethodName)) == set(METHODS)  # the names load allows


def test_a_trial_trains_with_its_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """run_trial hands the executor a config whose train.method is the cell's."""
    seen: list[tuple[str, str]] = []

    def fake_train(executor: Any, cfg: Config, data: str, cell: dict, out: str) -> dict:
        seen.append((cell["method"], cfg.train.method))
        return {"linear_acc": 50.0, "knn_acc": 40.0, "train_time_s": 1.0,
                "reused_training": False}

    monkeypatch.setattr(sweep, "train_and_evaluate", fake_train)
    cfg = small_cfg(**{"run.executor": "local", "sweep.methods": "byol,simsiam",
                       "sweep.include_full": False})
    spec = sweep_spec(cfg, "d", SHARDS, RANKINGS, str(tmp_path / "runs"))
    result = run_sweep(cfg, spec, LocalExecutor(cfg), str(tmp_path / "sweep"), "tune")
    assert result.complete
    assert seen == [("byol", "byol")] * 4 + [("simsiam", "simsiam")] * 4
    assert {r.method for r in read_sweep(result.uri)} == {"byol", "simsiam"}


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
    with pytest.raises(SasRayError, match="names the full-data baseline"):
        make_cells(small_cfg(), SHARDS, {("full", None, 0.5): ("r", "fp")})


def test_the_builtin_defaults_are_the_quickstart() -> None:
    assert config.load(ROOT / "configs" / "quickstart.yaml") == Config()
    quick = Config()
    num_train = quick.data.synthetic_classes * quick.data.synthetic_train_per_class
    check_subset_sizes(quick, num_train)  # every default fraction trains on a full batch
    cifar = config.load(ROOT / "configs" / "cifar10_cpu.yaml")
    check_subset_sizes(cifar, 50_000)
    assert cifar.data.source.endswith("cifar10-jpeg.tar.gz")


@pytest.mark.parametrize("name", ["replicate_cifar10_cpu", "replicate_cifar10_gpu"])
def test_the_replication_configs_plan_the_decisive_comparison_first(name: str) -> None:
    """Each config is the first slice (docs/replication.md): full data, sas and random at 20%
    and 40% with labels as latent classes, 5 paired seeds; flags widen it later."""
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    check_subset_sizes(cfg, cfg.data.pool_size or 50_000)
    assert cfg.data.source.endswith("cifar10-jpeg.tar.gz")
    assert cfg.select.strategies == ["sas", "random"] and cfg.sweep.include_full
    assert cfg.sweep.latent_methods == ["labels"] and cfg.sweep.fractions == [0.2, 0.4]
    assert cfg.sweep.seeds == [0, 1, 2, 3, 4]
    assert {latent for _, latent, *_ in ranking_plan(cfg)} == {None, "labels"}
    if name.endswith("gpu"):
        assert (cfg.model.arch, cfg.model.width, cfg.data.pool_size) == ("resnet18", 1.0, None)
        assert cfg.run.executor == "local" and cfg.train.amp


def test_the_pool_is_stratified_and_seeded() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    rows = stratified(labels, 10, seed=0)
    assert np.bincount(labels[rows]).tolist() == [4, 3, 3]  # 10 = 3 x 3 + 1 for class 0
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert rows.tolist() == stratified(labels, 10, seed=0).tolist()
    assert rows.tolist() != stratified(labels, 10, seed=1).tolist()
    assert stratified(labels, 500, seed=0).tolist() == list(range(100))
    with pytest.raises(SasRayError, match=r"lower --data\.pool_size"):
        stratified(labels, 90, seed=0)  # 30 per class, class 2 has 20


def test_trials_get_absolute_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune runs each trial in a working directory of its own: a relative run.storage must
    reach the trials as absolute paths (S3 URIs stay as they are)."""
    monkeypatch.chdir(tmp_path)
    layout = Layout("outputs/run")
    rankings = {("sas", "labels", 0.2): (storage.join(layout.rankings, "sas"), "fp")}
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


def test_local_sweep_fails_resumes_and_stops_at_its_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[str] = []

    def fake_train(executor: Any, cfg: Config, data: str, cell: dict, out: str) -> dict:
        assert executor.name == "local" and cfg.run.seed in (0, 1)
        if cell["strategy"] == "random" and not (tmp_path / "fixed").exists():
            raise RuntimeError("bad ranking")
        trained.append(f"{cell['strategy']}-{cfg.run.seed}")
        return {"linear_acc": 50.0, "knn_acc": 40.0, "train_time_s": 1.0,
                "reused_training": False}

    monkeypatch.setattr(sweep, "train_and_evaluate", fake_train)
    cfg = small_cfg(**{"run.executor": "local", "sweep.max_failures": 1})
    spec = sweep_spec(cfg, "d", SHARDS, RANKINGS, str(tmp_path / "runs"))
    uri = str(tmp_path / "sweep")
    first = run_sweep(cfg, spec, LocalExecutor(cfg), uri, str(tmp_path / "tune"))
    assert sorted(trained) == ["full-0", "sas-0", "sas-0"]
    assert [t["status"] for t in first.trials] == ["finished", "finished", "finished", "failed",
                                                   "failed"]
    assert first.trained == 3 and "RuntimeError: bad ranking" in first.trials[3]["error"]
    with pytest.raises(SasRayError, match="2 trial"):
        raise_if_incomplete(first)
    assert not storage.read_manifest(uri)["meta"]["complete"]

    (tmp_path / "fixed").touch()  # a rerun trains only the failed trials
    trained.clear()
    second = run_sweep(cfg, spec, LocalExecutor(cfg), uri, str(tmp_path / "tune"))
    assert trained == ["random-0", "random-0"] and second.complete
    assert [r.status for r in read_sweep(uri)] == ["finished"] * 5

    # a second seed under a time budget that has run out: no trial starts, none is lost
    cfg = small_cfg(**{"run.executor": "local", "sweep.seeds": "0,1",
                       "sweep.time_budget_min": 1e-9})
    spec = sweep_spec(cfg, "d", SHARDS, RANKINGS, str(tmp_path / "runs"))
    trained.clear()
    third = run_sweep(cfg, spec, LocalExecutor(cfg), uri, str(tmp_path / "tune"))
    assert trained == [] and len(third.having("skipped")) == 5
    assert len(third.having("finished")) == 5
    with pytest.raises(SasRayError, match=r"5 trial\(s\) unfinished \(sweep.time_budget_min\)"):
        raise_if_incomplete(third)
