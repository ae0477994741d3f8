"""Latent stage: embeddings -> approximate latent classes, committed as a ``partition``.

The methods (labels, few labels + a linear classifier, k-means) live in
:mod:`sas_ray.core.selection.latent`; this stage reads the embeddings, fingerprints the
settings and inputs, and commits one Parquet file: ``id`` int64, ``latent_class`` int64 (see
:mod:`sas_ray.io.artifacts`). Meta: ``method``, ``k`` (number of classes), ``sizes`` (class ->
rows), ``purity``/``nmi`` against the labels (null without labels), ``labeled_rows``,
``merged`` (small classes folded into others), ``num_rows``, ``seconds``. It runs in the
calling process on either executor (one pass over an (n, d) matrix).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from sas_ray.config import Config, result_settings
from sas_ray.core.selection.latent import latent_classes
from sas_ray.io import storage
from sas_ray.io.artifacts import EMBEDDINGS, PARTITION, commit_table, read_embeddings

log = logging.getLogger(__name__)


def class_sizes(latent: np.ndarray) -> dict[str, int]:
    """``{str(class): rows}`` of a latent-class vector, in class order."""
    values, counts = np.unique(latent, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def partition(cfg: Config, embeddings_uri: str, out: str) -> dict[str, Any]:
    """Latent classes of the embeddings at ``embeddings_uri`` (``cfg.latent``), committed as
    a ``partition`` artifact at ``out``; returns its manifest (reused when up to date)."""
    emb = read_embeddings(embeddings_uri)
    config = result_settings(cfg.latent)
    inputs = {EMBEDDINGS: emb.fingerprint}
    seed = cfg.run.seed
    if storage.is_fresh(out, storage.stage_fingerprint(PARTITION, config, inputs, seed)):
        log.info("partition at %s is up to date; reusing it", out)
        return storage.require_manifest(out, PARTITION)
    start = time.perf_counter()
    part = latent_classes(emb.x, emb.labels, cfg.latent, seed)
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
