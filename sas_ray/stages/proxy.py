"""The proxy stage: the encoder (trained with ``train.method``) whose embeddings drive
selection, one for every method of ``sweep.methods``.

The proxy is its own model section: ``proxy.arch`` / ``proxy.width`` (default: the trial
model's ``model.arch`` / ``model.width``) trained for ``proxy.epochs`` epochs with the
``train`` settings on the train split of the shards, through ``executor.fit`` into its own
run directory ``<runs>/<fingerprint[:8]>`` (a rerun after a crash resumes there). The
``proxy`` artifact holds ``encoder.pt``; its ``meta.alias`` says which training it is
(``train_fingerprint``, ``seed``, ``run``), so that the sweep's full-data trial with the same
training evaluates this run instead of training the same network again
(:func:`aliases`; the training fingerprint holds the method, so only the full-data trial of
``train.method`` can match). The proxy never writes into the sweep's run directories.

With ``proxy.encoder`` a registry name (:mod:`sas_ray.core.models.encoders`: ``sas-ray``,
``torchvision:NAME``, ``timm:NAME``, ``open_clip:ARCH``) and ``proxy.weights`` its file or
directory, the proxy is that pretrained encoder and nothing is trained (:func:`encoder_ref`);
the pipeline records it under the sha256 of the weights' bytes (:func:`weights_sha256`), which
the embeddings depend on through the encoder's spec. ``proxy.checkpoint`` is the older
spelling of ``sas-ray`` weights.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from sas_ray.config import Config
from sas_ray.core.models.checkpoint import ENCODER_FILE
from sas_ray.core.models.encoders import TRAIN, EncoderRef, parse
from sas_ray.errors import SasRayError
from sas_ray.executors.base import Executor
from sas_ray.io import storage
from sas_ray.stages.sweep import Aliases, completed_fit, train_fingerprint, train_settings

STAGE = "proxy"


def encoder_ref(cfg: Config) -> EncoderRef | None:
    """The pretrained proxy ``cfg`` names (``proxy.encoder``/``proxy.weights``, or
    ``proxy.checkpoint``), or None when the proxy is trained."""
    p = cfg.proxy
    if p.checkpoint and p.encoder != TRAIN:
        raise SasRayError("proxy.checkpoint and proxy.encoder both name a proxy; pass "
                          "--proxy.encoder sas-ray --proxy.weights PATH, or only one of them")
    if p.checkpoint:
        return EncoderRef("sas-ray", p.checkpoint)
    if p.encoder == TRAIN:
        return None
    parse(p.encoder)
    return EncoderRef(p.encoder, p.weights, p.allow_download)


def weights_sha256(ref: EncoderRef) -> str:
    """The sha256 of the bytes of the weights file ``ref`` loads (``"download"`` for weights
    the library fetches: the embed stage hashes their tensors)."""
    return "download" if ref.weights is None else ref.weights_file(storage.FILES).sha256


def proxy_config(cfg: Config) -> Config:
    """The training config of the proxy: the sweep's, with the proxy's model and epochs."""
    proxy = copy.deepcopy(cfg)
    proxy.train.epochs = cfg.proxy.epochs
    proxy.model.arch = cfg.proxy.arch or cfg.model.arch
    proxy.model.width = cfg.proxy.width or cfg.model.width
    return proxy


def train_proxy(cfg: Config, executor: Executor, shards_uri: str, shards: dict[str, Any],
                out: str, runs: str) -> dict[str, Any]:
    """Train the proxy on the shards at ``shards_uri`` (``shards``: their manifest) and commit
    the ``proxy`` artifact at ``out``; returns its manifest (reused when up to date)."""
    pcfg = proxy_config(cfg)
    config = train_settings(pcfg)
    inputs = {"shards": shards["fingerprint"]}
    seed = cfg.run.seed
    fp = storage.stage_fingerprint(STAGE, config, inputs, seed)
    if storage.is_fresh(out, fp):
        return storage.require_manifest(out, STAGE)
    start = time.perf_counter()
    run_dir = storage.join(runs, fp[:8])
    summary = completed_fit(run_dir) or executor.fit(pcfg, shards_uri, run_dir, None, "train")
    with storage.write_artifact(out, STAGE, config=config, inputs=inputs, seed=seed) as w:
        storage.write_bytes_atomic(storage.join(w.dir, ENCODER_FILE),
                                   storage.read_bytes(summary["checkpoint"]))
        w.meta.update(arch=pcfg.model.arch, width=pcfg.model.width, epochs=pcfg.train.epochs,
                      loss=summary["metrics"].get("loss"), train_seconds=summary["seconds"],
                      seconds=round(time.perf_counter() - start, 2),
                      alias={"train_fingerprint": train_fingerprint(pcfg, inputs), "seed": seed,
                             "run": run_dir})
    return storage.require_manifest(out, STAGE)


def aliases(manifest: dict[str, Any] | None) -> Aliases:
    """``{(train fingerprint, seed): run directory}`` of a proxy artifact's training (empty
    for a given ``proxy.checkpoint``): a sweep trial with that key evaluates that run."""
    alias = (manifest or {}).get("meta", {}).get("alias")
    return {} if alias is None else {(alias["train_fingerprint"], alias["seed"]): alias["run"]}
