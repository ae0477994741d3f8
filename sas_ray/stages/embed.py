"""Embedding stage: every train image -> the mean of its unit-normalised view embeddings.

The formula, and why it estimates SAS's s_ij, live with the Ray-free core in
:mod:`sas_ray.core.embedding`.

Ray layer: ``read_dataset(split="train")`` streams shards into an actor pool of
:class:`EmbedActor` (each loads the proxy once), whose output batches are written as Parquet
straight into the artifact's staging directory; the driver never holds the dataset. Output
columns: ``id`` int64, ``label`` int64 (nullable), ``emb`` fixed_size_list<float32|float16>[dim],
rows in no particular order. Before committing, the driver reads back the ``id`` column and
checks that every train id was embedded exactly once. Actors that die are restarted and their
batches retried (bounded by :data:`MAX_ACTOR_RESTARTS`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sas_ray.config import Config, EmbedConfig
from sas_ray.core.data.augment import SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.embedding import encoder_fingerprint, mean_view_embeddings
from sas_ray.core.models.checkpoint import load_encoder
from sas_ray.core.seeding import example_generators
from sas_ray.errors import SasRayError
from sas_ray.io import storage

log = logging.getLogger(__name__)

STAGE = "embeddings"
FEATURES = ("projection", "backbone")
DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
# Test hook: "N:MARKER" makes the first actor that reaches its N-th batch exit its process,
# once (MARKER is created atomically), to exercise Ray's actor restart and task retry.
FAULT_ENV = "SAS_RAY_EMBED_FAULT"
MAX_ACTOR_RESTARTS = 3  # bounded, so a deterministic crash fails the stage instead of looping
ROWS_PER_FILE = 8192  # Parquet files of about this many rows rather than one per batch


# ----------------------------------------------------------------------------- Ray layer

def actor_resources(cfg: EmbedConfig, rows: int, cluster_cpus: float, node_cpus: float,
                    cluster_gpus: float) -> dict[str, Any]:
    """Pool size, Ray resources and torch threads per :class:`EmbedActor` for ``rows`` rows.

    The pool has no more actors than batches. One CPU is left to the shard reader and the
    Parquet writer; the rest is split between the actors (at most one node's CPUs each, so
    every actor can be placed). On a cluster with GPUs every actor takes one GPU and the pool
    shrinks to the GPU count; on one without, asking for a GPU would leave the actors pending
    forever, so none is requested.
    """
    num_actors = max(1, min(cfg.num_actors, math.ceil(rows / cfg.batch_size)))
    num_gpus = 0
    if cluster_gpus >= 1:
        num_gpus = 1
        num_actors = min(num_actors, int(cluster_gpus))
    cpus = cfg.cpus_per_actor
    if cpus is None:
        cpus = min((cluster_cpus - 1) / num_actors, node_cpus)
        if cpus <= 0:
            raise SasRayError(f"the Ray cluster has {cluster_cpus:g} CPU(s); embedding needs at "
                              "least 2 (one reads shards): set --run.num_cpus 2 or more")
    threads = cfg.threads or max(1, math.floor(cpus))
    return {"num_actors": num_actors, "num_cpus": cpus, "num_gpus": num_gpus,
            "threads": threads}


class EmbedActor:
    """Ray Data callable class: a batch of shard rows -> ``id``, ``label``, ``emb``.

    Loads the proxy once (eval mode) and uses ``threads`` torch threads. Batches are Arrow
    tables with ``id``, ``image`` (encoded bytes) and ``label``; images are decoded to
    ``image_size`` and embedded with :func:`mean_view_embeddings`.
    """

    def __init__(self, proxy: str, views: int, feature: str, dtype: str, seed: int,
                 image_size: int, threads: int, device: str = "cpu",
                 fault: str | None = None) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = load_encoder(proxy).eval().to(self.device)
        self.augment = SimCLRAugment(size=image_size)
        self.views, self.feature, self.seed, self.image_size = views, feature, seed, image_size
        self.dtype = dtype
        self.np_dtype, self.pa_dtype = DTYPES[dtype]
        self.fault = fault
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.batches += 1
        self._maybe_fail()
        ids = batch["id"].to_numpy()
        images = to_nchw(decode_images(batch["image"].to_pylist(), size=self.image_size))
        gens = example_generators(ids, self.seed) if self.views > 0 else None
        emb = mean_view_embeddings(self.model, images.to(self.device), self.augment,
                                   self.views, self.feature, gens)
        flat = pa.array(emb.cpu().numpy().astype(self.np_dtype).ravel(), self.pa_dtype)
        return pa.table([batch["id"], batch["label"],
                         pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])],
                        schema=output_schema(emb.shape[1], self.dtype))

    def _maybe_fail(self) -> None:
        """The :data:`FAULT_ENV` test hook (see its comment)."""
        if self.fault is None:
            return
        after, marker = self.fault.split(":", 1)
        if self.batches != int(after):
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os._exit(1)


def output_schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("label", pa.int64()),
                      pa.field("emb", pa.list_(DTYPES[dtype][1], dim), nullable=False)])


def _check_config(cfg: EmbedConfig) -> None:
    if cfg.views < 0:
        raise SasRayError(f"embed.views={cfg.views} is negative; pass 0 (un-augmented) or more")
    if cfg.feature not in FEATURES:
        raise SasRayError(f"embed.feature={cfg.feature!r} is unknown; use one of "
                          f"{', '.join(FEATURES)}")
    if cfg.dtype not in DTYPES:
        raise SasRayError(f"embed.dtype={cfg.dtype!r} is unknown; use float32 or float16")
    if cfg.num_actors < 1 or cfg.batch_size < 1:
        raise SasRayError("embed.num_actors and embed.batch_size must be >= 1; pass e.g. "
                          "--embed.num_actors 2 --embed.batch_size 256")


def _verify_ids(files: list[str], expected: np.ndarray) -> None:
    """Every expected id appears in the written files exactly once (reads only ``id``)."""
    parts = []
    for f in files:
        fs, path = storage.filesystem(f)
        with storage.s3_errors(f):
            parts.append(pq.read_table(path, columns=["id"], filesystem=fs)["id"].to_numpy())
    written = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if not np.array_equal(written, np.sort(expected)):
        unique = np.unique(written)
        missing = np.setdiff1d(expected, unique).size
        raise SasRayError(f"embedding wrote {written.size} rows for {expected.size} train "
                          f"examples ({missing} missing, {written.size - unique.size} "
                          "duplicated); rerun `sas-ray embed`")


def _node_cpus() -> float:
    import ray

    return max(float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])


def embed(cfg: Config, data_uri: str, proxy: str, out: str) -> dict[str, Any]:
    """Embed the train split of the shards at ``data_uri`` with the encoder at ``proxy``
    (a sas-ray checkpoint, a directory holding one, or torchvision ResNet weights; local or
    ``s3://``) and commit an ``embeddings`` artifact at ``out``; returns its manifest.

    An artifact at ``out`` made from the same shards, encoder and settings is reused. On any
    error nothing is left at ``out`` (a previous artifact there stays as it was).
    """
    from sas_ray.executors.ray.session import cluster_cpus, cluster_gpus, ensure_ray
    from sas_ray.io.shards import read_dataset, read_table

    ecfg = cfg.embed
    _check_config(ecfg)
    shards = storage.require_manifest(data_uri, "shards")
    expected = read_table(data_uri, split="train", columns=["id"])["id"].to_numpy()
    if expected.size == 0:
        raise SasRayError(f"shards at {data_uri} have no 'train' examples; ingest a source "
                          "with a train split")
    model = load_encoder(proxy)
    image_size = ecfg.image_size or model.spec["image_size"]
    probe = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    dim = mean_view_embeddings(model, probe, SimCLRAugment(size=image_size), 0,
                               ecfg.feature).shape[1]
    inputs = {"shards": shards["fingerprint"], "proxy": encoder_fingerprint(model)}
    del model
    settings = {"views": ecfg.views, "dtype": ecfg.dtype, "feature": ecfg.feature,
                "image_size": image_size}
    seed = cfg.run.seed
    fp = storage.stage_fingerprint(STAGE, settings, inputs, seed)
    if storage.is_fresh(out, fp):
        log.info("embeddings at %s are up to date; reusing them", out)
        return storage.require_manifest(out, STAGE)

    ray = ensure_ray(cfg.run)
    res = actor_resources(ecfg, expected.size, cluster_cpus(), _node_cpus(), cluster_gpus())
    existed = storage.exists(out)
    start = time.perf_counter()
    try:
        with storage.write_artifact(out, STAGE, config=settings, inputs=inputs, seed=seed) as w:
            ds = read_dataset(data_uri, split="train", columns=["id", "image", "label"])
            # blocks of one batch, so that the actors share a shard instead of one taking it all
            ds = ds.repartition(target_num_rows_per_block=ecfg.batch_size)
            with warnings.catch_warnings():  # Ray 2.60 has no named max_restarts parameter
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                ds = ds.map_batches(
                    EmbedActor, batch_format="pyarrow", batch_size=ecfg.batch_size,
                    compute=ray.data.ActorPoolStrategy(size=res["num_actors"]),
                    num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                    max_restarts=MAX_ACTOR_RESTARTS, max_task_retries=MAX_ACTOR_RESTARTS,
                    fn_constructor_kwargs={
                        "proxy": proxy, "views": ecfg.views, "feature": ecfg.feature,
                        "dtype": ecfg.dtype, "seed": seed, "image_size": image_size,
                        "threads": res["threads"],
                        "device": "cuda" if res["num_gpus"] else "cpu",
                        "fault": os.environ.get(FAULT_ENV)})
            fs, path = storage.filesystem(w.dir)
            ds.write_parquet(path, filesystem=fs, min_rows_per_file=ROWS_PER_FILE)
            _verify_ids([f for f in storage.list_files(w.dir) if f.endswith(".parquet")],
                        expected)
            w.meta.update(settings, dim=dim, num_rows=int(expected.size), proxy=proxy,
                          proxy_fingerprint=inputs["proxy"], num_actors=res["num_actors"],
                          seconds=round(time.perf_counter() - start, 2))
    except BaseException:
        if not existed:
            storage.delete(out)
        raise
    log.info("embedded %d train examples in %.1f s -> %s", expected.size,
             time.perf_counter() - start, out)
    return storage.require_manifest(out, STAGE)


def cli_embed(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray embed --data SHARDS --proxy CHECKPOINT --out DIR``."""
    manifest = embed(cfg, args.data, args.proxy, args.out)
    meta = manifest["meta"]
    print(f"embeddings: {meta['num_rows']:,} train examples x {meta['dim']} ({meta['dtype']}, "
          f"{meta['views']} view(s), {meta['feature']}) -> {args.out}")
