"""Ray Tune sweep over (strategy, fraction, seed): train SimCLR on each subset, evaluate it.

Grid: ``subset`` runs over cells ``{"strategy", "fraction", "ranking", "train_fingerprint",
"fingerprint"}`` (every strategy x ``sweep.fractions``, plus ``{"strategy": "full",
"fraction": 1.0}`` when ``sweep.include_full``) and ``seed`` over ``sweep.seeds``; both are
``tune.grid_search`` axes, so Tune runs their product. ``train_fingerprint`` covers what the
trained encoder depends on (model/train settings, the shards, the ranking, the fraction) and
names the trial's run directory together with the seed; ``fingerprint`` adds the evaluation
settings and keys the stored result. A trial is identified by what it computes, not by when
it ran.

Trial (:func:`run_trial`, a Tune *function* trainable, Train V2 interop): it cuts the
ranking at the fraction, builds a TorchTrainer through :func:`sas_ray.executors.ray.train.fit`
on ``train.num_workers`` workers, evaluates the final encoder (linear probe + kNN on the test
split, :func:`sas_ray.stages.evaluate.evaluate_checkpoint`), stores the metrics as a ``trial``
artifact in ``runs/<run name>/result`` and reports them with ``ray.tune.report``.

Caching and resuming:

* a trial whose ``result`` artifact matches its fingerprint reports it without training (so
  a new grid - e.g. one more strategy - retrains only the new cells);
* a trial whose training already finished (``runs/<run name>/metrics.json``) only evaluates:
  after a crash during evaluation, after an evaluation setting changed, or when the
  pipeline's proxy run was this very training (the full-data trial);
* an interrupted sweep (Ctrl+C, crash) over the same grid is resumed with
  ``Tuner.restore``: finished trials are kept, errored ones retried;
* an interrupted *trial* resumes its Train run from its last checkpoint (the Train run is
  named after the trial, so a retried trial finds it).

Resources: a trial's Tune function only waits on its Train controller and then evaluates,
so it reserves ``sweep.trial_cpus`` (default 0: no core); its workers reserve
``train.num_workers x train.cpus_per_worker`` CPUs (or one GPU each). Trials in flight are
capped (:func:`max_concurrent_trials`) so that the workers of all running trials fit the
cluster with one CPU left for Ray Data's read tasks: when trainer workers hold every CPU,
the reads they wait for cannot be scheduled and nested Tune + Train + Data stalls (measured
on 2 CPUs with two 1-CPU trials: 440 s of a 460 s trial spent waiting).

Failures: a trial that raises is retried ``sweep.max_failures`` times, then reported as
failed (error line in the sweep result, the analysis table and ``sas-ray status``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray.tune

from sas_ray.analysis.report import (
    FULL,
    SPEC_FILE,
    TIME_METRIC,
    TrialRecord,
    last_line,
    read_experiment,
)
from sas_ray.config import Config, from_dict
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

TRIAL_STAGE = "trial"
RESULT_FILE = "result.json"


# ---------------------------------------------------------------------------- grid
def train_settings(cfg: Config) -> dict[str, Any]:
    """The settings a trained encoder depends on (besides its data and seed)."""
    train = dataclasses.asdict(cfg.train)
    for key in ("max_failures", "checkpoint_every", "record_ids", "knn_every", "knn_images",
                "cpus_per_worker"):
        train.pop(key)  # bookkeeping and scheduling: the trained encoder does not change
    return {"model": dataclasses.asdict(cfg.model), "train": train,
            "image_size": cfg.data.image_size}


def _cell(cfg: Config, strategy: str, fraction: float, ranking: str | None,
          inputs: dict[str, Any]) -> dict[str, Any]:
    train_fp = storage.fingerprint({**train_settings(cfg), **inputs})
    return {"strategy": strategy, "fraction": float(fraction), "ranking": ranking,
            "train_fingerprint": train_fp,
            "fingerprint": storage.fingerprint({"train": train_fp,
                                                "eval": dataclasses.asdict(cfg.eval)})}


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The distinct fractions, sorted; an error for an empty list or one outside (0, 1]."""
    if not fractions:
        raise SasRayError("sweep.fractions is empty; pass e.g. --sweep.fractions 0.2,0.5")
    for f in fractions:
        if not 0 < f <= 1:
            raise SasRayError(f"sweep fraction {f} is out of range (0, 1]; pass fractions such "
                              "as --sweep.fractions 0.2,0.5")
    return sorted(set(fractions))


def check_subset_sizes(cfg: Config, num_train: int) -> None:
    """Every swept fraction of ``num_train`` images must fill one training batch."""
    from sas_ray.core.selection.ranking import subset_size

    small = [f for f in check_fractions(cfg.sweep.fractions)
             if subset_size(f, num_train) < cfg.train.batch_size]
    if small:
        raise SasRayError(f"fraction {small[0]:g} keeps {subset_size(small[0], num_train)} of "
                          f"{num_train} train images, less than one batch of "
                          f"{cfg.train.batch_size}; raise --sweep.fractions or lower "
                          "--train.batch_size")


def make_cells(cfg: Config, shards: Mapping[str, Any],
               rankings: Mapping[tuple[str, float], tuple[str, str]]) -> list[dict[str, Any]]:
    """Grid cells: one per (strategy, fraction) of ``rankings`` (-> (ranking URI, its manifest
    fingerprint)), plus the full-data cell when ``sweep.include_full``. ``shards`` is the
    manifest of the shards trained on."""
    check_subset_sizes(cfg, num_train_images(shards))
    shards_fp = shards["fingerprint"]
    cells = []
    for (strategy, fraction), (uri, ranking_fp) in rankings.items():
        if strategy == FULL:
            raise SasRayError(f"'{FULL}' names the full-data baseline, not a strategy; remove it "
                              "from select.strategies and set sweep.include_full")
        cells.append(_cell(cfg, strategy, fraction, uri, {
            "shards": shards_fp, "ranking": ranking_fp, "fraction": float(fraction)}))
    if cfg.sweep.include_full:
        cells.append(full_cell(cfg, shards_fp))
    if not cells:
        raise SasRayError("the sweep has no cells; set select.strategies or sweep.include_full")
    return cells


def full_cell(cfg: Config, shards_fp: str) -> dict[str, Any]:
    """The full-data baseline cell: every train image, no ranking."""
    return _cell(cfg, FULL, 1.0, None, {"shards": shards_fp})


def num_train_images(shards: Mapping[str, Any]) -> int:
    """Train images of a shards artifact, from its manifest."""
    return int(shards["meta"]["splits"].get("train", {}).get("images", 0))


def seeds_of(cfg: Config) -> list[int]:
    """The distinct ``sweep.seeds``, sorted; an error when there are none."""
    if not cfg.sweep.seeds:
        raise SasRayError("sweep.seeds is empty; pass e.g. --sweep.seeds 0,1,2")
    return sorted(set(cfg.sweep.seeds))


def run_name(cell: Mapping[str, Any], seed: int) -> str:
    """``sas-f0.30-s0-1a2b3c4d``: readable, and unique per trained encoder (evaluation
    settings are not part of it: changing them re-evaluates without retraining)."""
    key = storage.fingerprint({"cell": cell["train_fingerprint"], "seed": seed})[:8]
    return f"{cell['strategy']}-f{cell['fraction']:.2f}-s{seed}-{key}"


@dataclass
class SweepSpec:
    """Everything a trial needs (JSON-serialisable; stored as ``SPEC_FILE`` in the experiment)."""

    data: str  # shards URI
    runs: str  # trial runs and results go to runs/<run name>/
    cells: list[dict[str, Any]]
    seeds: list[int]
    config: dict[str, Any]  # Config.to_dict()
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.fingerprint = storage.fingerprint(
            {"cells": [c["fingerprint"] for c in self.cells], "seeds": self.seeds,
             "runs": self.runs})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sweep_spec(cfg: Config, shards_uri: str, shards: Mapping[str, Any],
               rankings: Mapping[tuple[str, float], tuple[str, str]], runs: str) -> SweepSpec:
    """The sweep of ``cfg`` over the shards at ``shards_uri`` (``shards``: their manifest)."""
    return SweepSpec(data=shards_uri, runs=runs, cells=make_cells(cfg, shards, rankings),
                     seeds=seeds_of(cfg), config=cfg.to_dict())


# ---------------------------------------------------------------------------- trial
def read_trial_result(uri: str, cell: Mapping[str, Any], seed: int) -> dict[str, Any] | None:
    """The stored metrics of a finished trial, or None if there are none for this cell/seed."""
    fp = storage.stage_fingerprint(TRIAL_STAGE, dict(cell), {}, seed)
    if not storage.is_fresh(uri, fp):
        return None
    return storage.read_json(storage.join(uri, storage.require_manifest(uri)["files"][0]))


def completed_fit(out: str) -> dict[str, Any] | None:
    """The summary of a finished ``fit`` into ``out`` (its ``metrics.json``, written last), or
    None. A run directory is named after everything its training depends on, so a summary
    there belongs to this very training: e.g. a trial that crashed while evaluating, or the
    proxy run when it equals the full-data trial. Its checkpoint is the one in ``out``, however
    the path was spelled when it was written (e.g. relative to another working directory)."""
    from sas_ray.core.models.checkpoint import ENCODER_FILE

    uri = storage.join(out, "metrics.json")
    if not storage.exists(uri):
        return None
    return {**storage.read_json(uri), "checkpoint": storage.join(out, ENCODER_FILE)}


def train_and_evaluate(cfg: Config, data: str, cell: Mapping[str, Any], out: str
                       ) -> dict[str, Any]:
    """Train on the cell's subset (Ray Train), evaluate the final encoder; flat metrics."""
    from sas_ray.executors.ray.train import fit
    from sas_ray.io.artifacts import subset_ids
    from sas_ray.stages.evaluate import evaluate_checkpoint

    ids = None if cell["ranking"] is None else subset_ids(cell["ranking"], cell["fraction"])
    summary = completed_fit(out)
    reused = summary is not None
    summary = summary or fit(cfg, data, out, train_ids=ids, name="train")
    start = time.perf_counter()
    ev = evaluate_checkpoint(summary["checkpoint"], data, cfg)
    history = summary["history"]
    return {
        "linear_acc": float(ev["linear_acc"]), "knn_acc": float(ev["knn_acc"]),
        TIME_METRIC: float(history[-1]["train_seconds"]) if history else summary["seconds"],
        "fit_time_s": float(summary["seconds"]),
        "startup_time_s": float(summary["startup_seconds"]),
        "eval_time_s": time.perf_counter() - start,
        "num_train": len(ids) if ids is not None else None,
        "images_per_epoch": int(summary["num_images"]),
        "epochs": int(summary["metrics"].get("epoch", cfg.train.epochs)),
        "loss": float(summary["metrics"].get("loss", math.nan)),
        "checkpoint": summary["checkpoint"],
        "reused_training": reused,
    }


def run_trial(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune function trainable: one (strategy, fraction, seed); reports its metrics once."""
    cell, seed = params["subset"], int(params["seed"])
    cfg = from_dict(spec["config"])
    cfg.run.seed = seed
    out = storage.join(spec["runs"], run_name(cell, seed))
    result_uri = storage.join(out, "result")
    cached = read_trial_result(result_uri, cell, seed)
    if cached is not None:
        ray.tune.report({**cached, "cached": True})
        return
    metrics = train_and_evaluate(cfg, spec["data"], cell, out)
    with storage.write_artifact(result_uri, TRIAL_STAGE, config=dict(cell), seed=seed) as w:
        storage.write_json_atomic(storage.join(w.dir, RESULT_FILE), metrics)
        w.meta.update(strategy=cell["strategy"], fraction=cell["fraction"], seed=seed)
    ray.tune.report({**metrics, "cached": False})


# ---------------------------------------------------------------------------- resources
def max_concurrent_trials(cfg: Config, cpus: float, gpus: float, trials: int) -> int:
    """Trials in flight such that the workers of every running trial fit the cluster
    (``gpus``: GPUs the trials' workers use, 0 on CPU), one CPU stays free for Ray Data's read
    tasks (on clusters with 2+ CPUs), and ``sweep.max_concurrent`` (if set) holds."""
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker + cfg.sweep.trial_cpus
    if per_trial > cpus:
        raise SasRayError(f"one trial needs {per_trial:g} CPUs (train.num_workers x "
                          f"train.cpus_per_worker + sweep.trial_cpus) but the cluster has "
                          f"{cpus:g}; lower --train.num_workers or --train.cpus_per_worker")
    free = cpus - 1 if cpus >= 2 else cpus
    n = math.floor(free / per_trial + 1e-9) if per_trial > 0 else trials
    if gpus:
        n = min(n, math.floor(gpus / cfg.train.num_workers))
    if cfg.sweep.max_concurrent:
        n = min(n, cfg.sweep.max_concurrent)
    return max(1, min(n, trials))


def trial_bundle(cfg: Config) -> dict[str, float]:
    """What a trial's Tune function reserves. With ``sweep.trial_cpus`` 0 it holds memory only
    (Tune needs a non-empty bundle): it waits on its workers, it does not compute alongside."""
    if cfg.sweep.trial_cpus > 0:
        return {"cpu": cfg.sweep.trial_cpus}
    return {"cpu": 0, "memory": 256 * 2**20}


# ---------------------------------------------------------------------------- driver
def _error_line(trial: Any) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path, errors="replace") as f:
            return last_line(f.read())
    return "no error file"


class TrialLog(ray.tune.Callback):
    """One log line per finished (or cached), retried and failed trial."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r, p = trial.last_result or {}, trial.config
        if "linear_acc" in r:
            how = ("stored result" if r.get("cached") else "evaluated a finished training"
                   if r.get("reused_training") else f"trained {r[TIME_METRIC]:.0f} s")
            log.info("trial %s f=%.2f seed=%s: linear probe %.1f%%, kNN %.1f%% (%s)",
                     p["subset"]["strategy"], p["subset"]["fraction"], p["seed"],
                     r["linear_acc"], r["knn_acc"], how)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = trial.config
        log.warning("trial %s f=%.2f seed=%s failed (%s); retrying", p["subset"]["strategy"],
                    p["subset"]["fraction"], p["seed"], _error_line(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        p = trial.config
        log.error("trial %s f=%.2f seed=%s FAILED after %d attempt(s): %s",
                  p["subset"]["strategy"], p["subset"]["fraction"], p["seed"],
                  trial.num_failures, _error_line(trial))


@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep`: records of every trial of the grid."""

    experiment: str
    records: list[TrialRecord]
    spec: dict[str, Any]
    restored: bool
    seconds: float
    missing: list[tuple[str, float, int]] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialRecord]:
        return [r for r in self.records if r.status == "ERROR"]

    @property
    def finished(self) -> list[TrialRecord]:
        return [r for r in self.records if r.finished]

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing


def _trial_dirname(trial: Any) -> str:
    p = trial.config
    return f"{run_name(p['subset'], p['seed'])}-{trial.trial_id}"


def _same_grid(experiment: str, spec: SweepSpec) -> bool:
    uri = storage.join(experiment, SPEC_FILE)
    return storage.exists(uri) and storage.read_json(uri).get("fingerprint") == spec.fingerprint


@contextlib.contextmanager
def _quiet_tune(quiet: bool) -> Iterator[None]:
    """Silence Tune's console reporter and error log (TrialLog reports each trial instead)."""
    if not quiet:
        yield
        return
    tune_log = logging.getLogger("ray.tune")
    level, output = tune_log.level, os.environ.get("RAY_AIR_NEW_OUTPUT")
    tune_log.setLevel(logging.CRITICAL)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0
    try:
        yield
    finally:
        tune_log.setLevel(level)
        if output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT")
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = output


def run_sweep(cfg: Config, spec: SweepSpec, experiment: str, *,
              callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run (or resume) the Tune experiment at ``experiment`` (local or s3://) for ``spec``.

    Same grid as the experiment already there: ``Tuner.restore`` (finished trials kept,
    errored and unfinished ones rerun). Another grid: the old experiment is replaced, and
    trials whose results are stored under ``spec.runs`` report them without training.
    ``callbacks`` are extra ``ray.tune.Callback`` objects.
    """
    from sas_ray.executors.ray.session import cluster_cpus, cluster_gpus, ensure_ray, want_gpu

    ensure_ray(cfg.run)
    start = time.perf_counter()
    fs, path = storage.filesystem(experiment)  # Tune gets the same filesystem (s3fs on S3)
    parent, name = path.rstrip("/").rsplit("/", 1)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, spec=spec.to_json()), trial_bundle(cfg))
    trials = len(spec.cells) * len(spec.seeds)
    gpus = cluster_gpus() if want_gpu(cfg.train.use_gpu) else 0.0
    concurrent = max_concurrent_trials(cfg, cluster_cpus(), gpus, trials)
    restored = _same_grid(experiment, spec) and ray.tune.Tuner.can_restore(
        path, storage_filesystem=fs)
    if restored:
        log.info("resuming the sweep at %s (finished trials are kept)", experiment)
        tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_errored=True,
                                       storage_filesystem=fs)
    else:
        if storage.exists(experiment):
            log.info("replacing the Tune experiment at %s: another grid, or it never saved its "
                     "state (stored trial results are reused)", experiment)
            storage.delete(experiment)
        storage.write_json_atomic(storage.join(experiment, SPEC_FILE), spec.to_json())
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"subset": ray.tune.grid_search(spec.cells),
                         "seed": ray.tune.grid_search(spec.seeds)},
            tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True,
                                            trial_dirname_creator=_trial_dirname,
                                            trial_name_creator=_trial_dirname),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=parent, storage_filesystem=fs, verbose=0,
                failure_config=ray.tune.FailureConfig(max_failures=cfg.sweep.max_failures),
                callbacks=[TrialLog(), *callbacks]))
    log.info("sweep: %d trials (%d cells x %d seeds), up to %d at a time -> %s", trials,
             len(spec.cells), len(spec.seeds), concurrent, experiment)
    with _quiet_tune(not log.isEnabledFor(logging.DEBUG)):
        tuner.fit()
    records, _ = read_experiment(experiment)
    done = {r.key for r in records if r.finished}
    expected = [(c["strategy"], round(float(c["fraction"]), 6), s)
                for c in spec.cells for s in spec.seeds]
    missing = [k for k in expected if k not in done and k not in
               {r.key for r in records if r.status == "ERROR"}]
    return SweepResult(experiment=experiment, records=records, spec=spec.to_json(),
                       restored=restored, seconds=time.perf_counter() - start, missing=missing)


def sweep_rankings(cfg: Config, rankings_root: str) -> dict[tuple[str, float], tuple[str, str]]:
    """(strategy, fraction) -> (ranking URI, fingerprint) for ``select.strategies`` x
    ``sweep.fractions``, from the pipeline layout ``rankings/<strategy>[/f<fraction>]``."""
    from sas_ray.core.selection.registry import is_nested

    out = {}
    for strategy in cfg.select.strategies:
        for fraction in check_fractions(cfg.sweep.fractions):
            uri = ranking_uri(rankings_root, strategy, None if is_nested(strategy, cfg.select)
                              else fraction)
            out[(strategy, fraction)] = (uri, storage.require_manifest(uri, "ranking")
                                         ["fingerprint"])
    return out


def ranking_uri(root: str, strategy: str, fraction: float | None) -> str:
    """``root/<strategy>`` for nested strategies, ``root/<strategy>/f0.30`` otherwise."""
    uri = storage.join(root, strategy)
    return uri if fraction is None else storage.join(uri, f"f{fraction:.4g}")


def summary_lines(result: SweepResult) -> list[str]:
    total = len(result.spec["cells"]) * len(result.spec["seeds"])
    lines = [f"sweep: {len(result.finished)} of {total} trials finished in "
             f"{result.seconds:.0f} s -> {result.experiment}"]
    lines += [f"  FAILED {r.strategy} f={r.fraction:.2f} seed={r.seed}: {r.error}"
              for r in result.failed]
    lines += [f"  not finished: {s} f={f:.2f} seed={seed}" for s, f, seed in result.missing]
    return lines


def cli_sweep(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray sweep [--experiment DIR]``: the sweep over the rankings a pipeline run left in
    ``run.storage``; prints the table (``sas-ray analyze`` writes the report files)."""
    from sas_ray.analysis.report import analyze, render
    from sas_ray.pipeline import Layout, existing_shards

    layout = Layout(cfg.run.storage)
    shards_uri, shards = existing_shards(cfg, layout)
    spec = sweep_spec(cfg, shards_uri, shards, sweep_rankings(cfg, layout.rankings), layout.runs)
    result = run_sweep(cfg, spec, args.experiment or layout.sweep)
    print("\n".join(summary_lines(result)))
    print(render(analyze(result.experiment, cfg.analyze)), end="")
    raise_if_incomplete(result)


def raise_if_incomplete(result: SweepResult) -> None:
    """One error line for failed or unfinished trials (after their results were shown)."""
    if result.failed:
        first = result.failed[0]
        raise SasRayError(f"{len(result.failed)} trial(s) failed (first: {first.strategy} "
                          f"f={first.fraction:.2f} seed={first.seed}: {first.error}); fix the "
                          "cause and rerun: finished trials are kept, failed ones retried")
    if result.missing:
        raise SasRayError(f"the sweep stopped with {len(result.missing)} trial(s) unfinished; "
                          "rerun the same command to resume it")
