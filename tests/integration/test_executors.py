"""The local and the Ray executor give identical data-stage artifacts, and reuse each other's.

ingest -> embed -> latent -> rank (sas, random) on tiny synthetic data, once per executor into
its own directory: the embeddings are bytes-equal (rows sorted by id), and so are the
partitions and rankings; every manifest's fingerprint is the same on both sides. Asking the
other executor for a stage at the same path returns the committed artifact untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sas_ray.config import Config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.core.models.heads import build_model
from sas_ray.executors.base import Executor
from sas_ray.executors.local import LocalExecutor
from sas_ray.executors.ray import RayExecutor
from sas_ray.io import shards, storage
from sas_ray.io.artifacts import load_ranking, read_embeddings, read_partition
from sas_ray.stages.embed import embed
from sas_ray.stages.ingest import ingest
from sas_ray.stages.latent import partition
from sas_ray.stages.rank import rank

pytestmark = pytest.mark.ray

STRATEGIES = ("sas", "random")
Stage = Callable[[Executor], dict[str, Any]]


def _cfg() -> Config:
    """3 classes x 30 train images of 16 px in 2 shards; embedding batches of 16 (so the
    batches of each shard end short) on 2 actors; k-means latent classes; 2 selection
    workers (Ray tasks / a process pool)."""
    cfg = Config()
    d, e = cfg.data, cfg.embed
    d.synthetic_classes, d.synthetic_train_per_class, d.synthetic_test_per_class = 3, 30, 4
    d.synthetic_size = d.image_size = 16
    d.shard_size = 50
    e.views, e.batch_size, e.num_actors = 2, 16, 2
    cfg.latent.method, cfg.latent.k = "kmeans", 3
    cfg.select.num_workers = 2
    return cfg


def _stages(cfg: Config, proxy: str, root: Path) -> dict[str, Stage]:
    """Every data stage into ``root``, in pipeline order, as a function of the executor."""
    data, emb, part = str(root / "shards"), str(root / "embeddings"), str(root / "partition")
    stages: dict[str, Stage] = {
        "shards": lambda ex: ingest("synthetic", data, cfg, executor=ex),
        "embeddings": lambda ex: embed(cfg, data, proxy, emb, executor=ex),
        "partition": lambda ex: partition(cfg, emb, part),
    }
    for s in STRATEGIES:
        stages[s] = lambda ex, s=s: rank(cfg, emb, part, s, str(root / s), executor=ex)
    return stages


def test_local_and_ray_executors_write_identical_artifacts(ray_session, tmp_path: Path) -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    proxy = str(tmp_path / "proxy.pt")
    save_encoder(proxy, build_model("resnet10", width=0.125, proj_dim=16), cfg)
    executors = {"local": LocalExecutor(cfg), "ray": RayExecutor(cfg)}
    stages = {name: _stages(cfg, proxy, tmp_path / name) for name in executors}
    manifests = {name: {stage: fn(executors[name]) for stage, fn in stages[name].items()}
                 for name in executors}
    local, ray = manifests["local"], manifests["ray"]
    assert {s: m["fingerprint"] for s, m in local.items()} == \
        {s: m["fingerprint"] for s, m in ray.items()}
    assert local["embeddings"]["meta"]["executor"] == "local"
    assert ray["embeddings"]["meta"]["executor"] == "ray"
    assert ray["embeddings"]["meta"]["workers"] == 2

    a, b = tmp_path / "local", tmp_path / "ray"
    assert shards.read_table(str(a / "shards")).sort_by("id").equals(
        shards.read_table(str(b / "shards")).sort_by("id"))
    emb_a, emb_b = read_embeddings(str(a / "embeddings")), read_embeddings(str(b / "embeddings"))
    assert emb_a.ids.tolist() == emb_b.ids.tolist() == list(range(90))
    assert emb_a.x.dtype == emb_b.x.dtype == np.float32
    assert emb_a.x.tobytes() == emb_b.x.tobytes()
    np.testing.assert_array_equal(emb_a.labels, emb_b.labels)
    part_a, _ = read_partition(str(a / "partition"), emb_a.ids)
    part_b, _ = read_partition(str(b / "partition"), emb_b.ids)
    np.testing.assert_array_equal(part_a, part_b)
    assert np.unique(part_a).size == 3
    for s in STRATEGIES:
        rank_a, rank_b = load_ranking(str(a / s)), load_ranking(str(b / s))
        np.testing.assert_array_equal(rank_a.ids, rank_b.ids)
        assert rank_a.ranking.scores.tobytes() == rank_b.ranking.scores.tobytes()
        np.testing.assert_array_equal(rank_a.ranking.latent, rank_b.ranking.latent)

    # each side's artifacts are reused, as committed, when the other executor asks for them
    for name, other in (("local", "ray"), ("ray", "local")):
        for stage, fn in stages[name].items():
            assert fn(executors[other]) == manifests[name][stage], (name, stage)
            assert storage.require_manifest(str(tmp_path / name / stage)) == \
                manifests[name][stage]
