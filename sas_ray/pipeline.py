"""``sas-ray pipeline``: data -> proxy -> embeddings -> latent classes -> rankings -> sweep ->
report, every stage cached by the fingerprint of its settings and inputs.

Layout under ``run.storage`` (local or ``s3://``)::

    shards/               ingest (skipped when data.source already is a shards artifact)
    proxy/                proxy encoder (encoder.pt), unless proxy.checkpoint is given
    embeddings/           proxy embeddings of the train split
    partition/            latent classes
    rankings/<strategy>/  one ranking per strategy (non-nested ones: .../f<fraction>/)
    runs/<trial>/         Ray Train run, encoder and stored result of every sweep trial
    sweep/                the Ray Tune experiment (sas-ray analyze reads it)
    report/               table.md, table.csv, savings.csv, accuracy_vs_fraction.png
    pipeline.json         per stage: fingerprint, status, seconds, where its output is

A stage reruns only when its fingerprint changed: the stages of the other modules check
``storage.is_fresh`` themselves (their manifests are compared before and after the call),
the proxy, sweep and report stages here do the same with ``storage.stage_fingerprint``.
The sweep reuses every stored trial result, so a changed ``select.strategies`` retrains
only the new cells. Nothing starts Ray unless some stage has work to do.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sas_ray.analysis.report import (
    PLOT_FILE,
    analyze,
    print_report,
    read_experiment,
    report_files,
    write_report,
)
from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

STATE_FILE = "pipeline.json"
STAGES = ("shards", "proxy", "embeddings", "partition", "rankings", "sweep", "report")


@dataclass(frozen=True)
class Layout:
    """Where each stage's output lives under ``root`` (= ``run.storage``, made absolute)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", storage.absolute(self.root))

    def _at(self, name: str) -> str:
        return storage.join(self.root, name)

    shards = property(lambda self: self._at("shards"))
    proxy = property(lambda self: self._at("proxy"))
    proxy_runs = property(lambda self: self._at("proxy-run"))
    embeddings = property(lambda self: self._at("embeddings"))
    partition = property(lambda self: self._at("partition"))
    rankings = property(lambda self: self._at("rankings"))
    runs = property(lambda self: self._at("runs"))
    sweep = property(lambda self: self._at("sweep"))
    report = property(lambda self: self._at("report"))
    state = property(lambda self: self._at(STATE_FILE))


# ---------------------------------------------------------------------------- state
class State:
    """``pipeline.json``: the last outcome of every stage."""

    def __init__(self, layout: Layout) -> None:
        self.uri = layout.state
        self.stages: dict[str, dict[str, Any]] = (
            storage.read_json(self.uri).get("stages", {}) if storage.exists(self.uri) else {})

    def record(self, stage: str, *, fingerprint: str | None, uri: str, cached: bool,
               seconds: float, **extra: Any) -> None:
        """Store a stage's outcome and log one line: given, cached or ran in N s."""
        previous = self.stages.get(stage, {})
        entry = {"fingerprint": fingerprint, "uri": uri, "status": "cached" if cached else "ran",
                 "checked": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **extra}
        if cached and previous.get("fingerprint") == fingerprint:
            entry.update(seconds=previous.get("seconds"), finished=previous.get("finished"))
        else:
            entry.update(seconds=round(seconds, 2), finished=entry["checked"])
        self.stages[stage] = entry
        storage.write_json_atomic(self.uri, {"stages": self.stages})
        if extra.get("given"):
            log.info("stage %s: given (%s)", stage, uri)
        elif cached:
            log.info("stage %s: cached (fp %s)", stage, fingerprint[:8])
        else:
            log.info("stage %s: ran in %.1f s (fp %s)", stage, seconds, fingerprint[:8])


def _artifact_stage(state: State, stage: str, uri: str, run: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
    """Run a stage that checks its own freshness; it was cached if its manifest is unchanged."""
    before = storage.read_manifest(uri)
    start = time.perf_counter()
    manifest = run()
    state.record(stage, fingerprint=manifest["fingerprint"], uri=uri, cached=manifest == before,
                 seconds=time.perf_counter() - start)
    return manifest


# ---------------------------------------------------------------------------- stages
def given_shards(cfg: Config) -> dict[str, Any] | None:
    """The manifest of ``data.source`` when it already is a shards artifact, else None."""
    if cfg.data.source == "synthetic":
        return None
    manifest = storage.read_manifest(cfg.data.source)
    return manifest if manifest is not None and manifest.get("stage") == "shards" else None


def existing_shards(cfg: Config, layout: Layout) -> tuple[str, dict[str, Any]]:
    """(URI, manifest) of the shards a sweep trains on, without ingesting anything."""
    if (given := given_shards(cfg)) is not None:
        return storage.absolute(cfg.data.source), given
    return layout.shards, storage.require_manifest(layout.shards, "shards")


def shards_stage(cfg: Config, layout: Layout, state: State) -> tuple[str, dict[str, Any]]:
    """Ingest ``data.source`` into ``shards/`` - or use it as is when it is a shards artifact.
    Returns the shards' URI and manifest."""
    if (given := given_shards(cfg)) is not None:
        uri = storage.absolute(cfg.data.source)
        state.record("shards", fingerprint=given["fingerprint"], uri=uri, cached=True,
                     seconds=0.0, given=True)
        return uri, given
    from sas_ray.stages.ingest import ingest

    return layout.shards, _artifact_stage(state, "shards", layout.shards,
                                          lambda: ingest(cfg.data.source, layout.shards, cfg))


def proxy_config(cfg: Config) -> Config:
    """The training config of the proxy: the sweep's, for ``proxy.epochs`` epochs."""
    proxy = copy.deepcopy(cfg)
    proxy.train.epochs = cfg.proxy.epochs
    return proxy


def proxy_stage(cfg: Config, layout: Layout, state: State, shards_uri: str,
                shards: dict[str, Any]) -> str:
    """The proxy encoder file: ``proxy.checkpoint``, or a SimCLR run of ``proxy.epochs``.

    When that run is exactly the sweep's full-data trial of seed ``run.seed`` (same epochs,
    ``sweep.include_full``), it is trained in that trial's run directory, and the sweep
    then only evaluates it instead of training the same network twice.
    """
    if cfg.proxy.checkpoint:
        state.record("proxy", fingerprint=None, uri=cfg.proxy.checkpoint, cached=True,
                     seconds=0.0, given=True)
        return cfg.proxy.checkpoint
    from sas_ray.core.models.checkpoint import ENCODER_FILE
    from sas_ray.executors.ray.train import fit
    from sas_ray.stages.sweep import completed_fit, full_cell, run_name, train_settings

    pcfg = proxy_config(cfg)
    config = train_settings(pcfg)
    inputs = {"shards": shards["fingerprint"]}
    fp = storage.stage_fingerprint("proxy", config, inputs, cfg.run.seed)
    if storage.is_fresh(layout.proxy, fp):
        state.record("proxy", fingerprint=fp, uri=layout.proxy, cached=True, seconds=0.0)
        return _encoder_file(layout.proxy)
    start = time.perf_counter()
    shared = (cfg.sweep.include_full and cfg.proxy.epochs == cfg.train.epochs
              and cfg.run.seed in cfg.sweep.seeds)
    run_dir = (storage.join(layout.runs, run_name(full_cell(cfg, shards["fingerprint"]),
                                                  cfg.run.seed)) if shared
               else storage.join(layout.proxy_runs, fp[:8]))  # a rerun after a crash resumes
    summary = completed_fit(run_dir) or fit(pcfg, shards_uri, run_dir, name="train")
    with storage.write_artifact(layout.proxy, "proxy", config=config, inputs=inputs,
                                seed=cfg.run.seed) as w:
        storage.write_bytes_atomic(storage.join(w.dir, ENCODER_FILE),
                                   storage.read_bytes(summary["checkpoint"]))
        w.meta.update(epochs=pcfg.train.epochs, loss=summary["metrics"].get("loss"),
                      train_seconds=summary["seconds"], run=run_dir)
    if not shared:
        storage.delete(run_dir)
    state.record("proxy", fingerprint=fp, uri=layout.proxy, cached=False,
                 seconds=time.perf_counter() - start)
    return _encoder_file(layout.proxy)


def _encoder_file(uri: str) -> str:
    from sas_ray.core.models.checkpoint import ENCODER_FILE

    (path,) = [f for f in storage.artifact_files(uri) if f.endswith("/" + ENCODER_FILE)]
    return path


def ranking_stage(cfg: Config, layout: Layout, state: State
                  ) -> dict[tuple[str, float], tuple[str, str]]:
    """One ranking per strategy (per fraction for non-nested ones); -> the sweep's map."""
    from sas_ray.core.selection.registry import is_nested
    from sas_ray.stages.rank import rank
    from sas_ray.stages.sweep import check_fractions, ranking_uri

    out: dict[tuple[str, float], tuple[str, str]] = {}
    fractions = check_fractions(cfg.sweep.fractions)
    if not cfg.select.strategies:
        return out
    for strategy in dict.fromkeys(cfg.select.strategies):
        nested = is_nested(strategy, cfg.select)
        for fraction in [None] if nested else fractions:
            uri = ranking_uri(layout.rankings, strategy, fraction)
            manifest = _artifact_stage(
                state, f"rankings/{strategy}" + ("" if fraction is None else f"@{fraction:g}"),
                uri, lambda s=strategy, f=fraction, u=uri: rank(
                    cfg, layout.embeddings, layout.partition, s, u, fraction=f))
            for f in fractions if nested else [fraction]:
                out[(strategy, f)] = (uri, manifest["fingerprint"])
    return out


def sweep_stage(cfg: Config, layout: Layout, state: State, shards_uri: str,
                shards: dict[str, Any], rankings: dict[tuple[str, float], tuple[str, str]]
                ) -> tuple[str, Any]:
    """Run the Tune sweep unless the same grid already finished; -> (fingerprint, the
    ``SweepResult``, None when cached)."""
    from sas_ray.stages.sweep import run_sweep, summary_lines, sweep_spec

    spec = sweep_spec(cfg, shards_uri, shards, rankings, layout.runs)
    previous = state.stages.get("sweep", {})
    if previous.get("fingerprint") == spec.fingerprint and previous.get("complete") \
            and storage.exists(layout.sweep):
        state.record("sweep", fingerprint=spec.fingerprint, uri=layout.sweep, cached=True,
                     seconds=0.0, complete=True, trials=previous.get("trials"))
        return spec.fingerprint, None
    result = run_sweep(cfg, spec, layout.sweep)
    trained = sum(1 for r in result.finished
                  if not r.metrics.get("cached") and not r.metrics.get("reused_training"))
    state.record("sweep", fingerprint=spec.fingerprint, uri=layout.sweep, cached=False,
                 seconds=result.seconds, complete=result.complete,
                 trials=len(result.records), trained=trained, failed=len(result.failed))
    for line in summary_lines(result):
        log.info("%s", line)
    return spec.fingerprint, result


def report_stage(cfg: Config, layout: Layout, state: State, sweep_fp: str) -> None:
    """Analyse the sweep into ``report/`` and print it; the files are rewritten only when the
    sweep's results or the analyze settings changed."""
    start = time.perf_counter()
    report = analyze(layout.sweep, cfg.analyze)
    results = storage.fingerprint(report.cells.to_dict("records") +
                                  [r.error for r in report.failed] + report.missing)
    config, inputs = dataclasses.asdict(cfg.analyze), {"sweep": sweep_fp, "results": results}
    fp = storage.stage_fingerprint("report", config, inputs, None)
    cached = storage.is_fresh(layout.report, fp)
    if not cached:
        write_report(report, layout.report, title=cfg.run.name, config=config, inputs=inputs)
    state.record("report", fingerprint=fp, uri=layout.report, cached=cached,
                 seconds=time.perf_counter() - start)
    print_report(report, report_files(layout.report))


# ---------------------------------------------------------------------------- driver
def check_config(cfg: Config) -> None:
    """Fail on bad sweep/selection/report settings before any stage runs."""
    from sas_ray.analysis.report import METRICS
    from sas_ray.core.selection.registry import get_selector
    from sas_ray.stages.sweep import check_fractions, seeds_of

    check_fractions(cfg.sweep.fractions)
    seeds_of(cfg)
    for strategy in cfg.select.strategies:
        get_selector(strategy)
    if not cfg.select.strategies and not cfg.sweep.include_full:
        raise SasRayError("nothing to sweep: select.strategies is empty and sweep.include_full "
                          "is false; name a strategy, e.g. --select.strategies sas,random")
    if cfg.analyze.metric not in METRICS:
        raise SasRayError(f"analyze.metric '{cfg.analyze.metric}' is unknown; use one of "
                          f"{', '.join(METRICS)}")


def run_pipeline(cfg: Config) -> Layout:
    """Run every stage (reusing up-to-date outputs); print the report; return the layout."""
    from sas_ray.stages.embed import embed
    from sas_ray.stages.latent import partition
    from sas_ray.stages.sweep import check_subset_sizes, num_train_images, raise_if_incomplete

    check_config(cfg)
    layout = Layout(cfg.run.storage)
    storage.check_writable(layout.root)
    state = State(layout)
    start = time.perf_counter()
    shards_uri, shards = shards_stage(cfg, layout, state)
    check_subset_sizes(cfg, num_train_images(shards))
    proxy = proxy_stage(cfg, layout, state, shards_uri, shards)
    _artifact_stage(state, "embeddings", layout.embeddings,
                    lambda: embed(cfg, shards_uri, proxy, layout.embeddings))
    _artifact_stage(state, "partition", layout.partition,
                    lambda: partition(cfg, layout.embeddings, layout.partition))
    rankings = ranking_stage(cfg, layout, state)
    sweep_fp, result = sweep_stage(cfg, layout, state, shards_uri, shards, rankings)
    report_stage(cfg, layout, state, sweep_fp)
    log.info("pipeline finished in %.0f s", time.perf_counter() - start)
    if result is not None:
        raise_if_incomplete(result)  # after the report of what did finish
    return layout


def cli_pipeline(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray pipeline [--config FILE] [--section.key VALUE ...]``."""
    run_pipeline(cfg)


# ---------------------------------------------------------------------------- status
def status_lines(root: str) -> list[str]:
    """What is done under ``root``: stages (fingerprint, time, where), sweep trials, report."""
    layout = Layout(root)
    if not storage.exists(layout.state):
        raise SasRayError(f"{root} holds no sas-ray pipeline ({STATE_FILE} missing); pass the "
                          "run.storage of a pipeline run, e.g. `sas-ray status outputs`")
    state = State(layout)
    lines = [f"pipeline at {root}:"]
    order = [s for s in STAGES if s != "rankings"]
    order[order.index("sweep"):order.index("sweep")] = sorted(
        s for s in state.stages if s.startswith("rankings/"))
    for stage in order:
        entry = state.stages.get(stage)
        if entry is None:
            lines.append(f"  {stage:<22} not run")
            continue
        fp = entry["fingerprint"][:8] if entry.get("fingerprint") else "given"
        took = f"{entry['seconds']:.1f} s" if entry.get("seconds") is not None else "-"
        present = "" if storage.exists(entry["uri"]) else "  (output missing!)"
        done = "partial" if entry.get("complete") is False else "done"
        lines.append(f"  {stage:<22} {done:<7}  fp {fp:<8}  {took:>8}  {entry['uri']}{present}")
    if storage.exists(layout.sweep):
        records, spec = read_experiment(layout.sweep)
        counts = Counter("finished" if r.finished else r.status.lower() for r in records)
        expected = len(spec["cells"]) * len(spec["seeds"]) if spec else len(records)
        counts["not started"] = max(0, expected - len(records))
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if n)
        lines.append(f"sweep trials ({expected}): {summary or 'none'}")
        lines += [f"  FAILED {r.strategy} f={r.fraction:.2f} seed={r.seed}: {r.error}"
                  for r in records if r.status == "ERROR"]
        lines += [f"  {r.status.lower()} {r.strategy} f={r.fraction:.2f} seed={r.seed}"
                  for r in records if not r.finished and r.status != "ERROR"]
    if storage.read_manifest(layout.report) is not None:
        files = report_files(layout.report)
        lines.append(f"report: {files['table.md']}, {files[PLOT_FILE]}")
    return lines


def cli_status(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray status [STORAGE]`` (default: run.storage)."""
    print("\n".join(status_lines(args.storage or cfg.run.storage)))
