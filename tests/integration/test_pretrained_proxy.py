"""`sas-ray pipeline` with a pretrained proxy (a random tiny open_clip CLIP saved to a local
directory; local executor, no Ray, no download): the proxy stage loads it instead of training
(the stage log says so, nothing is written under proxy/ or proxy-run/), latent classes come
zero-shot from its text tower, a rerun reuses everything, and new weights in the same file
re-embed (the cache key is the weights' sha256). Weights on S3 (moto) load like local ones."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from sas_ray import config
from sas_ray.core.models.encoders import EncoderRef
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.pipeline import run_pipeline

CLIP_CONFIG = {
    "model_cfg": {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                 "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                               "heads": 2, "layers": 1}},
}


def _save_clip(folder: Path, seed: int) -> str:
    """A random tiny CLIP as an open_clip model directory; -> the sha256 of its weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    weights = folder / "open_clip_model.safetensors"
    save_file(model.state_dict(), str(weights))
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def test_pretrained_proxy_skips_training_and_caches_on_the_weights_hash(
        tmp_path: Path, tiny_run: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    clip = tmp_path / "clip"
    sha = _save_clip(clip, seed=0)
    overrides = {**tiny_run, "run.storage": str(tmp_path / "out"), "run.executor": "local",
                 "select.strategies": "random", "sweep.fractions": "0.5",
                 "sweep.include_full": False, "proxy.encoder": "open_clip:tiny",
                 "proxy.weights": str(clip), "latent.method": "clip-zeroshot",
                 "latent.min_class_size": 1}
    caplog.set_level(logging.INFO, logger="sas_ray.pipeline")

    layout = run_pipeline(config.load(overrides=overrides))
    assert (f"stage proxy: pretrained open_clip:tiny (weights sha {sha[:12]}), no training"
            in caplog.messages)
    assert not storage.exists(layout.proxy) and not storage.exists(layout.proxy_runs)
    stages = storage.read_json(layout.state)["stages"]
    assert stages["proxy"]["fingerprint"] == sha and stages["proxy"]["pretrained"]
    emb = storage.require_manifest(layout.embeddings, "embeddings")
    assert emb["meta"]["encoder"] == "open_clip:tiny" and emb["meta"]["image_size"] == 32
    part = storage.require_manifest(layout.partition("clip-zeroshot"), "partition")
    shards = storage.require_manifest(layout.shards, "shards")
    assert part["config"]["class_names"] == shards["meta"]["class_names"]
    assert set(part["meta"]["sizes"]) <= {"0", "1"}

    caplog.clear()
    run_pipeline(config.load(overrides=overrides))  # same weights: nothing is recomputed
    stages = storage.read_json(layout.state)["stages"]
    assert {k: v["status"] for k, v in stages.items()
            if k in ("proxy", "embeddings", "partition/clip-zeroshot", "sweep")} == {
        "proxy": "cached", "embeddings": "cached", "partition/clip-zeroshot": "cached",
        "sweep": "cached"}

    new_sha = _save_clip(clip, seed=1)  # other weights, same path
    run_pipeline(config.load(overrides=overrides))
    stages = storage.read_json(layout.state)["stages"]
    assert stages["proxy"]["fingerprint"] == new_sha != sha
    assert stages["embeddings"]["status"] == "ran"
    assert stages["embeddings"]["fingerprint"] != emb["fingerprint"]


def test_weights_on_s3_load_like_local_ones(s3_bucket: str, tmp_path: Path) -> None:
    clip = tmp_path / "clip"
    _save_clip(clip, seed=0)
    for f in clip.iterdir():
        storage.write_bytes_atomic(f"{s3_bucket}/models/clip/{f.name}", f.read_bytes())
    vit = timm.create_model("test_vit", pretrained=False)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    storage.write_bytes_atomic(f"{s3_bucket}/models/vit/model.safetensors",
                               (tmp_path / "vit.safetensors").read_bytes())
    x = torch.rand(2, 3, 32, 32)
    for name, local, remote in [
            ("open_clip:tiny", str(clip), f"{s3_bucket}/models/clip"),
            ("timm:test_vit", str(tmp_path / "vit.safetensors"), f"{s3_bucket}/models/vit/"),
            ("timm:test_vit", str(tmp_path / "vit.safetensors"),
             f"{s3_bucket}/models/vit/model.safetensors")]:
        a = EncoderRef(name, local).load(storage.FILES)
        b = EncoderRef(name, remote).load(storage.FILES)
        assert a.spec == b.spec  # same preprocessing and weights sha256
        with torch.inference_mode():
            torch.testing.assert_close(a(x), b(x))
    with pytest.raises(SasRayError, match="do not exist"):
        EncoderRef("timm:test_vit", f"{s3_bucket}/models/none.safetensors").load(storage.FILES)
