"""Typed configuration: one dataclass per stage, loaded from YAML plus ``--section.key`` flags.

A config file mirrors the dataclasses::

    train:
      epochs: 20
      batch_size: 256
    sweep:
      fractions: [0.2, 0.4]

and every key can be overridden on the command line with the same dotted name,
``sas-ray pipeline --config cfg.yaml --train.epochs 5 --sweep.fractions 0.2,0.6``.
Values on the command line are parsed as YAML scalars/lists, then coerced to the field's type.

Checked when loaded: the type of every value, the allowed values of ``Literal`` keys, and the
bounds declared on a field with :func:`setting` (``ge``/``gt``/``le``/``lt``, applied to each
item of a list). Checks across keys and against the code's registries are in
:mod:`sas_ray.validate`.

``setting(..., result=False)`` marks a key that changes no computed artifact: where work runs
and how it is scheduled, chunked, retried, monitored or recorded, and list keys that choose
*which* artifacts are made (``select.strategies``, ``sweep.fractions``, ``sweep.seeds``) but
not their content. Float rounding that depends on chunking or thread counts is not counted as a
change. :func:`result_settings` gives a section's other keys, the ones a fingerprint covers.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sas_ray.errors import SasRayError


class ConfigError(SasRayError):
    """A config key or value is wrong; the message names the key and the fix."""


Arch = Literal["resnet10", "resnet18", "resnet34", "resnet50"]  # core.models.backbones.ARCHS
LatentMethod = Literal["labels", "few-labels", "kmeans", "clip-zeroshot"]
MethodName = Literal["simclr", "moco", "byol", "simsiam"]  # sas_ray.core.methods.METHODS


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
            result: bool = True, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with its metadata: ``result=False`` for a key that changes no
    computed artifact (see the module docstring); ``ge``/``gt``/``le``/``lt`` bound the value
    (each item of a list value; ``None`` values are not bounded)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"result": result, "bounds": bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def result_settings(section: Any) -> dict[str, Any]:
    """The keys of a config section (a dataclass instance) that change what a stage computes,
    as a dict (``dataclasses.asdict`` without the ``result=False`` keys)."""
    values = dataclasses.asdict(section)
    return {f.name: values[f.name] for f in dataclasses.fields(section)
            if f.metadata.get("result", True)}


@dataclass
class RunConfig:
    """Where outputs go and how Ray is reached."""

    name: str = "quickstart"
    # ray: Ray Data/tasks/Train/Tune; local: no Ray
    executor: Literal["ray", "local"] = setting("ray", result=False)
    # local dir or s3://bucket/prefix; every stage writes below it
    storage: str = setting("outputs", result=False)
    seed: int = 0
    # None: $RAY_ADDRESS if set, else a local Ray instance
    ray_address: str | None = setting(None, result=False)
    # local Ray only; None lets Ray count cores
    num_cpus: int | None = setting(None, result=False, ge=1)
    # local Ray only; None: Ray sizes it
    object_store_mb: int | None = setting(None, result=False, ge=1)


@dataclass
class DataConfig:
    """Image source and shard format."""

    source: str = "synthetic"  # synthetic | ImageFolder dir/tar(.gz) | idx:DIR | torchvision:NAME
    shard_size: int = setting(4096, ge=1)  # images per Parquet file
    on_corrupt: Literal["fail", "skip"] = "fail"  # what ingest does with an undecodable image
    download: bool = setting(False, result=False)  # torchvision sources: allow a download
    # the built-in synthetic pool (sas_ray/core/data/sources/synthetic.py): shape classes,
    # train images = classes x train_per_class (long-tailed, with duplicates and junk)
    synthetic_classes: int = setting(6, ge=1, le=8)
    synthetic_train_per_class: int = setting(100, ge=1)
    synthetic_test_per_class: int = setting(24, ge=1)  # curated: clean images only
    synthetic_size: int = setting(32, ge=8)
    synthetic_imbalance: float = setting(8.0, ge=1)  # largest / smallest class (clean images)
    synthetic_duplicates: float = setting(0.15, ge=0, lt=1)  # share of near-duplicate copies
    synthetic_junk: float = setting(0.1, ge=0, lt=1)  # share of blank, noise, off-class images
    image_size: int = setting(32, ge=1)  # side length the models see
    # a class-stratified subset of train used by every stage
    pool_size: int | None = setting(None, ge=1)
    pool_seed: int = 0  # seed of the pool's draw


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: Arch = "resnet10"
    width: float = setting(0.25, gt=0)  # channel multiplier (1.0 = torchvision widths)
    proj_dim: int = setting(128, ge=1)
    proj_hidden: int | None = setting(None, ge=1)  # None: backbone feature dim
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # auto: cifar up to 64 px, else imagenet


@dataclass
class SimCLRConfig:
    """SimCLR: NT-Xent over the global batch (reference recipe: temperature 0.5)."""

    temperature: float = setting(0.5, gt=0)


@dataclass
class MoCoConfig:
    """MoCo v2: a momentum key encoder and a queue of negatives."""

    temperature: float = setting(0.2, gt=0)
    queue_size: int = setting(4096, ge=1)  # negatives kept (paper: 65536 on ImageNet)
    tau_base: float = setting(0.99, ge=0, le=1)  # key-encoder momentum at the first step
    tau_final: float = setting(0.999, ge=0, le=1)  # ... at the last (cosine in between)
    bn_groups: int = setting(2, ge=1)  # batch-norm groups per worker (shuffle-BN equivalent)


@dataclass
class BYOLConfig:
    """BYOL: a predictor and a momentum target."""

    tau_base: float = setting(0.99, ge=0, le=1)  # target momentum at the first step
    tau_final: float = setting(1.0, ge=0, le=1)  # ... at the last (cosine in between)
    pred_hidden: int | None = setting(None, ge=1)  # None: the projector's hidden width


@dataclass
class SimSiamConfig:
    """SimSiam: a predictor and a stop-gradient."""

    pred_hidden: int | None = setting(None, ge=1)  # None: model.proj_dim // 4


@dataclass
class MethodConfig:
    """Each method's own keys (``method.moco.queue_size``); train.method picks the one used."""

    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    simsiam: SimSiamConfig = field(default_factory=SimSiamConfig)


@dataclass
class TrainConfig:
    """Self-supervised training (reference recipe: SimCLR, Adam 1e-3, wd 1e-6, batch 512)."""

    epochs: int = setting(5, ge=1)
    method: MethodName = "simclr"  # its settings: method.<name>.*
    batch_size: int = setting(64, ge=2)
    optimizer: Literal["adam", "sgd", "lars"] = "adam"
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(1e-6, ge=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    warmup_epochs: int = setting(0, ge=0)  # linear warm-up epochs
    schedule: Literal["auto", "constant", "cosine"] = "auto"  # auto: adam constant, else cosine
    num_workers: int = setting(1, ge=1)  # DDP workers (per-worker batch: batch_size // num_workers)
    # Ray CPUs per worker (torch threads: its integer part, >= 1)
    cpus_per_worker: float = setting(1.0, result=False, gt=0)
    use_gpu: Literal["auto", "true", "false"] = "auto"
    amp: bool = True  # mixed precision when on GPU
    # training input: batches decoded ahead of the step (pinned memory on CUDA); 0: in its thread
    prefetch: int = setting(2, result=False, ge=0)
    # decoding threads per worker; 0: auto (its cores on a GPU, 1 beside a CPU step)
    decode_threads: int = setting(0, result=False, ge=0)
    # MiB per worker: decode the training rows once and keep their pixels if they fit (0: never)
    decoded_cache_mb: int = setting(4096, result=False, ge=0)
    compile: bool = setting(False, result=False)  # torch.compile the encoder
    checkpoint_every: int = setting(1, result=False, ge=1)  # epochs
    max_failures: int = setting(2, result=False, ge=0)  # Ray Train FailureConfig
    # online kNN accuracy every N epochs (0: off), on a val split of train
    knn_every: int = setting(0, result=False, ge=0)
    # labelled train images the online kNN uses (bank + val queries)
    knn_images: int = setting(5000, result=False, ge=2)
    # write the ids each worker trained on to <out>/ids/ (audit)
    record_ids: bool = setting(False, result=False)


@dataclass
class EvalConfig:
    """Linear probe and kNN on frozen features."""

    probe: Literal["lbfgs", "sgd"] = "lbfgs"
    probe_epochs: int = setting(100, ge=1)
    probe_l2: float = setting(1e-4, ge=0)
    probe_l2_grid: list[float] = setting(factory=list, ge=0)  # choose l2 on a val split of train
    # of each train class, for the probe_l2_grid choice
    val_fraction: float = setting(0.1, gt=0, lt=1)
    knn_k: int = setting(200, ge=1)
    knn_t: float = setting(0.1, gt=0)
    batch_size: int = setting(512, ge=1)  # feature extraction and the sgd probe


@dataclass
class ProxyConfig:
    """The proxy encoder whose embeddings drive selection."""

    checkpoint: str | None = None  # a sas-ray checkpoint or torchvision weights file; None: train
    # train: a SimCLR run; or a pretrained encoder loaded from proxy.weights, no training:
    # sas-ray, torchvision:NAME, timm:NAME, open_clip:ARCH (sas_ray.core.models.encoders)
    encoder: str = "train"
    weights: str | None = None  # the pretrained encoder's file or directory (local or s3://)
    # with no proxy.weights, let torchvision/timm/open_clip download their pretrained weights
    allow_download: bool = setting(False, result=False)
    epochs: int = setting(5, ge=1)  # epochs of the proxy SimCLR run when no checkpoint is given
    arch: Arch | None = None  # proxy backbone; None: model.arch
    width: float | None = setting(None, gt=0)  # proxy channel multiplier; None: model.width


@dataclass
class EmbedConfig:
    """Embedding stage (Ray executor: an actor pool; local executor: this process)."""

    views: int = setting(2, ge=0)  # augmented views per image; 0 = the un-augmented image
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = setting(256, result=False, ge=1)  # embeddings are seeded per (seed, id)
    num_actors: int = setting(2, result=False, ge=1)  # Ray: the pool's size (on GPUs: its least)
    # Ray with GPUs: the GPU share of an actor; the pool grows to GPUs / share while batches wait
    gpus_per_actor: float = setting(0.25, result=False, gt=0, le=1)
    feature: Literal["projection", "backbone"] = "projection"
    image_size: int | None = setting(None, ge=1)  # None: the proxy's own input size
    # bf16 autocast on GPUs (rounding, like the device: not in the fingerprint)
    amp: bool = setting(True, result=False)
    # Ray only; None: (cluster CPUs - 1) / num_actors
    cpus_per_actor: float | None = setting(None, result=False, gt=0)
    # torch threads per actor; None: floor(cpus_per_actor), >= 1 (local executor: every core)
    threads: int | None = setting(None, result=False, ge=1)


@dataclass
class LatentConfig:
    """Approximate latent classes."""

    method: LatentMethod = "labels"
    k: int = setting(10, ge=1)  # kmeans clusters
    label_fraction: float = setting(0.01, gt=0, le=1)  # few-labels: fraction of labels revealed
    min_class_size: int = setting(2, ge=1)  # smaller classes are merged into the nearest class
    # few-labels: L-BFGS iterations of the linear classifier
    classifier_steps: int = setting(100, ge=1)
    classifier_l2: float = setting(1e-4, ge=0)  # few-labels: L2 penalty of the linear classifier
    kmeans_iters: int = setting(100, ge=1)  # kmeans: mini-batch steps
    kmeans_batch_size: int = setting(4096, ge=1)  # kmeans: rows per mini-batch
    # kmeans: rows sampled for k-means++ initialisation
    kmeans_init_sample: int = setting(20000, ge=1)
    # kmeans: faiss (Lloyd iterations on a sample) when installed, else the mini-batch one
    kmeans_impl: Literal["auto", "faiss", "minibatch"] = "auto"
    kmeans_n_init: int = setting(1, ge=1)  # kmeans (faiss): restarts, lowest inertia kept
    kmeans_lloyd_iters: int = setting(20, ge=1)  # kmeans (faiss): Lloyd iterations per restart
    # kmeans (faiss): rows fitted = this * k (a uniform sample); every row is then assigned
    kmeans_points_per_centroid: int = setting(256, ge=1)
    # clip-zeroshot: one class name per line; None: the shards' class names
    class_names_file: str | None = setting(None, result=False)
    # clip-zeroshot: prompt templates, {} = the class name; []: the standard CLIP ImageNet ones
    prompts: list[str] = setting(factory=list)


@dataclass
class SelectConfig:
    """Subset selection."""

    # the strategies ranked (which rankings are made, not what they hold)
    strategies: list[str] = setting(factory=lambda: ["sas", "random"], result=False)
    similarity_floor: float | None = None  # clip similarities below this (reference: 0.0)
    double_greedy: bool = False  # sas: refine each class by double greedy (not nested)
    double_greedy_rule: Literal["deterministic", "randomized"] = "deterministic"
    block_size: int = setting(4096, result=False, ge=1)  # rows per block of similarity products
    # sas: largest per-class similarity matrix kept in memory (MiB)
    matrix_mb: int = setting(1024, result=False, ge=0)
    # sas: array library of the greedy (auto: torch where a CUDA device is visible, else numpy;
    # the orders agree up to float rounding of the similarity products)
    backend: Literal["auto", "numpy", "torch"] = setting("auto", result=False)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", result=False)  # torch backend
    # sas: rank greedily up to this fraction, the rest by their gain at the stop (a cut at a
    # larger fraction is refused); the pipeline uses max(sweep.fractions)
    rank_limit: float = setting(1.0, result=False, gt=0, le=1)
    # parallel tasks/processes over latent classes
    num_workers: int = setting(2, result=False, ge=1)
    # prototypes/semdedup: k-means clusters within a latent class
    clusters_per_class: int = setting(1, ge=1)
    supervised_model: Literal["linear", "mlp"] = "linear"  # forgetting/el2n head on embeddings
    supervised_epochs: int = setting(20, ge=1)  # forgetting: training epochs
    supervised_lr: float = setting(0.1, gt=0)  # forgetting/el2n: SGD learning rate
    supervised_batch_size: int = setting(128, ge=1)  # forgetting/el2n: minibatch size
    el2n_epochs: int = setting(2, ge=1)  # el2n: epochs trained before scoring (early in training)
    el2n_seeds: int = setting(3, ge=1)  # el2n: independent runs averaged
    hkmeans_levels: int = setting(2, ge=1)  # hkmeans: levels of the k-means hierarchy
    # hkmeans: clusters per level, first = finest; []: round(n ** ((L - l + 1) / (L + 1)))
    hkmeans_clusters: list[int] = setting(factory=list, ge=1)
    # hkmeans: resampling steps per level; []: 0 at level 1, 10 above
    hkmeans_resample_steps: list[int] = setting(factory=list, ge=0)
    # hkmeans: which rows a level-1 cluster gives first
    hkmeans_sampling: Literal["random", "closest"] = "random"
    dbp_clusters: int = setting(0, ge=0)  # dbp: k-means clusters; 0: round(sqrt(n))
    dbp_neighbors: int = setting(20, ge=1)  # dbp: nearest centroids in d_inter
    dbp_temperature: float = setting(0.1, gt=0)  # dbp: softmax temperature of the complexity
    dbp_within: Literal["random", "easy", "hard"] = "random"  # dbp: order within a cluster
    # sas: a previous sas ranking to extend with new rows ('previous': the stale ranking at
    # the output itself, the pipeline's hook); None: rank from scratch
    incremental: str | None = setting(None, result=False)
    # incremental: a class that gained rows is re-ranked (rerun: equals a full run) or its
    # previous order extended by the new rows (extend: faster, an approximation; recorded in
    # an incremental ranking's config)
    incremental_greedy: Literal["rerun", "extend"] = setting("extend", result=False)


@dataclass
class SweepConfig:
    """Ray Tune sweep over SSL method x strategy x fraction x seed."""

    fractions: list[float] = setting(factory=lambda: [0.5, 0.75], result=False, gt=0, le=1)
    seeds: list[int] = setting(factory=lambda: [0], result=False)
    include_full: bool = setting(True, result=False)  # also train on all the data
    # trials in flight; None: as many as the cluster fits
    max_concurrent: int | None = setting(None, result=False, ge=1)
    # retries of a failing trial before it is reported as failed
    max_failures: int = setting(1, result=False, ge=0)
    # CPUs a trial's Tune function reserves (it mostly waits)
    trial_cpus: float = setting(0.0, result=False, ge=0)
    # a sweep axis; []: latent.method
    latent_methods: list[LatentMethod] = setting(factory=list, result=False)
    # SSL methods, a sweep axis (the proxy trains with train.method); []: train.method
    methods: list[MethodName] = setting(factory=list, result=False)
    # start no trial after this many minutes (resumable)
    time_budget_min: float | None = setting(None, result=False, gt=0)


@dataclass
class AnalyzeConfig:
    """Report settings."""

    tolerance: float = setting(0.5, ge=0)  # accuracy points from full data that count as "no loss"
    metric: Literal["linear_acc", "knn_acc"] = "linear_acc"  # what data savings are judged by
    compare: list[str] = setting(factory=list)  # pairs a:b also tested as a - b


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_settings(cfg: Config) -> dict[str, Any]:
    """The result settings of the method ``cfg`` trains (its ``method.<train.method>`` keys;
    the other methods' sections change nothing it computes)."""
    return result_settings(getattr(cfg.method, cfg.train.method))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to the annotated field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and str(value).lower() in allowed:
            return str(value).lower()  # YAML reads `true` as a bool
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; use one of: "
                              f"{', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, item_tp, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, int | str) and not isinstance(value, bool):
            return int(value)
        if tp is str:
            return str(value)
    except ValueError:
        pass
    else:
        if isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool):
            return value
    raise ConfigError(f"config key '{key}': cannot read {value!r} as {tp.__name__}; fix the value")


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": float.__ge__, "gt": float.__gt__, "le": float.__le__, "lt": float.__lt__}


def _check_bounds(value: Any, bounds: dict[str, float], key: str) -> None:
    """Raise a ConfigError naming ``key`` when ``value`` (or an item of it) is out of bounds."""
    for item in value if isinstance(value, list) else [value]:
        if item is None or not bounds:
            continue
        if not all(_BOUND_OK[op](float(item), float(b)) for op, b in bounds.items()):
            rule = " and ".join(f"{_BOUND_TEXT[op]} {b:g}" for op, b in bounds.items())
            raise ConfigError(f"config key '{key}' must be {rule}, got {item!r}")


def _section_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply ``{"train.epochs": 5, ...}`` or nested ``{"train": {"epochs": 5}}`` in place."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    flat: dict[str, Any] = {}
    for key, value in updates.items():
        if "." in key:
            flat[key] = value
        elif key in sections and not isinstance(value, dict):
            raise ConfigError(f"config section '{key}' must be a mapping of keys (e.g. "
                              f"'{key}:' then indented 'key: value' lines), got {value!r}")
        else:
            for sub, v in (value.items() if isinstance(value, dict) else [("", value)]):
                flat[f"{key}.{sub}"] = v
    for key, value in flat.items():
        section_name, _, name = key.partition(".")
        if section_name not in sections:
            raise ConfigError(f"unknown config section '{section_name}' (in '{key}'); "
                              f"sections are: {', '.join(sorted(sections))}")
        _set_key(getattr(cfg, section_name), section_name, name, value, key)
    return cfg


def _method_owners(name: str) -> list[str]:
    """The methods whose section (``method.<m>``) has the key ``name``."""
    return [m for m, tp in typing.get_type_hints(MethodConfig).items()
            if name in {f.name for f in dataclasses.fields(tp)}]


def _set_key(section: Any, where: str, name: str, value: Any, key: str) -> None:
    """Set ``name`` of the dataclass ``section`` (at ``where``; ``name`` dotted below a nested
    section such as ``method.moco``) to ``value``, coerced and bounds-checked."""
    head, _, rest = name.partition(".")
    fields = {f.name: f for f in dataclasses.fields(section)}
    if head not in fields:
        owners = [m for m in _method_owners(head) if where != f"method.{m}"]
        if owners:
            raise ConfigError(f"config key '{key}' belongs to method {' and '.join(owners)}; "
                              f"set {' or '.join(f'method.{m}.{head}' for m in owners)}")
        raise ConfigError(f"unknown config key '{key}'; keys of '{where}' are: "
                          f"{', '.join(fields)}")
    current = getattr(section, head)
    if dataclasses.is_dataclass(current):  # a nested section
        if rest:
            _set_key(current, f"{where}.{head}", rest, value, key)
            return
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{where}.{head}' must be a mapping of keys, "
                              f"got {value!r}")
        for sub, v in value.items():
            _set_key(current, f"{where}.{head}", str(sub), v, f"{key}.{sub}")
        return
    if rest:
        raise ConfigError(f"unknown config key '{key}'; '{where}.{head}' is a key, not a section")
    coerced = _coerce(value, _section_types(section)[head], key)
    _check_bounds(coerced, fields[head].metadata.get("bounds", {}), key)
    setattr(section, head, coerced)


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Built-in defaults, then the YAML file (if any), then ``overrides``."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing YAML file "
                              "(see configs/)")
        data = _read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        apply(cfg, data)
    if overrides:
        apply(cfg, overrides)
    return cfg


def _read_yaml(path: Path) -> Any:
    """The parsed YAML file; a syntax error becomes one line ``FILE:LINE:COLUMN: problem``."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise ConfigError(f"{where}: invalid YAML: {problem}; fix the file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; pass a YAML config file") from None


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """Turn ``["--train.epochs", "5", "--sweep.seeds=0,1"]`` into ``{"train.epochs": 5, ...}``."""
    import yaml

    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}; config overrides look like "
                              "--section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"config override {arg} needs a value")
            i += 1
            value = argv[i]
        try:
            out[key] = value if "," in value else yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"config override --{key}: cannot read {value!r}; quote it or "
                              "fix the brackets") from None
        i += 1
    return out


def _key_notes(cls: type) -> dict[str, str]:
    """The comment of every field in the source of the dataclass ``cls``: the one after the
    field on its line, else the comment lines right above it."""
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        match = re.match(r"(\w+): [^#]+?(?:  # (.*))?$", text)
        if match:
            notes[match[1]] = match[2] or " ".join(above)
        above = []
    return notes


def _yaml_lines(section: Any, indent: int) -> list[str]:
    import yaml

    notes = _key_notes(type(section))
    pad = "  " * indent
    lines = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            lines += [f"{pad}{f.name}:", *_yaml_lines(value, indent + 1)]
            continue
        text = yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]
        note = f"  # {notes[f.name]}" if notes.get(f.name) else ""
        lines.append(f"{pad}{f.name}: {text}{note}")
    return lines


def to_yaml(cfg: Config) -> str:
    """The whole config as YAML that :func:`load` reads back: every section headed by its
    docstring's first line, every key with its comment from this module."""
    blocks = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        blocks.append("\n".join([f"# {doc}", f"{f.name}:", *_yaml_lines(section, 1)]))
    return "\n\n".join(blocks) + "\n"


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. read back from a manifest)."""
    return apply(Config(), data)
