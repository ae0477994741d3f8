"""Whole-config checks that run in the driver before any stage starts (no Ray, no data read).

:func:`sas_ray.config.load` already checks every key on its own (types, the allowed values of
``Literal`` keys, bounds). The checks here need more than one key, a registry of the code, or
the local file system; each raises a :class:`~sas_ray.config.ConfigError` naming the key(s)
and the fix. A check belongs to a *scope*, the commands it concerns:

- ``all``: every command that computes something (strategy names, batch size over workers,
  warm-up within the epochs, local Ray CPUs for the training workers);
- ``sweep``: the sweep has seeds and something to train;
- ``pipeline``: inputs only the pipeline reads from the config (``data.source``,
  ``proxy.checkpoint``, ``proxy.weights``) exist when local; ``s3://`` ones are left to the
  stage that reads them; ``proxy.encoder`` is ``train`` or a registry name;
- ``embed``: ``proxy.checkpoint`` or a pretrained ``proxy.encoder`` is given and exists;
- ``select``: there is a strategy to rank;
- ``sweep`` too: inside a Ray job (``ray job submit``), ``run.storage`` is absolute or a URI
  (:func:`outlives_job`; the CLI checks a command's ``OUT`` the same way).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Collection

from sas_ray.config import Config, ConfigError, from_dict

Check = Callable[[Config], None]
CHECKS: list[tuple[str, Check]] = []  # (scope, check), run in this order
SCOPES = ("all", "sweep", "pipeline", "embed", "select")


def check(scope: str) -> Callable[[Check], Check]:
    """Register a check for ``scope`` (one of :data:`SCOPES`)."""
    assert scope in SCOPES, scope

    def add(fn: Check) -> Check:
        CHECKS.append((scope, fn))
        return fn
    return add


def validate(cfg: Config, scopes: Collection[str] = SCOPES) -> None:
    """Run every registered check of ``scopes``; the first failing one raises."""
    for scope, fn in CHECKS:
        if scope in scopes:
            fn(cfg)


def _one_of(key: str, value: str, allowed: Collection[str]) -> ConfigError:
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"config key '{key}': '{value}' is not allowed; {hint}use one of: "
                       f"{', '.join(allowed)}")


def _local_path_missing(uri: str) -> bool:
    return "://" not in uri and not os.path.exists(uri)


def in_ray_job() -> bool:
    """Whether this process is the driver of a submitted Ray job: Ray's job supervisor sets
    ``RAY_JOB_CONFIG_JSON_ENV_VAR`` in the entrypoint's environment (not in its workers')."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def outlives_job(what: str, path: str) -> None:
    """In a Ray job, refuse a relative output ``path``: the job's working directory is Ray's
    per-job copy of the uploaded ``working_dir``, which Ray deletes, and a multi-node cluster
    shares no local disk anyway."""
    if in_ray_job() and "://" not in path and not os.path.isabs(path):
        raise ConfigError(f"{what} '{path}' is relative: in a Ray job it resolves inside "
                          f"Ray's copy of the working directory ({os.getcwd()}), which Ray "
                          "may delete after the job and does when the head restarts; pass an "
                          "absolute path on storage every node shares or an s3:// URI (e.g. "
                          "s3://BUCKET/sas-ray)")


# ---------------------------------------------------------------------------- all
@check("all")
def values_as_at_load(cfg: Config) -> None:
    """The load-time checks (types, enumerations, bounds) again, for a config built or
    changed in code rather than read by :func:`sas_ray.config.load`."""
    from_dict(cfg.to_dict())


@check("all")
def strategies_exist(cfg: Config) -> None:
    from sas_ray.core.selection.registry import SELECTORS

    for strategy in cfg.select.strategies:
        if strategy not in SELECTORS:
            raise _one_of("select.strategies", strategy, list(SELECTORS))


@check("all")
def comparisons_name_strategies(cfg: Config) -> None:
    """``analyze.compare``: pairs ``a:b`` of two different strategies the sweep trains (or
    ``full``), each plain or as ``name/latent-method``."""
    known = {*cfg.select.strategies, "full"}
    for pair in cfg.analyze.compare:
        sides = pair.split(":")
        if len(sides) != 2 or sides[0] == sides[1] or not all(sides):
            raise ConfigError(f"config key 'analyze.compare': '{pair}' is not a pair of two "
                              "strategies; write it as a:b, e.g. "
                              "forgetting-least:forgetting-most")
        for side in sides:
            if side.split("/", 1)[0] not in known:
                raise _one_of("analyze.compare", side, sorted(known))


@check("all")
def batch_fits_workers(cfg: Config) -> None:
    t = cfg.train
    if t.batch_size // t.num_workers < 2:
        raise ConfigError(f"train.batch_size {t.batch_size} over train.num_workers "
                          f"{t.num_workers} leaves < 2 images per worker (contrastive pairs "
                          "need 2); raise --train.batch_size or lower --train.num_workers")


@check("all")
def warmup_within_epochs(cfg: Config) -> None:
    if cfg.train.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"train.warmup_epochs {cfg.train.warmup_epochs} is more than "
                          f"train.epochs {cfg.train.epochs}; lower --train.warmup_epochs")


@check("all")
def workers_fit_local_ray(cfg: Config) -> None:
    run, t = cfg.run, cfg.train
    if run.executor != "ray" or run.ray_address or run.num_cpus is None:
        return  # a cluster's CPUs are known once Ray is reached (the sweep checks them)
    need = t.num_workers * t.cpus_per_worker + cfg.sweep.trial_cpus
    if need > run.num_cpus:
        raise ConfigError(f"a training run needs {need:g} CPUs (train.num_workers x "
                          f"train.cpus_per_worker + sweep.trial_cpus) but run.num_cpus is "
                          f"{run.num_cpus}; lower --train.num_workers or "
                          "--train.cpus_per_worker, or raise --run.num_cpus")


# ---------------------------------------------------------------------------- sweep
@check("sweep")
def something_to_sweep(cfg: Config) -> None:
    if not cfg.sweep.seeds:
        raise ConfigError("sweep.seeds is empty; pass e.g. --sweep.seeds 0,1")
    if not cfg.select.strategies and not cfg.sweep.include_full:
        raise ConfigError("nothing to sweep: select.strategies is empty and "
                          "sweep.include_full is false; name a strategy, e.g. "
                          "--select.strategies sas,random")
    if cfg.select.strategies and not cfg.sweep.fractions:
        raise ConfigError("sweep.fractions is empty; pass e.g. --sweep.fractions 0.2,0.5")


@check("sweep")
def storage_outlives_job(cfg: Config) -> None:
    outlives_job("run.storage", cfg.run.storage)


# ---------------------------------------------------------------------------- inputs
@check("pipeline")
def data_source_exists(cfg: Config) -> None:
    from sas_ray.core.data.sources import SOURCES

    spec = cfg.data.source
    if spec.partition(":")[0] in SOURCES:
        return  # a registered source (synthetic, idx:DIR, ...) checks its own argument
    if _local_path_missing(spec):
        raise ConfigError(f"config key 'data.source': {spec} does not exist; pass an "
                          "ImageFolder directory or archive, or one of: synthetic, "
                          f"{', '.join(f'{n}:...' for n in SOURCES if n != 'synthetic')}")


@check("pipeline")
def proxy_checkpoint_exists(cfg: Config) -> None:
    path = cfg.proxy.checkpoint
    if path is not None and _local_path_missing(path):
        raise ConfigError(f"config key 'proxy.checkpoint': {path} does not exist; pass an "
                          "existing sas-ray checkpoint (file or run directory) or torchvision "
                          "ResNet weights")


@check("pipeline")
def proxy_encoder_known(cfg: Config) -> None:
    from sas_ray.core.models.encoders import TRAIN, parse
    from sas_ray.errors import SasRayError

    p = cfg.proxy
    if p.encoder == TRAIN:
        return
    if p.checkpoint:
        raise ConfigError("proxy.checkpoint and proxy.encoder both name a proxy; pass "
                          "--proxy.encoder sas-ray --proxy.weights PATH, or only one of them")
    try:
        parse(p.encoder)
    except SasRayError as err:
        raise ConfigError(f"config key 'proxy.encoder': {err}") from None
    if p.weights is None and not p.allow_download:
        raise ConfigError(f"proxy.encoder {p.encoder} needs --proxy.weights PATH (a file or "
                          "directory, local or s3://), or --proxy.allow_download true")
    if p.weights is not None and _local_path_missing(p.weights):
        raise ConfigError(f"config key 'proxy.weights': {p.weights} does not exist; pass the "
                          f"weights file or directory of {p.encoder}")


@check("embed")
def proxy_checkpoint_given(cfg: Config) -> None:
    if cfg.proxy.checkpoint is None and cfg.proxy.encoder == "train":
        raise ConfigError("embed needs an encoder: pass --proxy.checkpoint PATH (a sas-ray "
                          "checkpoint or run directory, or torchvision ResNet weights) or "
                          "--proxy.encoder NAME --proxy.weights PATH (a pretrained encoder)")
    proxy_checkpoint_exists(cfg)
    proxy_encoder_known(cfg)


@check("select")
def strategy_given(cfg: Config) -> None:
    if not cfg.select.strategies:
        raise ConfigError("select.strategies is empty; name one or more, e.g. "
                          "--select.strategies sas,random")
