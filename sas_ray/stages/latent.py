"""Latent stage: embeddings -> approximate latent classes, committed as a ``partition``.

The methods (labels, few labels + a linear classifier, k-means, CLIP zero-shot) live in
:mod:`sas_ray.core.selection.latent`; for ``clip-zeroshot`` this stage loads the text tower of
the open_clip encoder that made the embeddings and embeds the class names (the shards' or
``latent.class_names_file``'s, part of the fingerprint) in ``latent.prompts``. The stage
reads the embeddings, fingerprints the settings and inputs, and commits one Parquet file:
``id`` int64, ``latent_class`` int64 (see :mod:`sas_ray.io.artifacts`). Meta: ``method``,
``k`` (number of classes), ``sizes`` (class -> rows), ``purity``/``nmi`` against the labels
(null without labels), ``labeled_rows``, ``merged`` (small classes folded into others),
``num_rows``, ``seconds``. It runs in the calling process on either executor (one pass over an
(n, d) matrix).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from sas_ray.config import Config, result_settings
from sas_ray.core.models.encoders import parse
from sas_ray.core.models.encoders.open_clip_models import load_text
from sas_ray.core.selection.latent import latent_classes
from sas_ray.core.selection.zeroshot import class_embeddings
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.io.artifacts import EMBEDDINGS, PARTITION, commit_table, read_embeddings

log = logging.getLogger(__name__)


def class_sizes(latent: np.ndarray) -> dict[str, int]:
    """``{str(class): rows}`` of a latent-class vector, in class order."""
    values, counts = np.unique(latent, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def class_names(cfg: Config, embeddings: dict[str, Any]) -> list[str]:
    """clip-zeroshot's class names: ``latent.class_names_file`` (one per line), else the
    class names of the shards the embeddings (``embeddings``: their manifest) were made from."""
    if cfg.latent.class_names_file:
        text = storage.read_bytes(cfg.latent.class_names_file).decode()
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = embeddings["meta"].get("data")
    if data is None:
        raise SasRayError("these embeddings do not record their shards; pass "
                          "--latent.class_names_file FILE or rerun `sas-ray embed`")
    return storage.require_manifest(data, "shards")["meta"]["class_names"]


def zeroshot_embeddings(cfg: Config, embeddings: dict[str, Any], names: list[str]) -> np.ndarray:
    """The text embeddings ``(C, e)`` of ``names`` by the text tower of the open_clip encoder
    that made the embeddings (``embeddings``: their manifest)."""
    meta = embeddings["meta"]
    kind, arch = parse(meta.get("encoder", "sas-ray"))
    if kind != "open_clip" or meta["feature"] != "projection":
        raise SasRayError(f"latent.method clip-zeroshot needs embeddings of an open_clip "
                          f"encoder's projection; these are {meta.get('encoder', 'sas-ray')}'s "
                          f"{meta['feature']}: set --proxy.encoder open_clip:ARCH "
                          "--embed.feature projection")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tower = load_text(arch, meta["proxy"], storage.FILES, cfg.proxy.allow_download, device)
    return class_embeddings(tower.encode, names, cfg.latent.prompts)


def partition(cfg: Config, embeddings_uri: str, out: str) -> dict[str, Any]:
    """Latent classes of the embeddings at ``embeddings_uri`` (``cfg.latent``), committed as
    a ``partition`` artifact at ``out``; returns its manifest (reused when up to date)."""
    emb = read_embeddings(embeddings_uri)
    config = result_settings(cfg.latent)
    zeroshot = cfg.latent.method == "clip-zeroshot"
    if zeroshot:
        manifest = storage.require_manifest(embeddings_uri, EMBEDDINGS)
        config["class_names"] = names = class_names(cfg, manifest)
    inputs = {EMBEDDINGS: emb.fingerprint}
    seed = cfg.run.seed
    if storage.is_fresh(out, storage.stage_fingerprint(PARTITION, config, inputs, seed)):
        log.info("partition at %s is up to date; reusing it", out)
        return storage.require_manifest(out, PARTITION)
    start = time.perf_counter()
    text = zeroshot_embeddings(cfg, manifest, names) if zeroshot else None
    part = latent_classes(emb.x, emb.labels, cfg.latent, seed, class_embeddings=text)
    agree = part.agreement or {}
    meta = {"method": part.method, "k": part.num_classes, "sizes": class_sizes(part.classes),
            "purity": agree.get("purity"), "nmi": agree.get("nmi"),
            "labeled_rows": agree.get("rows", 0),
            "merged": {str(k): v for k, v in part.merged.items()},
            "num_rows": int(emb.ids.size), "seconds": round(time.perf_counter() - start, 2)}
    table = pa.table({"id": pa.array(emb.ids, pa.int64()),
                      "latent_class": pa.array(part.classes, pa.int64())})
    return commit_table(out, PARTITION, table, meta, config, inputs, seed)


def cli_latent(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray latent --embeddings DIR --out DIR``."""
    meta = partition(cfg, args.embeddings, args.out)["meta"]
    agree = ("" if meta["purity"] is None else
             f", purity {meta['purity']:.3f}, NMI {meta['nmi']:.3f} on "
             f"{meta['labeled_rows']:,} labeled rows")
    merged = f", {len(meta['merged'])} small class(es) merged" if meta["merged"] else ""
    print(f"partition: {meta['num_rows']:,} rows in {meta['k']} latent classes by "
          f"{meta['method']}{agree}{merged} -> {args.out}")
