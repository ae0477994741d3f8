"""Embedding stage on Ray Data: coverage, per-example seeding independent of actors and
batches, a killed actor, equality with a single-process computation (on S3), torchvision
weights in float16, reuse, bad inputs, actor resources. (Local vs Ray: test_executors.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from sas_ray.cli import main
from sas_ray.config import Config
from sas_ray.core.data.augment import SimCLRAugment, to_nchw
from sas_ray.core.data.images import decode_images
from sas_ray.core.embedding import mean_view_embeddings
from sas_ray.core.models.checkpoint import load_encoder, save_encoder
from sas_ray.core.models.heads import build_model
from sas_ray.core.seeding import example_keys
from sas_ray.errors import SasRayError
from sas_ray.executors.base import Workers
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray.data import actor_resources
from sas_ray.io import shards, storage
from sas_ray.stages.embed import embed, output_schema
from sas_ray.stages.ingest import ingest

DIM = 32


def _cfg(**embed_settings: object) -> Config:
    cfg = Config()
    cfg.embed.batch_size = 32
    for key, value in embed_settings.items():
        setattr(cfg.embed, key, value)
    return cfg


def _read(uri: str) -> pa.Table:
    """Every row of an embeddings artifact, sorted by id."""
    parts = []
    for f in storage.artifact_files(uri, storage.require_manifest(uri, "embeddings")):
        fs, path = storage.filesystem(f)
        parts.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(parts).sort_by("id")


def _matrix(table: pa.Table) -> np.ndarray:
    emb = table["emb"].combine_chunks()
    return emb.flatten().to_numpy().reshape(len(table), emb.type.list_size).astype(np.float32)


def _plain_embeddings(data: str, proxy: str, feature: str = "projection",
                      size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Ids and un-augmented unit embeddings of the train split, in one process, without Ray."""
    table = shards.read_table(data, split="train", columns=["id", "image"]).sort_by("id")
    images = to_nchw(decode_images(table["image"].to_pylist(), size=size))
    model = load_encoder(proxy)
    with torch.inference_mode():
        z = model.embed(SimCLRAugment(size=size).plain(images), feature)
    return table["id"].to_numpy(), F.normalize(z, dim=1).numpy()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised narrow ResNet-10 SimCLR encoder."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("proxy") / "proxy.pt")
    save_encoder(path, build_model("resnet10", width=0.125, proj_dim=DIM), Config())
    return path


@pytest.fixture(scope="module")
def two_views(synthetic_shards: str, proxy: str, tmp_path_factory: pytest.TempPathFactory
              ) -> str:
    """Embeddings with 2 views per image from 2 actors, batches of 32."""
    out = str(tmp_path_factory.mktemp("emb") / "two_views")
    embed(_cfg(views=2, num_actors=2), synthetic_shards, proxy, out)
    return out


@pytest.mark.ray
def test_every_train_id_embedded_once(synthetic_shards: str, two_views: str) -> None:
    table = _read(two_views)
    assert table.schema == output_schema(DIM, "float32")
    train = shards.read_table(synthetic_shards, split="train", columns=["id", "label"])
    train = train.sort_by("id")
    assert table["id"].to_pylist() == train["id"].to_pylist()
    assert table["label"].to_pylist() == train["label"].to_pylist()
    manifest = storage.require_manifest(two_views, "embeddings")
    assert manifest["meta"]["num_rows"] == len(train) == 256
    assert {k: manifest["meta"][k] for k in ("dim", "views", "dtype", "feature")} == \
        {"dim": DIM, "views": 2, "dtype": "float32", "feature": "projection"}
    assert manifest["inputs"]["shards"] == storage.require_manifest(synthetic_shards)[
        "fingerprint"]
    norms = np.linalg.norm(_matrix(table), axis=1)
    assert norms.max() <= 1 + 1e-5 and norms.min() < 1 - 1e-4  # a mean of differing unit views


def test_views_are_seeded_by_run_seed_and_id(proxy: str) -> None:
    model = load_encoder(proxy)
    augment = SimCLRAugment(size=32)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ids = np.arange(100, 106)

    def emb(rows: slice, seed: int) -> torch.Tensor:
        return mean_view_embeddings(model, images[rows], augment, 2, "projection",
                                    example_keys(ids[rows], seed))

    full = emb(slice(None), 0)
    torch.testing.assert_close(emb(slice(2, 5), 0), full[2:5], atol=1e-5, rtol=0)
    assert (emb(slice(None), 1) - full).abs().max() > 1e-3


@pytest.mark.ray
def test_killed_actor_is_restarted_and_the_result_is_unchanged(
        synthetic_shards: str, proxy: str, two_views: str, tmp_path: Path) -> None:
    """One actor, batches of 24, killed at its 2nd batch: the same embeddings as two actors
    with batches of 32, every id once."""
    from embed_faults import crash_once

    marker = tmp_path / "crashed"
    out = str(tmp_path / "survivor")
    embed(_cfg(views=2, num_actors=1, batch_size=24), synthetic_shards, proxy, out,
          batch_class=crash_once(2, str(marker)))
    assert marker.exists()  # the actor did exit mid-stream
    table, reference = _read(out), _read(two_views)
    assert table["id"].to_pylist() == reference["id"].to_pylist()
    np.testing.assert_allclose(_matrix(table), _matrix(reference), atol=1e-5)


@pytest.mark.ray
def test_unaugmented_equals_single_process_on_s3(s3_bucket: str, proxy: str) -> None:
    cfg = _cfg(views=0, num_actors=2, batch_size=8)
    cfg.data.synthetic_train_per_class, cfg.data.synthetic_test_per_class = 8, 2
    data, out = f"{s3_bucket}/shards", f"{s3_bucket}/emb"
    ingest("synthetic", data, cfg, executor=LocalExecutor(cfg))
    embed(cfg, data, proxy, out)
    table = _read(out)
    assert table.schema == output_schema(DIM, "float32")
    ids, expected = _plain_embeddings(data, proxy)
    assert table["id"].to_pylist() == ids.tolist()
    np.testing.assert_allclose(_matrix(table), expected, atol=1e-5)


@pytest.mark.ray
def test_torchvision_weights_as_proxy_in_float16(synthetic_shards: str, tmp_path: Path) -> None:
    import torchvision

    weights = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    out = str(tmp_path / "tv")
    cfg = _cfg(views=0, num_actors=1, feature="backbone", image_size=32, dtype="float16")
    manifest = embed(cfg, synthetic_shards, weights, out)
    assert manifest["meta"]["dim"] == 512
    table = _read(out)
    assert table.schema == output_schema(512, "float16")
    ids, expected = _plain_embeddings(synthetic_shards, weights, feature="backbone")
    assert table["id"].to_pylist() == ids.tolist()
    np.testing.assert_allclose(_matrix(table), expected, atol=2e-3)


@pytest.mark.ray
def test_rerun_with_same_inputs_reuses_the_artifact(synthetic_shards: str, proxy: str,
                                                   two_views: str) -> None:
    before = storage.require_manifest(two_views)
    again = embed(_cfg(views=2, num_actors=1, batch_size=64), synthetic_shards, proxy, two_views)
    assert again == before


def test_bad_inputs_fail_clearly_and_leave_no_output(synthetic_shards: str, proxy: str,
                                                     two_views: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (synthetic_shards, str(tmp_path / "missing.pt"), _cfg(), "does not exist"),
        (two_views, proxy, _cfg(), "'embeddings' artifact, not 'shards'"),
        (str(tmp_path / "nowhere"), proxy, _cfg(), "not a complete sas-ray artifact"),
        (synthetic_shards, str(garbage), _cfg(), "not a readable PyTorch file"),
        (synthetic_shards, proxy, _cfg(views=-1), "embed.views=-1"),
        (synthetic_shards, proxy, _cfg(dtype="int8"), "embed.dtype"),
        (synthetic_shards, proxy, _cfg(feature="logits"), "embed.feature"),
    ]
    for data, encoder, cfg, message in cases:
        with pytest.raises(SasRayError, match=message):
            embed(cfg, data, encoder, str(out))
        assert not out.exists()
    code = main(["embed", "--data", synthetic_shards, "--proxy.checkpoint",
                 str(tmp_path / "missing.pt"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not exist" in err and not out.exists()


def test_actor_resources_fit_the_cluster() -> None:
    two_cpus = actor_resources(Workers(count=2), 2, 2, 0)
    assert two_cpus == {"num_actors": 2, "max_actors": 2, "num_cpus": 0.5, "num_gpus": 0,
                        "threads": 1}
    one = actor_resources(Workers(count=1), 2, 2, 0)
    assert one["num_actors"] == 1 and one["num_cpus"] == 1
    big = actor_resources(Workers(count=2), 32, 8, 0)  # four 8-CPU nodes
    assert big["num_cpus"] == 8 and big["threads"] == 8
    gpus = actor_resources(Workers(count=4), 16, 16, 2)
    assert gpus["num_actors"] == gpus["max_actors"] == 2 and gpus["num_gpus"] == 1
    shared = actor_resources(Workers(count=2, gpus=0.25), 17, 17, 2)  # 4 actors per GPU
    assert shared["num_actors"] == 2 and shared["max_actors"] == 8
    assert shared["num_gpus"] == 0.25 and shared["num_cpus"] == 2
    fixed = actor_resources(Workers(count=2, cpus=0.25, threads=3), 2, 2, 0)
    assert fixed["num_cpus"] == 0.25 and fixed["threads"] == 3
    with pytest.raises(SasRayError, match="at least 2"):
        actor_resources(Workers(count=2), 1, 1, 0)
