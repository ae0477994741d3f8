"""What a subset costs before its training: the proxy, the embeddings, the latent classes and
the ranking, in seconds, from the pipeline's record of its stages (``pipeline.json``).

A strategy pays for what it reads: ``random`` only its ranking; ``random-balanced`` also the
latent classes; every other strategy also the proxy training and the embeddings. A stage's
seconds are the time it took when it last ran (cached stages keep that time: the cost of
producing the subset, not of looking it up). A given proxy checkpoint costs nothing here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sas_ray.analysis.records import FULL, TrialRecord
from sas_ray.io import storage

STATE_FILE = "pipeline.json"  # written by sas_ray.pipeline next to sweep/ and report/
EMBEDDING_FREE = frozenset({"random", "random-balanced"})  # no proxy, no embeddings
LATENT_FREE = frozenset({"random"})  # no latent classes either

Stages = Mapping[str, Mapping[str, Any]]  # stage name -> {"seconds", "uri", ...}


def read_stages(sweep: str) -> dict[str, dict[str, Any]]:
    """The stages recorded in ``pipeline.json`` next to the sweep at ``sweep`` ({} if none)."""
    uri = storage.join(os.path.dirname(sweep.rstrip("/")) or ".", STATE_FILE)
    return storage.read_json(uri).get("stages", {}) if storage.exists(uri) else {}


def _seconds(entry: Mapping[str, Any] | None) -> float:
    return float(entry.get("seconds") or 0.0) if entry and not entry.get("given") else 0.0


def selection_seconds(stages: Stages, record: TrialRecord) -> float | None:
    """Seconds spent producing ``record``'s subset (0 for full data); None when the stages
    do not record its ranking."""
    if record.strategy == FULL:
        return 0.0
    ranking = next((e for e in stages.values() if e.get("uri") == record.ranking), None)
    if ranking is None:
        return None
    strategy = record.strategy.split("/")[0]
    total = _seconds(ranking)
    if strategy not in LATENT_FREE and record.latent is not None:
        total += _seconds(stages.get(f"partition/{record.latent}"))
    if strategy not in EMBEDDING_FREE:
        total += _seconds(stages.get("proxy")) + _seconds(stages.get("embeddings"))
    return total
