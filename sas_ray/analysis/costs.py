"""What a subset costs before its training: the proxy, the embeddings, the latent classes and
the ranking, in seconds, from the pipeline's record of its stages (``pipeline.json``).

A strategy pays for what it reads: ``random`` only its ranking; ``random-balanced`` also the
latent classes; every other strategy also the proxy training and the embeddings. Each cost is
the compute its artifact recorded (:func:`compute_seconds`), measured as a trial's training
time is: the proxy's epochs (its run's ``metrics.json``), the embedding, latent-class and
ranking stages' own ``meta.seconds`` - not the wall time of a stage, which includes starting
Ray. Cached stages keep the cost of producing them. A given proxy costs nothing here.
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


def _proxy_seconds(meta: Mapping[str, Any]) -> float | None:
    """The proxy run's training time (its last epoch's ``train_seconds``), as a trial's."""
    run = (meta.get("alias") or {}).get("run")
    uri = storage.join(run, "metrics.json") if run else None
    if uri is not None and storage.exists(uri):
        history = storage.read_json(uri).get("history") or [{}]
        if "train_seconds" in history[-1]:
            return float(history[-1]["train_seconds"])
    return meta.get("train_seconds")


def compute_seconds(stages: Stages) -> dict[str, dict[str, Any]]:
    """``stages`` with each entry's ``seconds`` replaced by the compute its artifact recorded
    (see the module docstring; the stage's wall time when the artifact says nothing)."""
    out = {}
    for name, entry in stages.items():
        manifest = storage.read_manifest(entry["uri"]) if entry.get("uri") and not \
            entry.get("given") else None
        meta = (manifest or {}).get("meta", {})
        seconds = _proxy_seconds(meta) if name == "proxy" else meta.get("seconds")
        out[name] = {**entry, "seconds": entry.get("seconds") if seconds is None else seconds}
    return out


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
