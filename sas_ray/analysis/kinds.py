"""What each subset kept of the examples a source tagged as near-duplicates or junk.

A source that knows what its examples are (the built-in synthetic pool:
:data:`~sas_ray.core.data.sources.synthetic.KINDS`) lists the ids of every kind in its shards'
manifest (``meta.kinds``). For a subset ``S`` of a pool ``P`` (the ids its ranking ranked)
the report shows, per kind group ``G`` (duplicates; junk = blank, noise, off-class images),
the share kept ``100 |S & G| / |P & G|`` in percent. A uniform random subset at fraction
``f`` keeps about ``100 f`` % of each; a selection that removes redundancy keeps fewer
duplicates, one that prefers typical examples fewer junk images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from sas_ray.analysis.records import TrialRecord
from sas_ray.core.data.sources.synthetic import JUNK
from sas_ray.io import storage
from sas_ray.io.artifacts import load_ranking

GROUPS = {"duplicates": ("duplicate",), "junk": JUNK}  # column -> kinds it counts
Kinds = Mapping[str, np.ndarray]  # kind -> ids (int64)


def read_kinds(shards: str | None) -> dict[str, np.ndarray]:
    """``meta.kinds`` of the shards at ``shards`` as id arrays ({} when absent/unknown)."""
    manifest = storage.read_manifest(shards) if shards else None
    kinds = (manifest or {}).get("meta", {}).get("kinds", {})
    return {k: np.asarray(v, dtype=np.int64) for k, v in kinds.items()}


def group_ids(kinds: Kinds) -> dict[str, np.ndarray]:
    """Ids per :data:`GROUPS` column, for the groups the source has at least one of."""
    out = {}
    for group, members in GROUPS.items():
        ids = np.concatenate([kinds[k] for k in members if k in kinds] or [np.empty(0, int)])
        if ids.size:
            out[group] = ids
    return out


def kept_shares(kept: np.ndarray, pool: np.ndarray, kinds: Kinds) -> dict[str, float]:
    """Percent of each group's examples in ``pool`` that ``kept`` holds (NaN: none there)."""
    out = {}
    for group, ids in group_ids(kinds).items():
        present = np.intersect1d(ids, pool)
        out[group] = (100.0 * np.isin(present, kept).sum() / present.size if present.size
                      else math.nan)
    return out


def cell_shares(records: Sequence[TrialRecord], kinds: Kinds
                ) -> dict[tuple[str, float], dict[str, float]]:
    """Per (strategy, fraction) of the finished records: :func:`kept_shares` of its subset
    (the same for every seed: the ranking is cut the same way). Full data keeps 100 %."""
    groups = group_ids(kinds)
    if not groups:
        return {}
    out: dict[tuple[str, float], dict[str, float]] = {}
    for r in records:
        key = (r.strategy, round(r.fraction, 6))
        if not r.finished or key in out:
            continue
        if r.ranking is None:
            out[key] = dict.fromkeys(groups, 100.0)
            continue
        ranking = load_ranking(r.ranking)
        out[key] = kept_shares(ranking.subset(r.fraction), ranking.ids, kinds)
    return out
