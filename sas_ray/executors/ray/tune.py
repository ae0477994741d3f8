"""Sweep trials as one Ray Tune experiment (the Ray executor's ``run_trials``).

Grid: one ``tune.grid_search`` axis ``trial`` over the trials' parameters; each trial is a
Tune *function* trainable (Train V2 interop) that calls the sweep's trial function, whose
training is a Ray Train run (:func:`sas_ray.executors.ray.train.fit`), and reports its metrics
once with ``ray.tune.report``.

Resuming: the experiment is started afresh on every call. Trials whose results are stored
are not passed in again (the sweep stage filters them), and an interrupted training resumes
from its last checkpoint in the trial's run directory, so ``Tuner.restore`` would keep nothing
more.

Resources: a trial's Tune function only waits on its Train controller and then evaluates,
so it reserves ``sweep.trial_cpus`` (default 0: no core); its workers reserve
``train.num_workers x train.cpus_per_worker`` CPUs (or one GPU each). Trials in flight are
capped (:func:`max_concurrent_trials`) so that the workers of all running trials fit the
cluster with one CPU left for Ray Data's read tasks: when trainer workers hold every CPU,
the reads they wait for cannot be scheduled and nested Tune + Train + Data stalls (measured
on 2 CPUs with two 1-CPU trials: 440 s of a 460 s trial spent waiting).

Failures: a trial that raises is retried ``sweep.max_failures`` times, then returned with
its error line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ray.tune

from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.executors.base import TrialFn, TrialOutcome, last_line
from sas_ray.io import storage

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------- trials
def tune_trial(config: dict[str, Any], fn: TrialFn) -> None:
    """The Tune function trainable: one trial, its metrics reported once."""
    ray.tune.report(fn(config["trial"]))


def _error_line(trial: Any) -> str:
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path, errors="replace") as f:
            return last_line(f.read())
    return "no error file"


class TrialLog(ray.tune.Callback):
    """One log line per finished, retried and failed trial."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.debug("trial %s done", trial.config["trial"]["name"])  # the sweep logs progress

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.warning("trial %s failed (%s); retrying", trial.config["trial"]["name"],
                    _error_line(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.error("trial %s FAILED after %d attempt(s): %s", trial.config["trial"]["name"],
                  trial.num_failures, _error_line(trial))


def _trial_dirname(trial: Any) -> str:
    return f"{trial.config['trial']['name']}-{trial.trial_id}"


def _params(result: Any) -> dict[str, Any]:
    """A Result's trial parameters; Tune leaves its config empty for a trial that failed
    before its first report, so then they are read from the trial's ``params.json``."""
    if result.config:
        return result.config["trial"]
    with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
        return json.loads(f.read())["trial"]


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


def run_trials(cfg: Config, fn: TrialFn, trials: Sequence[dict[str, Any]], experiment: str,
               callbacks: Sequence[Any] = ()) -> list[TrialOutcome]:
    """Run the trials as a Tune experiment at ``experiment`` (local or s3://, replaced when
    present); ``callbacks`` are extra ``ray.tune.Callback`` objects."""
    from sas_ray.executors.ray.session import cluster_cpus, cluster_gpus, ensure_ray, want_gpu

    if not trials:
        return []
    ensure_ray(cfg.run)
    if storage.exists(experiment):
        storage.delete(experiment)
    fs, path = storage.filesystem(experiment)  # Tune gets the same filesystem (s3fs on S3)
    parent, name = path.rstrip("/").rsplit("/", 1)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(tune_trial, fn=fn),
                                        trial_bundle(cfg))
    gpus = cluster_gpus() if want_gpu(cfg.train.use_gpu) else 0.0
    concurrent = max_concurrent_trials(cfg, cluster_cpus(), gpus, len(trials))
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"trial": ray.tune.grid_search(list(trials))},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname,
                                        trial_name_creator=_trial_dirname),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=parent, storage_filesystem=fs, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            callbacks=[TrialLog(), *callbacks]))
    log.info("Tune: %d trials, up to %d at a time -> %s", len(trials), concurrent, experiment)
    with _quiet_tune(not log.isEnabledFor(logging.DEBUG)):
        grid = tuner.fit()
    by_name: dict[str, TrialOutcome] = {}
    for result in grid:
        params = _params(result)
        error = last_line(str(result.error)) if result.error is not None else None
        metrics = dict(result.metrics) if result.metrics and error is None else None
        by_name[params["name"]] = TrialOutcome(params, metrics=metrics, error=error)
    return [by_name.get(p["name"], TrialOutcome(p)) for p in trials]
