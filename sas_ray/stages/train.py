"""The train stage: ``sas-ray train`` on the executor of ``run.executor``.

The ids to train on come from a subset argument (:func:`read_subset`); the executor's ``fit``
(:meth:`sas_ray.executors.base.Executor.fit`) checks them against the data, claims the run
directory and trains, resumably.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.io import storage


def read_subset(uri: str, fraction: float | None = None, data: str | None = None) -> np.ndarray:
    """Train ids from a ranking artifact (cut at ``fraction``; computed on the shards at
    ``data`` when given) or a subset manifest: a JSON list of ids, a JSON object
    ``{"ids": [...]}``, or a Parquet file with an ``id`` column."""
    if fraction is not None and not 0 < fraction <= 1:
        raise SasRayError(f"fraction {fraction} is out of range (0, 1]; pass e.g. --fraction 0.4")
    manifest = storage.read_manifest(uri) if not uri.endswith((".json", ".parquet")) else None
    if manifest is not None:
        if manifest.get("stage") != "ranking":
            raise SasRayError(f"{uri} holds a '{manifest.get('stage')}' artifact; --subset takes "
                              "a ranking (sas-ray select) or a list of ids (.json/.parquet)")
        from sas_ray.io.artifacts import subset_ids

        return np.asarray(subset_ids(uri, fraction, data), dtype=np.int64)
    if not storage.exists(uri):
        raise SasRayError(f"subset {uri} does not exist; pass a ranking directory or a "
                          ".json/.parquet list of ids")
    if fraction is not None:
        raise SasRayError(f"--fraction applies to rankings, but {uri} is a fixed list of ids; "
                          "drop --fraction or pass a ranking")
    try:
        if uri.endswith(".parquet"):
            import pyarrow.parquet as pq

            fs, path = storage.filesystem(uri)
            ids = pq.read_table(path, filesystem=fs, columns=["id"]).column("id").to_numpy()
        else:
            obj = storage.read_json(uri)
            ids = np.asarray(obj["ids"] if isinstance(obj, dict) else obj)
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise SasRayError(f"cannot read ids from {uri} ({type(err).__name__}: {err}); write a "
                          "JSON list of ids or a Parquet file with an 'id' column") from err
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise SasRayError(f"{uri} must hold a flat list of integer ids")
    return ids.astype(np.int64)


def cli_train(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray train --data D [--subset S [--fraction F]] --out O``."""
    if args.fraction is not None and not args.subset:
        raise SasRayError("--fraction cuts a ranking; pass the ranking with --subset")
    ids = read_subset(args.subset, args.fraction, args.data) if args.subset else None
    executor = get_executor(cfg)
    try:
        summary = executor.fit(cfg, args.data, args.out, ids)
    finally:
        executor.close()
    m = summary["metrics"]
    print(json.dumps({"epochs": m["epoch"], "loss": round(m["loss"], 4),
                      "images_per_s": round(m["images_per_s"], 1),
                      "images_per_epoch": summary["num_images"],
                      "seconds": round(summary["seconds"], 1),
                      "checkpoint": summary["checkpoint"]}))
