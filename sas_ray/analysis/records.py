"""Trial records of a sweep, read from its artifacts (no Ray, no pandas).

A ``sweep`` artifact (written by :mod:`sas_ray.stages.sweep` on either executor) lists every
trial with its status and the URI and fingerprint of its ``trial`` result artifact; a trial
counts as finished exactly when that artifact is committed with that fingerprint, so a sweep
still running reports what has finished so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sas_ray.errors import SasRayError
from sas_ray.io import storage

# metrics a sweep trial reports (test accuracies in percent) and their display names
METRICS = {"linear_acc": "linear probe", "knn_acc": "kNN"}
TIME_METRIC = "train_time_s"
FULL = "full"  # the strategy name of the full-data baseline
BASELINE = "random"  # gaps and tests are against this strategy at equal fraction
FINISHED = "finished"
TRIALS_FILE = "trials.json"


@dataclass
class TrialRecord:
    """One trial of a sweep: its grid point, status and stored metrics. ``strategy`` is the
    strategy's label: its name, or ``name/latent method`` when the sweep has several."""

    strategy: str
    fraction: float
    seed: int
    status: str  # finished | failed | skipped | not started
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # last line of the error, for failed trials
    name: str = ""
    ranking: str | None = None  # the ranking artifact it was cut from (None: full data)
    latent: str | None = None  # the latent-class method of that ranking (None: latent-free)
    run: str | None = None  # its run directory (metrics.json: the per-epoch history)
    method: str = ""  # the SSL method it trained with ("": a sweep from before sweep.methods)

    @property
    def key(self) -> tuple[str, float, int]:
        return (self.strategy, round(self.fraction, 6), self.seed)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


def label(strategy: str, latent: str | None, several: bool) -> str:
    """How the report names a strategy under a latent method."""
    return f"{strategy}/{latent}" if several and latent else strategy


def trial_records(trials: list[dict[str, Any]]) -> list[TrialRecord]:
    """Records of a sweep listing (``trials.json``), each finished one with its metrics."""
    several = len({t["subset"]["latent"] for t in trials if t["subset"]["latent"]}) > 1
    out = []
    for t in trials:
        cell = t["subset"]
        finished = storage.is_fresh(t["result"], t["fingerprint"])
        metrics = storage.read_json(storage.artifact_files(t["result"])[0]) if finished else {}
        status = FINISHED if finished else ("not started" if t["status"] == FINISHED
                                            else t["status"])
        out.append(TrialRecord(label(cell["strategy"], cell["latent"], several),
                               float(cell["fraction"]), int(t["seed"]), status, metrics,
                               t.get("error"), name=t["name"], ranking=cell.get("ranking"),
                               latent=cell["latent"], run=t.get("run"),
                               method=cell.get("method", "")))
    return out


def sweep_manifest(uri: str) -> dict[str, Any]:
    """The manifest of the ``sweep`` artifact at ``uri``; an error when there is none."""
    manifest = storage.read_manifest(uri)
    if manifest is None or manifest.get("stage") != "sweep":
        raise SasRayError(f"{uri} holds no sas-ray sweep; pass the sweep directory a pipeline "
                          "or `sas-ray sweep` wrote (default: <run.storage>/sweep)")
    return manifest


def read_sweep(uri: str) -> list[TrialRecord]:
    """The records of the ``sweep`` artifact at ``uri`` (local or s3://)."""
    manifest = sweep_manifest(uri)
    (path,) = [f for f in storage.artifact_files(uri, manifest) if f.endswith(TRIALS_FILE)]
    return trial_records(storage.read_json(path))


def trained_on(uri: str) -> str | None:
    """The shards URI the sweep at ``uri`` trained on (its manifest's ``meta.data``)."""
    return sweep_manifest(uri)["meta"].get("data")
