"""Embedding stage: every train image -> the mean of its unit-normalised view embeddings.

The formula, and why it estimates SAS's s_ij, live with the Ray-free core in
:mod:`sas_ray.core.embedding`. The work per batch is two halves, which the executor streams
the train split's shards through (:meth:`~sas_ray.executors.base.Executor.map_batches`),
writing Parquet straight into the artifact's staging directory: :func:`decode_batch` on CPUs
(Ray Data's read tasks, on any node; a thread one batch ahead in this process) and the batch
class :class:`EmbedBatch` (views -> mean unit view embedding; Ray actors, on GPUs where there
are some). This module plans, fingerprints, checks and commits.

Output columns: ``id`` int64, ``label`` int64 (nullable), ``emb``
fixed_size_list<float32|float16>[dim], rows in no particular order. Views are seeded per
``(run.seed, id)`` and every executor cuts the same batches, so both executors write the same
embeddings, and the fingerprint (shards, encoder, settings, seed) does not name the executor:
an artifact made by one is reused by the other. Before committing, the stage reads back the
``id`` column and checks that every train id was embedded exactly once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sas_ray.config import Config, EmbedConfig, result_settings
from sas_ray.core.data.augment import SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.embedding import encoder_fingerprint, mean_view_embeddings
from sas_ray.core.memory import keep_freed_memory
from sas_ray.core.models.encoders import EncoderRef
from sas_ray.core.seeding import example_keys
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor, Workers
from sas_ray.io import storage
from sas_ray.io.artifacts import EMBEDDINGS as STAGE
from sas_ray.io.artifacts import encoder_file
from sas_ray.io.shards import read_table

log = logging.getLogger(__name__)

FEATURES = ("projection", "backbone")
DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}
COLUMNS = ["id", "image", "label"]  # the shard columns a batch needs


def decode_batch(batch: pa.Table, image_size: int) -> pa.Table:
    """The CPU half of a batch: shard rows (``id``, ``image`` encoded bytes, ``label``) ->
    ``id``, ``label``, ``pixels`` (each row one :func:`~sas_ray.core.data.images.
    decode_images` image, ``(image_size, image_size, 3)`` uint8 flattened into a
    fixed-size list)."""
    pixels = decode_images(batch["image"].to_pylist(), size=image_size)
    flat = pa.array(pixels.reshape(-1), pa.uint8())
    return pa.table({"id": batch["id"], "label": batch["label"],
                     "pixels": pa.FixedSizeListArray.from_arrays(flat, image_size**2 * 3)})


def batch_pixels(batch: pa.Table, image_size: int) -> torch.Tensor:
    """The ``pixels`` of a :func:`decode_batch` table as uint8 ``(n, 3, size, size)``."""
    flat = batch["pixels"].combine_chunks().flatten().to_numpy(zero_copy_only=False,
                                                                 writable=True)
    return to_nchw(flat.reshape(-1, image_size, image_size, 3))


class EmbedBatch:
    """A batch of :func:`decode_batch` rows (``id``, ``label``, ``pixels``) -> a table of
    ``id``, ``label``, ``emb`` (:func:`output_schema`).

    Built once per worker: loads the proxy (eval mode) onto ``device``, uses ``threads``
    torch threads and keeps freed memory (:func:`~sas_ray.core.memory.keep_freed_memory`).
    Images come decoded to ``image_size``; the embedding of each is
    :func:`~sas_ray.core.embedding.mean_view_embeddings` of ``views`` views drawn from its
    ``(seed, id)`` keys (``views=0``: the plain image), normalised with the encoder's own
    mean/std; on a GPU under bf16 autocast when ``amp``.
    """

    def __init__(self, proxy: EncoderRef, views: int, feature: str, dtype: str, seed: int,
                 image_size: int, threads: int, device: str = "cpu", amp: bool = True) -> None:
        torch.set_num_threads(threads)
        keep_freed_memory()  # each batch's activations reuse the last one's memory
        self.device = torch.device(device)
        self.model = proxy.load(storage.FILES).to(self.device)
        self.augment = SimCLRAugment(size=image_size, mean=self.model.mean, std=self.model.std)
        self.views, self.feature, self.seed, self.image_size = views, feature, seed, image_size
        self.dtype, self.amp = dtype, amp and self.device.type == "cuda"

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch["id"].to_numpy()
        images = batch_pixels(batch, self.image_size)
        keys = example_keys(ids, self.seed).to(self.device) if self.views > 0 else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            emb = mean_view_embeddings(self.model, images.to(self.device), self.augment,
                                       self.views, self.feature, keys)
        np_dtype, pa_dtype = DTYPES[self.dtype]
        flat = pa.array(emb.cpu().numpy().astype(np_dtype).ravel(), pa_dtype)
        return pa.table([batch["id"], batch["label"],
                         pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])],
                        schema=output_schema(emb.shape[1], self.dtype))


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


def embed(cfg: Config, data_uri: str, proxy: str | EncoderRef, out: str,
          executor: Executor | None = None,
          batch_class: type[EmbedBatch] = EmbedBatch) -> dict[str, Any]:
    """Embed the train split of the shards at ``data_uri`` with the encoder ``proxy`` (a
    registry entry, :mod:`sas_ray.core.models.encoders`; a path: a sas-ray checkpoint, a
    directory holding one, or torchvision ResNet weights; local or ``s3://``) and commit an
    ``embeddings`` artifact at ``out``; returns its manifest.

    The batches run on ``executor`` (default: the one ``run.executor`` names) through
    ``batch_class`` (tests pass a subclass that injects faults). An artifact at ``out`` made
    from the same shards, encoder and settings is reused. On any error nothing is left at
    ``out`` (a previous artifact there stays as it was).
    """
    ecfg = cfg.embed
    _check_config(ecfg)
    shards = storage.require_manifest(data_uri, "shards")
    expected = read_table(data_uri, split="train", columns=["id"])["id"].to_numpy()
    if expected.size == 0:
        raise SasRayError(f"shards at {data_uri} have no 'train' examples; ingest a source "
                          "with a train split")
    ref = proxy if isinstance(proxy, EncoderRef) else EncoderRef("sas-ray", proxy)
    if ref.name == "sas-ray" and ref.weights is not None:  # any output that holds an encoder
        ref = dataclasses.replace(ref, weights=encoder_file(ref.weights))
    model = ref.load(storage.FILES)
    image_size = ecfg.image_size or model.spec["image_size"]
    probe = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    dim = mean_view_embeddings(model, probe, SimCLRAugment(size=image_size), 0,
                               ecfg.feature).shape[1]
    inputs = {"shards": shards["fingerprint"], "proxy": encoder_fingerprint(model)}
    del model
    settings = {**result_settings(ecfg), "image_size": image_size}
    seed = cfg.run.seed
    fp = storage.stage_fingerprint(STAGE, settings, inputs, seed)
    if storage.is_fresh(out, fp):
        log.info("embeddings at %s are up to date; reusing them", out)
        return storage.require_manifest(out, STAGE)

    executor = executor or get_executor(cfg)
    existed = storage.exists(out)
    start = time.perf_counter()
    try:
        with storage.write_artifact(out, STAGE, config=settings, inputs=inputs, seed=seed) as w:
            used = executor.map_batches(
                batch_class, {"proxy": ref, "views": ecfg.views, "feature": ecfg.feature,
                              "dtype": ecfg.dtype, "seed": seed, "image_size": image_size,
                              "amp": ecfg.amp},
                data_uri, "train", COLUMNS, ecfg.batch_size, w.dir,
                Workers(count=ecfg.num_actors, cpus=ecfg.cpus_per_actor, threads=ecfg.threads,
                        gpus=ecfg.gpus_per_actor),
                prepare=functools.partial(decode_batch, image_size=image_size))
            _verify_ids([f for f in storage.list_files(w.dir) if f.endswith(".parquet")],
                        expected)
            w.meta.update(settings, dim=dim, num_rows=int(expected.size), proxy=ref.weights,
                          encoder=ref.name, data=data_uri,
                          proxy_fingerprint=inputs["proxy"], executor=executor.name, **used,
                          seconds=round(time.perf_counter() - start, 2))
    except BaseException:
        if not existed:
            storage.delete(out)
        raise
    log.info("embedded %d train examples in %.1f s on the %s executor -> %s", expected.size,
             time.perf_counter() - start, executor.name, out)
    return storage.require_manifest(out, STAGE)


def cli_embed(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray embed --data SHARDS --proxy.checkpoint CHECKPOINT --out DIR`` (or
    ``--proxy.encoder NAME --proxy.weights PATH``: a pretrained encoder)."""
    from sas_ray.stages.proxy import encoder_ref

    ref = encoder_ref(cfg)
    assert ref is not None  # the CLI's validation requires a proxy
    manifest = embed(cfg, args.data, ref, args.out)
    meta = manifest["meta"]
    print(f"embeddings: {meta['num_rows']:,} train examples x {meta['dim']} ({meta['dtype']}, "
          f"{meta['views']} view(s), {meta['feature']}) -> {args.out}")
