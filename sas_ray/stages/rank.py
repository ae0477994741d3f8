"""Rank stage: embeddings + partition + a strategy -> a ``ranking`` artifact.

One Parquet file (see :mod:`sas_ray.io.artifacts`): ``id``, ``rank`` (0 = best), ``score``,
``latent_class``, sorted by rank; the subset for a fraction f is the rows with
``rank < floor(f n + 1/2)``. Meta: ``strategy``, ``nested``, ``balanced``, ``seed``,
``fraction`` (non-nested only), ``num_rows``, ``sizes``, ``seconds``.

The per-class work of a strategy goes through the executor's
:meth:`~sas_ray.executors.base.Executor.class_map` (Ray tasks, or a local process pool, over
groups of latent classes, ``select.num_workers`` at a time). Per-class results depend only on
the class and the seed, so the merged ranking is the single-process one on either executor.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from sas_ray.config import Config, result_settings
from sas_ray.core.selection.ranking import check_fraction
from sas_ray.core.selection.registry import RANK_LIMITED, get_selector, is_nested
from sas_ray.errors import SasRayError
from sas_ray.executors import get_executor
from sas_ray.executors.base import Executor
from sas_ray.io import storage
from sas_ray.io.artifacts import (
    EMBEDDINGS,
    PARTITION,
    RANKING,
    commit_table,
    load_ranking,
    ranking_table,
    read_embeddings,
    read_partition,
)
from sas_ray.stages import incremental
from sas_ray.stages.latent import class_sizes

log = logging.getLogger(__name__)


def _ranking_config(cfg: Config, strategy: str, fraction: float | None,
                    limit: float) -> dict[str, Any]:
    config = {"strategy": strategy, "fraction": fraction, "select": result_settings(cfg.select)}
    return config | ({"rank_limit": limit} if limit < 1.0 else {})


def rank(cfg: Config, embeddings_uri: str, partition_uri: str, strategy: str, out: str,
         fraction: float | None = None, executor: Executor | None = None,
         rank_limit: float | None = None) -> dict[str, Any]:
    """Rank the embeddings with ``strategy`` within the latent classes of the partition and
    commit a ``ranking`` artifact at ``out``; returns its manifest (reused when up to date).

    ``fraction`` is needed by strategies that are not nested (``sas`` with
    ``select.double_greedy``) and ignored by the others. ``rank_limit`` (default
    ``select.rank_limit``; the pipeline passes its largest swept fraction): the largest
    fraction a nested rank-limited strategy (``sas``) must rank exactly.
    """
    selector = get_selector(strategy)
    nested = is_nested(strategy, cfg.select)
    if fraction is not None:
        check_fraction(fraction)
    if not nested and fraction is None:
        raise SasRayError(f"strategy '{strategy}' with these settings ranks for one fraction "
                          "only; pass --fraction")
    fraction = None if nested else fraction
    if cfg.select.incremental and incremental.applies(strategy, nested):
        done = incremental.rank_incremental(cfg, embeddings_uri, partition_uri, strategy, out,
                                            executor)
        if done is not None:
            return done
    limit = 1.0
    if nested and strategy in RANK_LIMITED and not cfg.select.incremental:  # kept whole
        limit = check_fraction(cfg.select.rank_limit if rank_limit is None else rank_limit)
    emb = read_embeddings(embeddings_uri)
    latent, part_fp = read_partition(partition_uri, emb.ids)
    config = _ranking_config(cfg, strategy, fraction, limit)
    inputs = {EMBEDDINGS: emb.fingerprint, PARTITION: part_fp}
    seed = cfg.run.seed
    if storage.is_fresh(out, storage.stage_fingerprint(RANKING, config, inputs, seed)):
        log.info("ranking at %s is up to date; reusing it", out)
        return storage.require_manifest(out, RANKING)
    start = time.perf_counter()
    ranking = selector(emb.x, latent, fraction, seed,
                       dataclasses.replace(cfg.select, rank_limit=limit), emb.labels,
                       map_classes=(executor or get_executor(cfg)).class_map(
                           cfg.select.num_workers))
    table = ranking_table(emb.ids, ranking)
    files, meta_classes = incremental.class_state(cfg, strategy, nested, ranking, emb)
    meta = {"strategy": strategy, "nested": ranking.nested, "balanced": ranking.balanced,
            "seed": seed, "fraction": ranking.fraction, "rank_limit": ranking.limit,
            "num_rows": int(emb.ids.size), "shards": emb.shards,
            "sizes": class_sizes(latent), "seconds": round(time.perf_counter() - start, 2)}
    return commit_table(out, RANKING, table, meta | meta_classes, config, inputs, seed, files)


def cli_select(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray select --embeddings DIR --partition DIR --out DIR``: every strategy of
    ``select.strategies`` at ``OUT/<strategy>``, a non-nested one for every fraction of
    ``sweep.fractions`` at ``OUT/<strategy>/f<fraction>`` (the pipeline's rankings/ layout);
    ``--incremental PREVIOUS`` sets ``select.incremental``."""
    if args.incremental:
        cfg.select.incremental = args.incremental
    for strategy in dict.fromkeys(cfg.select.strategies):
        nested = is_nested(strategy, cfg.select)
        for fraction in [None] if nested else sorted(set(cfg.sweep.fractions)):
            out = storage.join(args.out, strategy, *([] if nested else [f"f{fraction:.4g}"]))
            meta = rank(cfg, args.embeddings, args.partition, strategy, out, fraction)["meta"]
            kind = "nested" if meta["nested"] else f"for fraction {meta['fraction']}"
            print(f"ranking: {meta['strategy']} ({kind}) of {meta['num_rows']:,} rows in "
                  f"{len(meta['sizes'])} latent classes in {meta['seconds']} s -> {out}")


def cli_subset_info(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray subset-info RANKING [--fraction F] [--compare OTHER_RANKING]``."""
    ranking = load_ranking(args.subset)
    fraction = args.fraction if args.fraction is not None else ranking.ranking.fraction
    if fraction is None:
        raise SasRayError(f"{args.subset} is a nested ranking; pass --fraction to pick a "
                          "subset (e.g. --fraction 0.4)")
    chosen = ranking.ranking.cut(fraction)
    n = ranking.ids.size
    print(f"{args.subset}: strategy {ranking.strategy}, "
          f"{'nested' if ranking.ranking.nested else 'not nested'}, {n:,} rows")
    print(f"subset at fraction {fraction}: {chosen.size:,} rows")
    grown = storage.require_manifest(args.subset, RANKING)["meta"].get("incremental")
    if grown:
        print(f"incremental from {grown['previous']} ({grown['greedy']}): "
              f"{grown['new_rows']:,} new rows; classes "
              + ", ".join(f"{grown['classes'].get(k, 0)} {k}" for k in incremental.HOW))
    values, total = np.unique(ranking.ranking.latent, return_counts=True)
    kept = np.unique(ranking.ranking.latent[chosen], return_counts=True)
    kept_by = dict(zip(kept[0].tolist(), kept[1].tolist(), strict=True))
    print(f"{'class':>8} {'kept':>8} {'of':>8} {'share':>7}")
    for v, t in zip(values.tolist(), total.tolist(), strict=True):
        k = kept_by.get(v, 0)
        print(f"{v:>8} {k:>8} {t:>8} {k / t:>7.3f}")
    if args.compare:
        other = load_ranking(args.compare)
        mine, theirs = set(ranking.ids[chosen].tolist()), set(other.subset(fraction).tolist())
        both = len(mine & theirs)
        print(f"overlap with {args.compare} ({other.strategy}) at fraction {fraction}: "
              f"{both:,} rows, Jaccard {both / len(mine | theirs):.3f}")
