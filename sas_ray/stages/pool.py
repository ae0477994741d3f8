"""The pool stage: a seeded, class-stratified subset of the train split (``data.pool_size``
images), committed as a ``shards`` artifact that every later stage reads instead of the
full shards (proxy, embeddings, latent classes, rankings, trials and their evaluation).
Every other split (e.g. test) is kept whole.

Stratified: with K classes, class c gets ``floor(size / K)`` rows, plus one for the first
``size mod K`` classes (in label order), drawn without replacement by
``numpy.random.default_rng(data.pool_seed)``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.io.shards import STAGE, read_table, verify_commit, write_shard


def stratified(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``size`` rows of ``labels`` (n,) with (nearly) equal counts per
    class; all rows when ``size >= n``."""
    if size >= labels.shape[0]:
        return np.arange(labels.shape[0])
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per, extra = divmod(size, classes.size)
    rows = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        take = per + (i < extra)
        if take > members.size:
            raise SasRayError(f"class {c} has {members.size} train images, fewer than the {take} "
                              f"a stratified pool of {size} needs; lower --data.pool_size")
        rows.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(rows))


def _splits(table: Any, class_names: list[str]) -> dict[str, dict[str, Any]]:
    """The manifest's ``splits`` entry of a shards table."""
    out: dict[str, dict[str, Any]] = {}
    splits = table.column("split").to_numpy(zero_copy_only=False)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    for split in dict.fromkeys(splits.tolist()):
        mine = labels[splits == split]
        known = mine[~np.isnan(mine.astype(np.float64))].astype(np.int64)
        counts = np.bincount(known, minlength=len(class_names))
        out[split] = {"images": int(mine.size), "no_label": int(mine.size - known.size),
                      "per_class": {n: int(c) for n, c in zip(class_names, counts, strict=True)}}
    return out


def make_pool(cfg: Config, shards_uri: str, shards: dict[str, Any], out: str
              ) -> dict[str, Any]:
    """Commit the pool of the shards at ``shards_uri`` (``shards``: their manifest) at ``out``
    as a ``shards`` artifact; returns its manifest (reused when up to date)."""
    size, seed = cfg.data.pool_size, cfg.data.pool_seed
    config = {"pool_size": size, "pool_seed": seed, "shard_size": cfg.data.shard_size}
    inputs = {"shards": shards["fingerprint"]}
    if storage.is_fresh(out, storage.stage_fingerprint(STAGE, config, inputs, None)):
        return storage.require_manifest(out, STAGE)
    start = time.perf_counter()
    table = read_table(shards_uri)
    is_train = (table.column("split").to_numpy(zero_copy_only=False) == "train")
    train_rows = np.flatnonzero(is_train)
    train_labels = table.column("label").to_numpy(zero_copy_only=False)[train_rows]
    if np.isnan(train_labels.astype(np.float64)).any():
        raise SasRayError(f"the train split of {shards_uri} has unlabelled images; a "
                          "stratified pool needs a label for each")
    keep = np.sort(np.concatenate([train_rows[stratified(train_labels.astype(np.int64), size,
                                                         seed)],
                                   np.flatnonzero(~is_train)]))
    table = table.take(keep).sort_by("id")
    meta = dict(shards["meta"])
    with storage.write_artifact(out, STAGE, config=config, inputs=inputs,
                                verify=verify_commit) as w:
        step = cfg.data.shard_size
        for i, begin in enumerate(range(0, table.num_rows, step)):
            write_shard(table.slice(begin, step), storage.join(w.dir, f"pool-{i:05d}.parquet"))
        meta.update(splits=_splits(table, meta["class_names"]), num_images=table.num_rows,
                    image_bytes=int(table.column("image").nbytes),
                    num_shards=-(-table.num_rows // step),
                    pool={"size": int(min(size, train_rows.size)), "seed": seed,
                          "of": int(train_rows.size), "source_shards": shards_uri,
                          "seconds": round(time.perf_counter() - start, 2)})
        w.meta.update(meta)
    return storage.require_manifest(out, STAGE)
