"""The sweep over (SSL method, strategy, latent method, fraction, seed): train on each
subset with each method, evaluate it, store the result; trials run on an executor (Ray Tune,
or a local loop).

Grid: cells ``{"method", "strategy", "latent", "fraction", "ranking", "train_fingerprint",
"fingerprint"}`` - per SSL method of ``sweep.methods`` (default: ``train.method`` alone),
every ranking of the pipeline (one per strategy and latent method; latent-free strategies
such as ``random`` only once, with ``latent`` None) at every ``sweep.fractions``, after
``{"strategy": "full", "fraction": 1.0}`` when ``sweep.include_full`` - times
``sweep.seeds``. The rankings are the same for every method (one proxy, trained with
``train.method``). ``train_fingerprint`` covers what the trained encoder depends on
(model/train settings with ``train.method`` = the cell's method and that method's
``method.<name>`` keys, the shards, the ranking, the fraction) and names the trial's run
directory together with the seed; ``fingerprint`` adds the evaluation settings and keys the
stored result. A trial is identified by what it computes, not by when it ran. Trials run
seed by seed (every cell's first seed before any cell's second), so a time budget that cuts
the sweep leaves as many cells as possible with a result.

Trial (:func:`run_trial`, Ray-free): cut the ranking at the fraction, ``executor.fit`` into
the trial's run directory, evaluate the final encoder (linear probe + kNN on the test split),
store the metrics as a ``trial`` artifact at ``runs/<run name>/result``.

Caching and resuming:

* a trial whose ``result`` artifact matches its fingerprint is not run again (so a new grid -
  e.g. one more strategy - runs only the new cells, and a rerun resumes a cut sweep);
* a trial whose training already finished (``metrics.json`` in its run directory) only
  evaluates: after a crash during evaluation, or after an evaluation setting changed;
* the full-data trial whose training is the proxy's (the proxy artifact says which training
  it is: ``meta.alias``) evaluates the proxy's run directory instead of training again;
* an interrupted training resumes from its last checkpoint in its run directory.

Committed output: the ``sweep`` artifact (``trials.json``: every trial with its status,
run directory and result artifact), written before the trials start (all "not started")
and again when they end; ``meta.complete`` says whether every trial has a result.
``sweep.time_budget_min`` stops starting trials after that many minutes (finished ones are
kept; a rerun continues).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sas_ray.analysis.records import FINISHED, FULL, TIME_METRIC, TRIALS_FILE, label
from sas_ray.config import Config, from_dict, method_settings, result_settings
from sas_ray.core import machine
from sas_ray.errors import SasRayError
from sas_ray.executors.base import Executor, TrialOutcome
from sas_ray.io import storage

log = logging.getLogger(__name__)

TRIAL_STAGE = "trial"
SWEEP_STAGE = "sweep"
RESULT_FILE = "result.json"
# strategies whose ranking ignores the latent classes (hkmeans, dbp: their own clustering)
LATENT_FREE = frozenset({"random", "hkmeans", "dbp"})
SKIPPED = "skipped"  # metrics key of a trial that the time budget did not let start

# (strategy, latent method or None, fraction) -> (ranking URI, ranking fingerprint)
Rankings = Mapping[tuple[str, str | None, float], tuple[str, str]]
# (train fingerprint, seed) -> the run directory of that training elsewhere (the proxy's)
Aliases = Mapping[tuple[str, int], str]


# ---------------------------------------------------------------------------- grid
def train_settings(cfg: Config) -> dict[str, Any]:
    """The settings a trained encoder depends on (besides its data and seed)."""
    return {"model": result_settings(cfg.model), "train": result_settings(cfg.train),
            "method": method_settings(cfg), "image_size": cfg.data.image_size}


def train_fingerprint(cfg: Config, inputs: Mapping[str, Any]) -> str:
    """What a training run computes: :func:`train_settings` and its inputs (shards, ...)."""
    return storage.fingerprint({**train_settings(cfg), **inputs})


def train_methods(cfg: Config) -> list[str]:
    """The SSL methods swept: ``sweep.methods``, or ``train.method``."""
    return list(dict.fromkeys(cfg.sweep.methods or [cfg.train.method]))


def trained_with(cfg: Config, method: str) -> Config:
    """``cfg`` with ``train.method`` = ``method`` (its settings: ``method.<method>``)."""
    out = copy.deepcopy(cfg)
    out.train.method = method
    return out


def _cell(cfg: Config, strategy: str, latent: str | None, fraction: float,
          ranking: str | None, inputs: dict[str, Any]) -> dict[str, Any]:
    """A grid cell trained as ``cfg`` says (its ``train.method`` is the cell's method)."""
    train_fp = train_fingerprint(cfg, inputs)
    return {"method": cfg.train.method, "strategy": strategy, "latent": latent,
            "fraction": float(fraction), "ranking": ranking, "train_fingerprint": train_fp,
            "fingerprint": storage.fingerprint({"train": train_fp,
                                                "eval": result_settings(cfg.eval)})}


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The distinct fractions, sorted; an error for an empty list or one outside (0, 1]."""
    if not fractions:
        raise SasRayError("sweep.fractions is empty; pass e.g. --sweep.fractions 0.2,0.5")
    for f in fractions:
        if not 0 < f <= 1:
            raise SasRayError(f"sweep fraction {f} is out of range (0, 1]; pass fractions such "
                              "as --sweep.fractions 0.2,0.5")
    return sorted(set(fractions))


def latent_methods(cfg: Config) -> list[str]:
    """The latent-class methods swept: ``sweep.latent_methods``, or ``latent.method``."""
    return list(dict.fromkeys(cfg.sweep.latent_methods or [cfg.latent.method]))


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


def make_cells(cfg: Config, shards: Mapping[str, Any], rankings: Rankings
               ) -> list[dict[str, Any]]:
    """Grid cells per method of :func:`train_methods`: the full-data cell when
    ``sweep.include_full``, then one per entry of ``rankings``. ``shards`` is the manifest of
    the shards trained on."""
    check_subset_sizes(cfg, num_train_images(shards))
    shards_fp = shards["fingerprint"]
    if FULL in {strategy for strategy, _, _ in rankings}:
        raise SasRayError(f"'{FULL}' names the full-data baseline, not a strategy; remove it "
                          "from select.strategies and set sweep.include_full")
    cells = []
    for method in train_methods(cfg):
        mcfg = trained_with(cfg, method)
        cells += [full_cell(mcfg, shards_fp)] if cfg.sweep.include_full else []
        cells += [_cell(mcfg, strategy, latent, fraction, uri, {
            "shards": shards_fp, "ranking": ranking_fp, "fraction": float(fraction)})
            for (strategy, latent, fraction), (uri, ranking_fp) in rankings.items()]
    if not cells:
        raise SasRayError("the sweep has no cells; set select.strategies or sweep.include_full")
    return cells


def full_cell(cfg: Config, shards_fp: str) -> dict[str, Any]:
    """The full-data baseline cell: every train image, no ranking."""
    return _cell(cfg, FULL, None, 1.0, None, {"shards": shards_fp})


def num_train_images(shards: Mapping[str, Any]) -> int:
    """Train images of a shards artifact, from its manifest."""
    return int(shards["meta"]["splits"].get("train", {}).get("images", 0))


def seeds_of(cfg: Config) -> list[int]:
    """The distinct ``sweep.seeds``, sorted; an error when there are none."""
    if not cfg.sweep.seeds:
        raise SasRayError("sweep.seeds is empty; pass e.g. --sweep.seeds 0,1,2")
    return sorted(set(cfg.sweep.seeds))


def run_name(cell: Mapping[str, Any], seed: int, base_method: str) -> str:
    """``sas-f0.30-s0-1a2b3c4d``, ``sas-byol-f0.30-s0-5e6f7a8b``: readable, and unique per
    trained encoder (evaluation settings are not part of it: changing them re-evaluates
    without retraining). The method is named when it is not ``base_method`` (``train.method``,
    the proxy's): those trials keep the names a one-method sweep gives them, so adding a
    method to ``sweep.methods`` (or dropping ``train.method`` from it) renames, and so
    retrains, nothing."""
    key = storage.fingerprint({"cell": cell["train_fingerprint"], "seed": seed})[:8]
    method = "" if cell["method"] == base_method else f"-{cell['method']}"
    return f"{cell['strategy']}{method}-f{cell['fraction']:.2f}-s{seed}-{key}"


def ranking_uri(root: str, latent: str | None, strategy: str, fraction: float | None) -> str:
    """``root/<latent>/<strategy>`` (``root/<strategy>`` for latent-free strategies), plus
    ``/f0.30`` for a ranking made for one fraction."""
    uri = storage.join(root, *([latent] if latent else []), strategy)
    return uri if fraction is None else storage.join(uri, f"f{fraction:.4g}")


@dataclass
class SweepSpec:
    """Everything a trial needs (JSON-serialisable)."""

    data: str  # shards URI
    runs: str  # trial runs and results go to runs/<run name>/
    cells: list[dict[str, Any]]
    seeds: list[int]
    config: dict[str, Any]  # Config.to_dict()
    fingerprint: str = ""
    deadline: float | None = None  # wall-clock time (time.time()) after which no trial starts

    def __post_init__(self) -> None:
        self.fingerprint = storage.fingerprint(
            {"cells": [c["fingerprint"] for c in self.cells], "seeds": self.seeds,
             "runs": self.runs})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sweep_spec(cfg: Config, shards_uri: str, shards: Mapping[str, Any], rankings: Rankings,
               runs: str) -> SweepSpec:
    """The sweep of ``cfg`` over the shards at ``shards_uri`` (``shards``: their manifest)."""
    return SweepSpec(data=shards_uri, runs=runs, cells=make_cells(cfg, shards, rankings),
                     seeds=seeds_of(cfg), config=cfg.to_dict())


def plan_trials(spec: SweepSpec, aliases: Aliases | None = None) -> list[dict[str, Any]]:
    """Every trial's parameters, seed by seed: ``name``, ``subset`` (the cell), ``seed``,
    ``run`` (its run directory: ``runs/<name>``, or the run that ``aliases`` maps its
    (train fingerprint, seed) to), ``result`` (its result artifact) and ``fingerprint``
    (that artifact's, when it is this trial's)."""
    trials = []
    for seed in spec.seeds:
        for cell in spec.cells:
            name = run_name(cell, seed, spec.config["train"]["method"])
            own = storage.join(spec.runs, name)
            trials.append({"name": name, "subset": cell, "seed": seed,
                           "run": (aliases or {}).get((cell["train_fingerprint"], seed), own),
                           "result": storage.join(own, "result"),
                           "fingerprint": result_fingerprint(cell, seed)})
    return trials


# ---------------------------------------------------------------------------- trial
def _result_config(cell: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cell[k] for k in ("strategy", "latent", "fraction", "fingerprint")}


def result_fingerprint(cell: Mapping[str, Any], seed: int) -> str:
    """The fingerprint of a trial's result artifact (locations are not part of it)."""
    return storage.stage_fingerprint(TRIAL_STAGE, _result_config(cell), {}, seed)


def read_trial_result(uri: str, fingerprint: str) -> dict[str, Any] | None:
    """The stored metrics at ``uri`` if they are the trial's (``fingerprint``), else None."""
    if not storage.is_fresh(uri, fingerprint):
        return None
    (path,) = storage.artifact_files(uri)
    return storage.read_json(path)


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


def train_and_evaluate(executor: Executor, cfg: Config, data: str, cell: Mapping[str, Any],
                       out: str) -> dict[str, Any]:
    """Train on the cell's subset with ``executor.fit`` (unless ``out`` holds a finished
    training), evaluate the final encoder; flat metrics."""
    from sas_ray.io.artifacts import subset_ids
    from sas_ray.stages.evaluate import evaluate_checkpoint

    ids = None if cell["ranking"] is None else subset_ids(cell["ranking"], cell["fraction"],
                                                          data)
    summary = completed_fit(out)
    reused = summary is not None
    host = machine.describe()
    summary = summary or executor.fit(cfg, data, out, ids, "train")
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
        "machine": {**{k: v for k, v in host.items() if k != "load"},
                    "load_before": host["load"], "load_after": machine.load(),
                    "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
    }


def run_trial(params: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """One trial (the executors' trial function): its stored result, else train, evaluate and
    store it; ``{"skipped": ...}`` without doing anything once ``spec["deadline"]`` passed."""
    from sas_ray.executors import get_executor

    cell, seed = params["subset"], int(params["seed"])
    stored = read_trial_result(params["result"], params["fingerprint"])
    if stored is not None:
        return stored
    if spec["deadline"] is not None and time.time() > spec["deadline"]:
        return {SKIPPED: "sweep.time_budget_min"}
    cfg = trained_with(from_dict(spec["config"]), cell["method"])
    cfg.run.seed = seed
    executor = get_executor(cfg)
    try:
        metrics = train_and_evaluate(executor, cfg, spec["data"], cell, params["run"])
    finally:
        executor.close()
    with storage.write_artifact(params["result"], TRIAL_STAGE, config=_result_config(cell),
                                seed=seed) as w:
        storage.write_json_atomic(storage.join(w.dir, RESULT_FILE), metrics)
        w.meta.update(name=params["name"], run=params["run"])
    log.debug("trial %s: linear probe %.1f%%, kNN %.1f%% (%s)", params["name"],
             metrics["linear_acc"], metrics["knn_acc"],
             "evaluated a finished training" if metrics["reused_training"]
             else f"trained {metrics[TIME_METRIC]:.0f} s")
    return metrics


# ---------------------------------------------------------------------------- driver
def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class SweepProgress(threading.Thread):
    """While the trials run (on any executor), one log line each time another trial has its
    result: trials done of all, that trial's accuracy, time elapsed and an ETA (elapsed per
    trial done x trials left). Polls the trials' result artifacts every ``every_s``."""

    def __init__(self, trials: Sequence[Mapping[str, Any]], every_s: float = 2.0) -> None:
        super().__init__(daemon=True, name="sweep-progress")
        self.trials, self.every_s = list(trials), every_s
        self.methods = len({t["subset"]["method"] for t in self.trials})
        self.latents = len({t["subset"]["latent"] for t in self.trials if t["subset"]["latent"]})
        self.done: set[str] = set()
        self.stop = threading.Event()
        self.start_time = time.perf_counter()

    def __enter__(self) -> SweepProgress:
        if self.trials:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.poll()
        self.poll()

    def poll(self) -> None:
        for t in self.trials:
            if t["name"] in self.done:
                continue
            metrics = read_trial_result(t["result"], t["fingerprint"])
            if metrics is None:
                continue
            self.done.add(t["name"])
            n, total = len(self.done), len(self.trials)
            elapsed = time.perf_counter() - self.start_time
            eta = f", ETA {_duration(elapsed / n * (total - n))}" if n < total else ""
            cell = t["subset"]
            what = label(cell["strategy"], cell["latent"], self.latents > 1)
            what = f"{cell['method']} {what}" if self.methods > 1 else what
            log.info("sweep: %d/%d trials done - %s %.0f%%: linear probe %.1f%%, kNN %.1f%% "
                     "(%s elapsed%s)", n, total, what, 100 * cell["fraction"],
                     metrics["linear_acc"], metrics["knn_acc"], _duration(elapsed), eta)


@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep`: the listing committed in the sweep artifact."""

    uri: str
    trials: list[dict[str, Any]]  # plan_trials entries with "status" and "error"
    seconds: float
    trained: int = 0

    def having(self, status: str) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["status"] == status]

    @property
    def complete(self) -> bool:
        return all(t["status"] == FINISHED for t in self.trials)


def _status(outcome: TrialOutcome) -> str:
    if outcome.error is not None:
        return "failed"
    if outcome.metrics is None:
        return "not started"
    return SKIPPED if SKIPPED in outcome.metrics else FINISHED


def commit_sweep(uri: str, spec: SweepSpec, trials: list[dict[str, Any]]) -> None:
    """Commit the ``sweep`` artifact at ``uri``: the trial listing, ``meta.complete``."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    with storage.write_artifact(uri, SWEEP_STAGE, config={"grid": spec.fingerprint}) as w:
        storage.write_json_atomic(storage.join(w.dir, TRIALS_FILE), trials)
        w.meta.update(complete=counts.get(FINISHED, 0) == len(trials), counts=counts,
                      cells=len(spec.cells), seeds=spec.seeds, data=spec.data)


def sweep_fingerprint(spec: SweepSpec) -> str:
    """The fingerprint a committed sweep artifact of ``spec`` has."""
    return storage.stage_fingerprint(SWEEP_STAGE, {"grid": spec.fingerprint}, {}, None)


def run_sweep(cfg: Config, spec: SweepSpec, executor: Executor, uri: str, experiment: str, *,
              aliases: Aliases | None = None, callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run every trial of ``spec`` that has no stored result on ``executor`` and commit the
    sweep artifact at ``uri`` (``experiment``: the executor's own records, e.g. Tune's)."""
    start = time.perf_counter()
    if cfg.sweep.time_budget_min is not None:
        spec = dataclasses.replace(spec, deadline=time.time() + 60 * cfg.sweep.time_budget_min)
    trials = plan_trials(spec, aliases)
    for t in trials:
        done = storage.is_fresh(t["result"], t["fingerprint"])
        t.update(status=FINISHED if done else "not started", error=None)
    pending = [t for t in trials if t["status"] != FINISHED]
    commit_sweep(uri, spec, trials)
    log.info("sweep: %d trials (%d cells x %d seeds), %d to run on the %s executor", len(trials),
             len(spec.cells), len(spec.seeds), len(pending), executor.name)
    params = [{k: t[k] for k in ("name", "subset", "seed", "run", "result", "fingerprint")}
              for t in pending]
    with SweepProgress(pending):
        outcomes = executor.run_trials(partial(run_trial, spec=spec.to_json()), params,
                                       experiment, callbacks=callbacks)
    trained = 0
    for t, outcome in zip(pending, outcomes, strict=True):
        t.update(status=_status(outcome), error=outcome.error)
        trained += int(t["status"] == FINISHED
                       and not outcome.metrics.get("reused_training", True))
    commit_sweep(uri, spec, trials)
    return SweepResult(uri=uri, trials=trials, seconds=time.perf_counter() - start,
                       trained=trained)


def summary_lines(result: SweepResult) -> list[str]:
    lines = [f"sweep: {len(result.having(FINISHED))} of {len(result.trials)} trials finished "
             f"in {result.seconds:.0f} s -> {result.uri}"]
    lines += [f"  FAILED {t['name']}: {t['error']}" for t in result.having("failed")]
    lines += [f"  {status}: {t['name']}" for status in (SKIPPED, "not started")
              for t in result.having(status)]
    return lines


def raise_if_incomplete(result: SweepResult) -> None:
    """One error line for failed or unfinished trials (after their results were shown)."""
    if failed := result.having("failed"):
        raise SasRayError(f"{len(failed)} trial(s) failed (first: {failed[0]['name']}: "
                          f"{failed[0]['error']}); fix the cause and rerun: finished trials are "
                          "kept, failed ones retried")
    if not result.complete:
        left = len(result.trials) - len(result.having(FINISHED))
        why = " (sweep.time_budget_min)" if result.having(SKIPPED) else ""
        raise SasRayError(f"the sweep stopped with {left} trial(s) unfinished{why}; rerun the "
                          "same command to resume it")
