"""Config loading/overrides/coercion and local storage: atomic artifacts and manifests."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Literal

import pytest

from sas_ray import config as config_mod
from sas_ray.config import Config, ConfigError
from sas_ray.errors import SasRayError
from sas_ray.io import storage

# --- config --------------------------------------------------------------------------------


def test_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 20\n  lr: 0.01\nsweep:\n  fractions: [0.2, 0.4]\n")
    cfg = config_mod.load(path, {"train.epochs": 5})
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01
    assert cfg.sweep.fractions == [0.2, 0.4]
    assert cfg.model.arch == Config().model.arch


def test_parse_overrides_forms() -> None:
    argv = ["--train.epochs", "5", "--sweep.seeds=0,1", "--sweep.fractions", "0.2,0.6",
            "--data.download", "true", "--run.ray_address", "none", "--run.name", "a,b"]
    cfg = config_mod.apply(Config(), config_mod.parse_overrides(argv))
    assert cfg.train.epochs == 5 and cfg.sweep.seeds == [0, 1]
    assert cfg.sweep.fractions == [0.2, 0.6] and cfg.data.download is True
    assert cfg.run.ray_address is None and cfg.run.name == "a,b"
    for bad in (["--train.epochs"], ["epochs", "5"], ["--noseparator", "1"]):
        with pytest.raises(ConfigError):
            config_mod.parse_overrides(bad)


def test_coercion() -> None:
    cfg = config_mod.apply(Config(), {"train.lr": 1, "run.name": 123, "sweep.seeds": 3,
                                      "select.similarity_floor": "0.0", "run.num_cpus": "4"})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.run.name == "123" and cfg.sweep.seeds == [3]
    assert cfg.select.similarity_floor == 0.0 and cfg.run.num_cpus == 4
    nested = config_mod.apply(Config(), {"train": {"epochs": 7}, "eval": {"knn_k": "3"}})
    assert nested.train.epochs == 7 and nested.eval.knn_k == 3


@pytest.mark.parametrize(("updates", "message"), [
    ({"train.epochs": "abc"}, "config key 'train.epochs': cannot read 'abc' as int"),
    ({"train.epochs": 2.5}, "'train.epochs'"),
    ({"train.epochs": True}, "'train.epochs'"),
    ({"train.lr": False}, "'train.lr'"),
    ({"data.download": "maybe"}, "'data.download'"),
    ({"sweep.fractions": "0.2,x"}, "'sweep.fractions'"),
    ({"trian.epochs": 1}, "unknown config section 'trian'"),
    ({"train.epoch": 1}, "unknown config key 'train.epoch'; keys of 'train' are: epochs"),
])
def test_bad_values_name_the_key(updates: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.apply(Config(), updates)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config_mod.load(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        config_mod.load(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert config_mod.load(tmp_path / "empty.yaml") == Config()


@pytest.mark.parametrize(("updates", "message"), [
    ({"model.arch": "resnet99"},
     "config key 'model.arch': 'resnet99' is not allowed; use one of: resnet10, resnet18, "
     "resnet34, resnet50"),
    ({"train.optimizer": "adamw"}, "use one of: adam, sgd, lars"),
    ({"latent.k": 0}, "config key 'latent.k' must be >= 1, got 0"),
    ({"sweep.fractions": [0.5, 1.5]}, "config key 'sweep.fractions' must be > 0 and <= 1, got 1.5"),
    ({"train.lr": 0}, "config key 'train.lr' must be > 0"),
    ({"embed.views": -1}, "config key 'embed.views' must be >= 0"),
    ({"train": 5}, "config section 'train' must be a mapping of keys"),
    ({"sweep.latent_methods": "kmeans,spectral"}, "'sweep.latent_methods': 'spectral'"),
])
def test_enumerations_and_bounds_are_checked_at_load(updates: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.apply(Config(), updates)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_literal_keys_take_yaml_booleans_and_none_is_unbounded() -> None:
    cfg = config_mod.apply(Config(), config_mod.parse_overrides(
        ["--train.use_gpu", "false", "--embed.threads", "none", "--latent.k", "1"]))
    assert cfg.train.use_gpu == "false" and cfg.embed.threads is None and cfg.latent.k == 1


@pytest.mark.parametrize(("text", "where"), [
    ("train:\n  epochs: [1,\n", ":3:1: invalid YAML"),
    ("train:\n  epochs: 1\n lr: 2\n", ":3:2: invalid YAML"),
    ("train: {epochs: 1\n", ":2:1: invalid YAML"),
])
def test_yaml_syntax_errors_name_file_line_and_column(tmp_path: Path, text: str,
                                                      where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config_mod.load(path)
    assert f"{path}{where}" in str(err.value) and "\n" not in str(err.value)


def test_yaml_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="config section 'train' must be a mapping"):
        config_mod.load(path)


def test_result_settings_leave_out_scheduling_and_bookkeeping() -> None:
    train = config_mod.result_settings(Config().train)
    assert "epochs" in train and "num_workers" in train and "amp" in train
    for key in ("max_failures", "checkpoint_every", "record_ids", "knn_every", "knn_images",
                "cpus_per_worker"):
        assert key not in train
    assert set(config_mod.result_settings(Config().embed)) == {"views", "dtype", "feature",
                                                               "image_size"}
    select = config_mod.result_settings(Config().select)
    assert "strategies" not in select and "num_workers" not in select
    assert "similarity_floor" in select
    assert "executor" not in config_mod.result_settings(Config().run)
    changed = config_mod.apply(Config(), {"train.cpus_per_worker": 3, "train.max_failures": 0})
    assert config_mod.result_settings(changed.train) == train
    assert config_mod.result_settings(config_mod.apply(Config(), {"train.lr": 0.5}).train) != train


def _allowed(section: type, key: str) -> set[str]:
    """The values of a ``Literal`` key (of the Literal inside ``Literal[...] | None``)."""
    tp = typing.get_type_hints(section)[key]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return set(typing.get_args(args[0])) if typing.get_origin(args[0]) is Literal else set(args)


def test_enumerated_keys_match_the_code_that_reads_them() -> None:
    from sas_ray.analysis.report import METRICS
    from sas_ray.core.models.backbones import ARCHS, STEMS
    from sas_ray.core.models.heads import Feature
    from sas_ray.core.selection.sas import DOUBLE_GREEDY_RULES

    assert _allowed(config_mod.ModelConfig, "arch") == set(ARCHS)
    assert _allowed(config_mod.ProxyConfig, "arch") == set(ARCHS)
    assert _allowed(config_mod.ModelConfig, "stem") == {"auto", *STEMS}
    assert _allowed(config_mod.EmbedConfig, "feature") == set(typing.get_args(Feature))
    assert _allowed(config_mod.SelectConfig, "double_greedy_rule") == set(DOUBLE_GREEDY_RULES)
    assert _allowed(config_mod.AnalyzeConfig, "metric") == set(METRICS)


def test_round_trip_through_dict() -> None:
    cfg = config_mod.apply(Config(), {"train.epochs": 9, "sweep.fractions": [0.1],
                                      "run.ray_address": "ray://x:10001"})
    assert config_mod.from_dict(cfg.to_dict()) == cfg


# --- storage -------------------------------------------------------------------------------


def test_paths_and_atomic_bytes(tmp_path: Path) -> None:
    assert storage.join("s3://b/p/", "/a/", "c") == "s3://b/p/a/c"
    assert storage.is_s3("s3://b") and not storage.is_s3(str(tmp_path))
    target = str(tmp_path / "deep" / "f.json")
    storage.write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert storage.read_json(target) == {"a": [1, 2], "b": 1}
    storage.write_bytes_atomic(target, b"new")
    assert storage.read_bytes(target) == b"new"
    assert os.listdir(tmp_path / "deep") == ["f.json"]  # no temp files left behind
    assert storage.list_files(str(tmp_path)) == [target]
    assert storage.list_files(str(tmp_path / "absent")) == []
    storage.delete(str(tmp_path / "deep"))
    storage.delete(str(tmp_path / "deep"))  # missing is fine
    assert not storage.exists(str(tmp_path / "deep"))


def test_unwritable_output_is_one_clear_line() -> None:
    with pytest.raises(SasRayError, match="cannot write to /proc/sas-ray-test") as err:
        storage.check_writable("/proc/sas-ray-test")
    assert "\n" not in str(err.value)


def _commit(uri: str, content: bytes, seed: int = 0, **kw: object) -> None:
    with storage.write_artifact(uri, "stage-a", config={"k": 1}, inputs={"x": "fp"},
                                seed=seed, **kw) as w:
        storage.write_bytes_atomic(storage.join(w.dir, "sub", "data.bin"), content)
        w.meta["rows"] = len(content)


def test_artifact_commit_writes_manifest_last(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    _commit(uri, b"abc")
    manifest = storage.require_manifest(uri, "stage-a")
    assert manifest["stage"] == "stage-a" and manifest["meta"] == {"rows": 3}
    assert manifest["config"] == {"k": 1} and manifest["inputs"] == {"x": "fp"}
    assert manifest["seed"] == 0 and "python" in manifest["versions"]
    (rel,) = manifest["files"]
    assert rel.startswith("v-") and rel.endswith("/sub/data.bin")
    (path,) = storage.artifact_files(uri)
    assert storage.read_bytes(path) == b"abc"
    assert manifest["fingerprint"] == storage.stage_fingerprint("stage-a", {"k": 1},
                                                                {"x": "fp"}, 0)
    with pytest.raises(SasRayError, match="holds a 'stage-a' artifact, not 'shards'"):
        storage.require_manifest(uri, "shards")


def test_failed_write_rolls_back_and_keeps_the_previous_artifact(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    _commit(uri, b"first")
    before = storage.read_manifest(uri)
    with pytest.raises(RuntimeError, match="boom"), \
            storage.write_artifact(uri, "stage-a", config={"k": 2}) as w:
        storage.write_bytes_atomic(storage.join(w.dir, "half.bin"), b"x")
        raise RuntimeError("boom")
    assert storage.read_manifest(uri) == before
    assert sorted(storage.list_files(uri)) == sorted(
        [storage.join(uri, "manifest.json"), *storage.artifact_files(uri, before)])


def test_failed_first_write_leaves_no_manifest(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    with pytest.raises(ValueError), storage.write_artifact(uri, "stage-a") as w:
        storage.write_bytes_atomic(storage.join(w.dir, "part.bin"), b"x")
        raise ValueError
    assert storage.read_manifest(uri) is None and storage.list_files(uri) == []
    with pytest.raises(SasRayError, match="not a complete sas-ray artifact"):
        storage.require_manifest(uri)


def test_new_commit_sweeps_old_and_crashed_staging(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    _commit(uri, b"one")
    old = storage.artifact_files(uri)
    crashed = tmp_path / "art" / "v-19990101T000000-dead00"
    crashed.mkdir()
    (crashed / "junk").write_bytes(b"j")
    _commit(uri, b"two")
    files = storage.list_files(uri)
    assert not crashed.exists() and not any(f in files for f in old)
    assert len(files) == 2 and storage.read_bytes(storage.artifact_files(uri)[0]) == b"two"


def test_freshness_follows_config_inputs_and_seed(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    fp = storage.stage_fingerprint("stage-a", {"k": 1}, {"x": "fp"}, 0)
    assert not storage.is_fresh(uri, fp)
    _commit(uri, b"abc")
    assert storage.is_fresh(uri, fp)
    for changed in (storage.stage_fingerprint("stage-a", {"k": 2}, {"x": "fp"}, 0),
                    storage.stage_fingerprint("stage-a", {"k": 1}, {"x": "other"}, 0),
                    storage.stage_fingerprint("stage-a", {"k": 1}, {"x": "fp"}, 1),
                    storage.stage_fingerprint("stage-b", {"k": 1}, {"x": "fp"}, 0)):
        assert not storage.is_fresh(uri, changed)
    assert storage.fingerprint({"a": 1, "b": 2}) == storage.fingerprint({"b": 2, "a": 1})


@pytest.mark.parametrize(("text", "fix"), [
    ("NoSuchBucket: The specified bucket does not exist", "create the bucket"),
    ("ClientError: InvalidAccessKeyId", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("SignatureDoesNotMatch", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("Could not connect to the endpoint URL", "AWS_ENDPOINT_URL_S3"),
    ("something odd\nsecond line", "check the URI, credentials and endpoint"),
])
def test_s3_errors_become_one_line_with_a_fix(text: str, fix: str) -> None:
    with pytest.raises(SasRayError) as err, storage.s3_errors("s3://bkt/key"):
        raise OSError(text)
    assert fix in str(err.value) and "s3://bkt/key" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(OSError), storage.s3_errors("/local/path"):  # local errors pass through
        raise OSError("disk")
