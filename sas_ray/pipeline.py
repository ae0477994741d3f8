"""``sas-ray pipeline``: data -> pool -> proxy -> embeddings -> latent classes -> rankings ->
sweep -> report, on the executor ``run.executor`` names (``ray``, or ``local``: no Ray import),
every stage cached by the fingerprint of its settings and inputs.

Layout under ``run.storage`` (local or ``s3://``)::

    shards/               ingest (skipped when data.source already is a shards artifact)
    pool/                 data.pool_size stratified train images + the other splits (if set)
    proxy/                proxy encoder (encoder.pt), unless proxy.checkpoint or a
                          pretrained proxy.encoder is given (then nothing is trained)
    proxy-run/<fp>/       the proxy's training run
    embeddings/           proxy embeddings of the train split
    partition/<method>/   latent classes, one per sweep.latent_methods (default latent.method)
    rankings/<method>/<strategy>/   one ranking per strategy and method (non-nested ones:
                          .../f<fraction>/; latent-free ones: rankings/<strategy>/)
    runs/<trial>/         training run and stored result (result/) of every sweep trial
    sweep/                the sweep artifact: every trial, its status and result
    tune/                 the Ray Tune experiment (ray executor only)
    report/               index.html (open it in a browser), its plots and galleries,
                          table.md, table.csv, tests.csv, savings.csv
    pipeline.json         per stage: fingerprint, status, seconds, where its output is

A stage reruns only when its fingerprint changed: the stage functions check
``storage.is_fresh`` themselves (their manifests are compared before and after the call).
The sweep reuses every stored trial result, so a changed ``select.strategies`` retrains
only the new cells. With the ray executor nothing starts Ray unless some stage has work.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sas_ray.analysis.records import read_sweep
from sas_ray.analysis.report import PAGE_FILE, analyze, render, report_files, trial_name
from sas_ray.config import Config
from sas_ray.core.models.encoders import EncoderRef
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor
from sas_ray.io import storage
from sas_ray.io.artifacts import encoder_file
from sas_ray.stages import proxy as proxy_mod
from sas_ray.stages.sweep import (
    LATENT_FREE,
    Rankings,
    SweepResult,
    check_fractions,
    check_subset_sizes,
    latent_methods,
    num_train_images,
    raise_if_incomplete,
    ranking_uri,
    run_sweep,
    summary_lines,
    sweep_fingerprint,
    sweep_spec,
)
from sas_ray.validate import validate

log = logging.getLogger(__name__)

STATE_FILE = "pipeline.json"
STAGES = ("shards", "pool", "proxy", "embeddings", "partition", "rankings", "sweep", "report")


@dataclass(frozen=True)
class Layout:
    """Where each stage's output lives under ``root`` (= ``run.storage``, made absolute)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", storage.absolute(self.root))

    def _at(self, name: str) -> str:
        return storage.join(self.root, name)

    shards = property(lambda self: self._at("shards"))
    pool = property(lambda self: self._at("pool"))
    proxy = property(lambda self: self._at("proxy"))
    proxy_runs = property(lambda self: self._at("proxy-run"))
    embeddings = property(lambda self: self._at("embeddings"))
    partitions = property(lambda self: self._at("partition"))
    rankings = property(lambda self: self._at("rankings"))
    runs = property(lambda self: self._at("runs"))
    sweep = property(lambda self: self._at("sweep"))
    tune = property(lambda self: self._at("tune"))
    report = property(lambda self: self._at("report"))
    state = property(lambda self: self._at(STATE_FILE))

    def partition(self, method: str) -> str:
        return storage.join(self.partitions, method)


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
        elif extra.get("pretrained"):
            log.info("stage %s: pretrained %s (weights sha %s), no training", stage,
                     extra["pretrained"], fingerprint[:12])
        elif cached:
            log.info("stage %s: cached (fp %s)", stage, fingerprint[:8])
        else:
            log.info("stage %s: ran in %.1f s (fp %s)", stage, seconds, fingerprint[:8])


def _artifact_stage(state: State, stage: str, uri: str, run: Callable[[], dict[str, Any]]
                    ) -> dict[str, Any]:
    """Run a stage that checks its own freshness; it was cached if its manifest is unchanged."""
    before = storage.read_manifest(uri)
    start = time.perf_counter()
    log.info("stage %s ...", stage, extra={"transient": True})  # a status line on a terminal
    manifest = run()
    state.record(stage, fingerprint=manifest["fingerprint"], uri=uri, cached=manifest == before,
                 seconds=time.perf_counter() - start)
    return manifest


# ---------------------------------------------------------------------------- data stages
def given_shards(cfg: Config) -> dict[str, Any] | None:
    """The manifest of ``data.source`` when it already is a shards artifact, else None."""
    if cfg.data.source == "synthetic":
        return None
    manifest = storage.read_manifest(cfg.data.source)
    return manifest if manifest is not None and manifest.get("stage") == "shards" else None


def existing_shards(cfg: Config, layout: Layout) -> tuple[str, dict[str, Any]]:
    """(URI, manifest) of the shards the stages after ingest read (the pool when
    ``data.pool_size`` is set), without computing anything."""
    if cfg.data.pool_size:
        return layout.pool, storage.require_manifest(layout.pool, "shards")
    if (given := given_shards(cfg)) is not None:
        return storage.absolute(cfg.data.source), given
    return layout.shards, storage.require_manifest(layout.shards, "shards")


def shards_stage(cfg: Config, layout: Layout, state: State, executor: Executor
                 ) -> tuple[str, dict[str, Any]]:
    """Ingest ``data.source`` into ``shards/`` - or use it as is when it is a shards artifact -
    then draw the pool when ``data.pool_size`` is set. Returns the URI and manifest of the
    shards that every later stage reads."""
    if (given := given_shards(cfg)) is not None:
        uri, manifest = storage.absolute(cfg.data.source), given
        state.record("shards", fingerprint=given["fingerprint"], uri=uri, cached=True,
                     seconds=0.0, given=True)
    else:
        from sas_ray.stages.ingest import ingest

        uri, manifest = layout.shards, _artifact_stage(
            state, "shards", layout.shards,
            lambda: ingest(cfg.data.source, layout.shards, cfg, executor=executor))
    if not cfg.data.pool_size:
        return uri, manifest
    from sas_ray.stages.pool import make_pool

    return layout.pool, _artifact_stage(state, "pool", layout.pool,
                                        lambda: make_pool(cfg, uri, manifest, layout.pool))


def proxy_stage(cfg: Config, layout: Layout, state: State, executor: Executor, shards_uri: str,
                shards: dict[str, Any]) -> tuple[str | EncoderRef, dict[str, Any] | None]:
    """(encoder, proxy manifest): ``proxy.checkpoint`` (no manifest), a pretrained
    ``proxy.encoder`` (no manifest, no training; recorded under its weights' sha256), or the
    proxy run's encoder file."""
    if cfg.proxy.checkpoint:
        state.record("proxy", fingerprint=None, uri=cfg.proxy.checkpoint, cached=True,
                     seconds=0.0, given=True)
        return cfg.proxy.checkpoint, None
    if (ref := proxy_mod.encoder_ref(cfg)) is not None:
        start = time.perf_counter()
        sha = proxy_mod.weights_sha256(ref)
        previous = state.stages.get("proxy", {}).get("fingerprint")
        state.record("proxy", fingerprint=sha, uri=ref.weights or ref.name,
                     cached=previous == sha, seconds=time.perf_counter() - start,
                     pretrained=ref.name)
        return ref, None
    manifest = _artifact_stage(state, "proxy", layout.proxy, lambda: proxy_mod.train_proxy(
        cfg, executor, shards_uri, shards, layout.proxy, layout.proxy_runs))
    return encoder_file(layout.proxy), manifest


# ---------------------------------------------------------------------------- selection
def method_config(cfg: Config, method: str) -> Config:
    """``cfg`` with ``latent.method`` = ``method``."""
    out = copy.deepcopy(cfg)
    out.latent.method = method
    return out


def ranking_plan(cfg: Config) -> list[tuple[str, str | None, str, float | None, list[float]]]:
    """The rankings the sweep needs: (strategy, latent method or None for latent-free ones,
    the method whose partition it ranks within, the fraction it is ranked for or None when
    nested, the swept fractions it serves)."""
    from sas_ray.core.selection.registry import is_nested

    fractions = check_fractions(cfg.sweep.fractions)
    methods = latent_methods(cfg)
    plan = []
    for method in methods:
        for strategy in dict.fromkeys(cfg.select.strategies):
            latent = None if strategy in LATENT_FREE else method
            if latent is None and method != methods[0]:
                continue
            if is_nested(strategy, cfg.select):
                plan.append((strategy, latent, method, None, fractions))
            else:
                plan += [(strategy, latent, method, f, [f]) for f in fractions]
    return plan


def ranking_stage(cfg: Config, layout: Layout, state: State, executor: Executor) -> Rankings:
    """Latent classes per method, then one ranking per planned (strategy, method[, fraction]);
    -> the sweep's ranking map."""
    from sas_ray.stages.latent import partition
    from sas_ray.stages.rank import rank

    out: dict[tuple[str, str | None, float], tuple[str, str]] = {}
    plan = ranking_plan(cfg)
    for method in dict.fromkeys(p[2] for p in plan):
        _artifact_stage(state, f"partition/{method}", layout.partition(method),
                        lambda m=method: partition(method_config(cfg, m), layout.embeddings,
                                                   layout.partition(m)))
    for strategy, latent, method, fraction, serves in plan:
        uri = ranking_uri(layout.rankings, latent, strategy, fraction)
        stage = "rankings/" + uri[len(layout.rankings) + 1:]
        manifest = _artifact_stage(
            state, stage, uri,
            lambda s=strategy, m=method, f=fraction, u=uri, v=serves: rank(
                method_config(cfg, m), layout.embeddings, layout.partition(m), s, u,
                fraction=f, executor=executor, rank_limit=max(v)))
        out.update({(strategy, latent, f): (uri, manifest["fingerprint"]) for f in serves})
    return out


def existing_rankings(cfg: Config, layout: Layout) -> Rankings:
    """The sweep's ranking map from the rankings a pipeline run left in ``layout``."""
    out = {}
    for strategy, latent, _, fraction, serves in ranking_plan(cfg):
        uri = ranking_uri(layout.rankings, latent, strategy, fraction)
        fp = storage.require_manifest(uri, "ranking")["fingerprint"]
        out.update({(strategy, latent, f): (uri, fp) for f in serves})
    return out


# ---------------------------------------------------------------------------- sweep, report
def sweep_stage(cfg: Config, layout: Layout, state: State, executor: Executor, shards_uri: str,
                shards: dict[str, Any], rankings: Rankings, proxy: dict[str, Any] | None
                ) -> tuple[str, SweepResult | None]:
    """Run the sweep unless the same grid already finished; -> (fingerprint, the result, None
    when cached)."""
    spec = sweep_spec(cfg, shards_uri, shards, rankings, layout.runs)
    fp = sweep_fingerprint(spec)
    manifest = storage.read_manifest(layout.sweep)
    if storage.is_fresh(layout.sweep, fp) and manifest["meta"]["complete"]:
        state.record("sweep", fingerprint=fp, uri=layout.sweep, cached=True, seconds=0.0,
                     complete=True, trials=sum(manifest["meta"]["counts"].values()))
        return fp, None
    result = run_sweep(cfg, spec, executor, layout.sweep, layout.tune,
                       aliases=proxy_mod.aliases(proxy))
    state.record("sweep", fingerprint=fp, uri=layout.sweep, cached=False,
                 seconds=result.seconds, complete=result.complete, trials=len(result.trials),
                 trained=result.trained, failed=len(result.having("failed")))
    for line in summary_lines(result):
        log.info("%s", line)
    return fp, result


def report_stage(cfg: Config, layout: Layout, state: State, sweep_fp: str,
                 rankings: Rankings) -> None:
    """Analyse the sweep into ``report/`` and print it."""
    from sas_ray.stages.report import report

    _artifact_stage(state, "report", layout.report,
                    lambda: report(cfg, layout.sweep, sweep_fp, rankings, layout.report))


# ---------------------------------------------------------------------------- driver
def run_pipeline(cfg: Config) -> Layout:
    """Run every stage (reusing up-to-date outputs); print the report; return the layout."""
    from sas_ray.stages.embed import embed

    validate(cfg, ("all", "sweep", "pipeline"))  # as the CLI does, for Python callers too
    layout = Layout(cfg.run.storage)
    storage.check_writable(layout.root)
    state = State(layout)
    start = time.perf_counter()
    executor = get_executor(cfg)
    try:
        shards_uri, shards = shards_stage(cfg, layout, state, executor)
        check_subset_sizes(cfg, num_train_images(shards))
        encoder, proxy = proxy_stage(cfg, layout, state, executor, shards_uri, shards)
        _artifact_stage(state, "embeddings", layout.embeddings,
                        lambda: embed(cfg, shards_uri, encoder, layout.embeddings, executor))
        rankings = ranking_stage(cfg, layout, state, executor)
        sweep_fp, result = sweep_stage(cfg, layout, state, executor, shards_uri, shards,
                                       rankings, proxy)
        report_stage(cfg, layout, state, sweep_fp, rankings)
    finally:
        executor.close()
    log.info("pipeline finished in %.0f s on the %s executor", time.perf_counter() - start,
             executor.name)
    if result is not None:
        raise_if_incomplete(result)  # after the report of what did finish
    return layout


def cli_pipeline(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray pipeline [--config FILE] [--section.key VALUE ...]``."""
    run_pipeline(cfg)


def cli_sweep(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray sweep [--experiment DIR]``: the sweep over the rankings a pipeline run left in
    ``run.storage``, committed at DIR (default ``<run.storage>/sweep``); prints the table
    (``sas-ray analyze`` writes the report files)."""
    layout = Layout(cfg.run.storage)
    shards_uri, shards = existing_shards(cfg, layout)
    spec = sweep_spec(cfg, shards_uri, shards, existing_rankings(cfg, layout), layout.runs)
    trained = proxy_mod.encoder_ref(cfg) is None
    proxy = storage.read_manifest(layout.proxy) if trained else None
    executor = get_executor(cfg)
    try:
        result = run_sweep(cfg, spec, executor, args.experiment or layout.sweep, layout.tune,
                           aliases=proxy_mod.aliases(proxy))
    finally:
        executor.close()
    print("\n".join(summary_lines(result)))
    print(render(analyze(result.uri, cfg.analyze)), end="")
    raise_if_incomplete(result)


# ---------------------------------------------------------------------------- status
def status_lines(root: str) -> list[str]:
    """What is done under ``root``: stages (fingerprint, time, where), sweep trials, report."""
    layout = Layout(root)
    if not storage.exists(layout.state):
        raise SasRayError(f"{root} holds no sas-ray pipeline ({STATE_FILE} missing); pass the "
                          "run.storage of a pipeline run, e.g. `sas-ray status outputs`")
    state = State(layout)
    lines = [f"pipeline at {root}:"]
    order = []
    for stage in STAGES:  # per-method and per-strategy stages in place of their family
        subs = sorted(k for k in state.stages if k.startswith(stage + "/"))
        order += subs or ([] if stage == "pool" and stage not in state.stages else [stage])
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
    if storage.read_manifest(layout.sweep) is not None:
        records = read_sweep(layout.sweep)
        counts = Counter(r.status for r in records)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines.append(f"sweep trials ({len(records)}): {summary or 'none'}")
        several = len({r.method for r in records}) > 1
        lines += [f"  FAILED {trial_name(r, several)}: {r.error}"
                  for r in records if r.status == "failed"]
        lines += [f"  {r.status} {trial_name(r, several)}"
                  for r in records if not r.finished and r.status != "failed"]
    if storage.read_manifest(layout.report) is not None:
        files = report_files(layout.report)
        lines.append(f"report: {files[PAGE_FILE]}")
    return lines


def cli_status(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray status [STORAGE]`` (default: run.storage)."""
    print("\n".join(status_lines(args.storage or cfg.run.storage)))
