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
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sas_ray.errors import SasRayError


class ConfigError(SasRayError):
    """A config key or value is wrong; the message names the key and the fix."""


@dataclass
class RunConfig:
    """Where outputs go and how Ray is reached."""

    name: str = "quickstart"
    executor: Literal["ray", "local"] = "ray"  # ray: Ray Data/tasks/Train/Tune; local: no Ray
    storage: str = "outputs"  # local dir or s3://bucket/prefix; every stage writes below it
    seed: int = 0
    ray_address: str | None = None  # None: $RAY_ADDRESS if set, else a local Ray instance
    num_cpus: int | None = None  # local Ray only; None lets Ray count cores
    object_store_mb: int | None = None  # local Ray only; None lets Ray size it


@dataclass
class DataConfig:
    """Image source and shard format."""

    source: str = "synthetic"  # synthetic | ImageFolder dir/tar(.gz) | idx:DIR | torchvision:NAME
    shard_size: int = 4096  # images per Parquet file
    on_corrupt: str = "fail"  # fail | skip: what ingest does with an undecodable image
    download: bool = False  # torchvision sources: allow a download
    synthetic_classes: int = 4
    synthetic_train_per_class: int = 64
    synthetic_test_per_class: int = 16
    synthetic_size: int = 32
    image_size: int = 32  # side length the models see
    pool_size: int | None = None  # a class-stratified subset of train used by every stage
    pool_seed: int = 0  # seed of the pool's draw


@dataclass
class ModelConfig:
    """Backbone and projection head."""

    arch: str = "resnet10"  # resnet10 | resnet18 | resnet50
    width: float = 0.25  # channel multiplier (1.0 = torchvision widths)
    proj_dim: int = 128
    proj_hidden: int | None = None  # None: backbone feature dim
    stem: str = "auto"  # auto (cifar up to 64 px, else imagenet) | cifar | imagenet


@dataclass
class TrainConfig:
    """SimCLR training (reference recipe: Adam 1e-3, wd 1e-6, temperature 0.5, batch 512)."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd | lars
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: int = 0  # linear warm-up epochs
    schedule: str = "auto"  # auto (adam: constant, sgd/lars: cosine) | constant | cosine
    temperature: float = 0.5
    num_workers: int = 1  # Ray Train workers
    cpus_per_worker: float = 1.0  # Ray CPUs per worker (torch threads: its integer part, >= 1)
    use_gpu: str = "auto"  # auto | true | false
    amp: bool = True  # mixed precision when on GPU
    checkpoint_every: int = 1  # epochs
    max_failures: int = 2  # Ray Train FailureConfig
    knn_every: int = 0  # online kNN accuracy every N epochs (0: off), on a val split of train
    knn_images: int = 5000  # labelled train images the online kNN uses (bank + val queries)
    cache_mb: int = 1024  # keep the encoded train images in Ray's object store up to this size
    record_ids: bool = False  # write the ids each worker trained on to <out>/ids/ (audit)


@dataclass
class EvalConfig:
    """Linear probe and kNN on frozen features."""

    probe: str = "lbfgs"  # lbfgs | sgd
    probe_epochs: int = 100
    probe_l2: float = 1e-4
    probe_l2_grid: list[float] = field(default_factory=list)  # choose l2 on a val split of train
    val_fraction: float = 0.1  # of each train class, for the probe_l2_grid choice
    knn_k: int = 200
    knn_t: float = 0.1
    batch_size: int = 512


@dataclass
class ProxyConfig:
    """The proxy encoder whose embeddings drive selection."""

    checkpoint: str | None = None  # a sas-ray checkpoint or torchvision weights file; None: train
    epochs: int = 3  # epochs of the proxy SimCLR run when no checkpoint is given
    arch: str | None = None  # proxy backbone; None: model.arch
    width: float | None = None  # proxy channel multiplier; None: model.width


@dataclass
class EmbedConfig:
    """Ray Data embedding stage."""

    views: int = 2  # augmented views per image; 0 = the un-augmented image
    dtype: str = "float32"  # float32 | float16
    batch_size: int = 256
    num_actors: int = 2  # on a GPU cluster: at most one per GPU
    feature: str = "projection"  # projection | backbone
    image_size: int | None = None  # None: the size the proxy was trained at
    cpus_per_actor: float | None = None  # None: (cluster CPUs - 1) / num_actors
    threads: int | None = None  # torch threads per actor; None: floor(cpus_per_actor), >= 1


@dataclass
class LatentConfig:
    """Approximate latent classes."""

    method: str = "labels"  # labels | few-labels | kmeans
    k: int = 10  # kmeans clusters
    label_fraction: float = 0.01  # few-labels: fraction of labels revealed
    min_class_size: int = 2  # smaller classes are merged into the nearest class
    classifier_steps: int = 100  # few-labels: L-BFGS iterations of the linear classifier
    classifier_l2: float = 1e-4  # few-labels: L2 penalty of the linear classifier
    kmeans_iters: int = 100  # kmeans: mini-batch steps
    kmeans_batch_size: int = 4096  # kmeans: rows per mini-batch
    kmeans_init_sample: int = 20000  # kmeans: rows sampled for k-means++ initialisation


@dataclass
class SelectConfig:
    """Subset selection."""

    strategies: list[str] = field(default_factory=lambda: ["sas", "random"])
    similarity_floor: float | None = None  # clip similarities below this (reference: 0.0)
    double_greedy: bool = False  # sas: refine each class by double greedy (not nested)
    double_greedy_rule: str = "deterministic"  # deterministic | randomized
    block_size: int = 4096  # rows per block of similarity products
    matrix_mb: int = 1024  # sas: largest per-class similarity matrix kept in memory (MiB)
    num_workers: int = 2  # parallel Ray tasks over latent classes
    clusters_per_class: int = 1  # prototypes/semdedup: k-means clusters within a latent class
    supervised_model: str = "linear"  # forgetting/el2n head on embeddings: linear | mlp
    supervised_epochs: int = 20  # forgetting: training epochs
    supervised_lr: float = 0.1  # forgetting/el2n: SGD learning rate
    supervised_batch_size: int = 128  # forgetting/el2n: minibatch size
    el2n_epochs: int = 2  # el2n: epochs trained before scoring (early in training)
    el2n_seeds: int = 3  # el2n: independent runs averaged


@dataclass
class SweepConfig:
    """Ray Tune sweep over strategy x fraction x seed."""

    fractions: list[float] = field(default_factory=lambda: [0.5, 0.75])
    seeds: list[int] = field(default_factory=lambda: [0])
    include_full: bool = True
    max_concurrent: int | None = None  # trials in flight; None: as many as the cluster fits
    max_failures: int = 1  # retries of a failing trial before it is reported as failed
    trial_cpus: float = 0.0  # CPUs a trial's Tune function reserves (it mostly waits)
    latent_methods: list[str] = field(default_factory=list)  # a sweep axis; []: latent.method
    time_budget_min: float | None = None  # start no trial after this many minutes (resumable)


@dataclass
class AnalyzeConfig:
    """Report settings."""

    tolerance: float = 0.5  # accuracy points from full data that count as "no loss"
    metric: str = "linear_acc"  # linear_acc | knn_acc: the accuracy data savings are judged by


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to the annotated field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of "
                              f"{', '.join(map(str, allowed))}; pass one of them")
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


def _section_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply ``{"train.epochs": 5, ...}`` or nested ``{"train": {"epochs": 5}}`` in place."""
    flat: dict[str, Any] = {}
    for key, value in updates.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    for key, value in flat.items():
        section_name, _, name = key.partition(".")
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            sections = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise ConfigError(f"unknown config section '{section_name}' (in '{key}'); "
                              f"sections are: {sections}")
        types_ = _section_types(section)
        if name not in types_:
            raise ConfigError(f"unknown config key '{key}'; keys of '{section_name}' are: "
                              f"{', '.join(types_)}")
        setattr(section, name, _coerce(value, types_[name], key))
    return cfg


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Built-in defaults, then the YAML file (if any), then ``overrides``."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing YAML file "
                              "(see configs/)")
        import yaml

        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
        apply(cfg, data)
    if overrides:
        apply(cfg, overrides)
    return cfg


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
        out[key] = value if "," in value else yaml.safe_load(value)
        i += 1
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. read back from a manifest)."""
    return apply(Config(), data)
