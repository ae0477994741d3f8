"""Consumers check their inputs' lineage: a ranking is cut only for the shards it was
computed on, even when another data set has the same ids (local executor, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sas_ray.cli import main
from sas_ray.config import Config
from sas_ray.core.models.checkpoint import save_encoder
from sas_ray.core.models.heads import build_model
from sas_ray.errors import SasRayError
from sas_ray.executors.local import LocalExecutor
from sas_ray.io import storage
from sas_ray.io.artifacts import subset_ids
from sas_ray.stages.embed import embed
from sas_ray.stages.ingest import ingest
from sas_ray.stages.latent import partition
from sas_ray.stages.rank import rank


def _cfg(seed: int) -> Config:
    cfg = Config()
    cfg.run.seed, cfg.run.executor = seed, "local"
    d = cfg.data
    d.synthetic_classes, d.synthetic_train_per_class, d.synthetic_test_per_class = 2, 16, 4
    d.synthetic_size = d.image_size = 16
    cfg.embed.views = 1
    return cfg


def test_a_ranking_of_other_shards_with_the_same_ids_is_refused(tmp_path: Path,
                                                                capsys) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    cfg_a, cfg_b = _cfg(0), _cfg(1)  # same ids 0..39, other images
    ingest("synthetic", a, cfg_a, executor=LocalExecutor(cfg_a))
    ingest("synthetic", b, cfg_b, executor=LocalExecutor(cfg_b))
    torch.manual_seed(0)
    proxy = str(tmp_path / "proxy.pt")
    save_encoder(proxy, build_model("resnet10", width=0.125, proj_dim=8), cfg_a)
    emb, part, ranking = (str(tmp_path / n) for n in ("emb", "part", "rank"))
    embed(cfg_a, a, proxy, emb, executor=LocalExecutor(cfg_a))
    partition(cfg_a, emb, part)
    rank(cfg_a, emb, part, "random", ranking, executor=LocalExecutor(cfg_a))

    assert len(subset_ids(ranking, 0.5, a)) == 16
    fp_a = storage.require_manifest(a)["fingerprint"]
    fp_b = storage.require_manifest(b)["fingerprint"]
    with pytest.raises(SasRayError, match=f"computed on shards {fp_a}.*holds shards {fp_b}"):
        subset_ids(ranking, 0.5, b)
    code = main(["train", "--data", b, "--subset", ranking, "--fraction", "0.5",
                 "--out", str(tmp_path / "run"), "--run.executor", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fp_b in err[0], err
    assert not (tmp_path / "run").exists()


def test_every_output_holding_an_encoder_is_accepted_as_one(tmp_path: Path) -> None:
    """A proxy artifact, a training run, a sweep trial (and its result artifact) name their
    encoder; other artifacts are one clear error."""
    from sas_ray.io.artifacts import encoder_file

    cfg = _cfg(0)
    model = build_model("resnet10", width=0.125, proj_dim=8)
    run = tmp_path / "proxy-run"
    save_encoder(str(run / "encoder.pt"), model, cfg)
    proxy = str(tmp_path / "proxy")
    with storage.write_artifact(proxy, "proxy") as w:
        save_encoder(storage.join(w.dir, "encoder.pt"), model, cfg)
    trial = str(tmp_path / "runs" / "full")
    with storage.write_artifact(storage.join(trial, "result"), "trial") as w:
        w.meta["run"] = str(run)
    assert encoder_file(proxy).startswith(proxy + "/v-")
    assert encoder_file(str(run)) == str(run)
    assert encoder_file(trial) == encoder_file(storage.join(trial, "result")) == str(run)
    with storage.write_artifact(str(tmp_path / "emb"), "embeddings"):
        pass
    with pytest.raises(SasRayError, match="holds a 'embeddings' artifact"):
        encoder_file(str(tmp_path / "emb"))
    with pytest.raises(SasRayError, match="does not exist"):
        encoder_file(str(tmp_path / "absent"))
