"""Inside a Ray job, outputs must not resolve into Ray's per-job copy of the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from sas_ray import cli
from sas_ray import config as config_mod
from sas_ray.config import Config, ConfigError
from sas_ray.validate import SCOPES, validate

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray's job supervisor sets for the entrypoint


def _storage(path: str) -> Config:
    return config_mod.apply(Config(), {"run.storage": path})


@pytest.mark.parametrize("storage", ["outputs", "./exp", "../exp"])
def test_relative_storage_in_a_job_names_the_fix(storage: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(JOB_ENV, "{}")
    with pytest.raises(ConfigError, match=f"run.storage '{storage}' is relative: in a Ray "
                                          "job .* absolute path on storage every node shares "
                                          "or an s3:// URI"):
        validate(_storage(storage), ["sweep"])


def test_absolute_or_remote_storage_in_a_job_and_relative_outside_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scopes = [s for s in SCOPES if s != "embed"]
    monkeypatch.delenv(JOB_ENV, raising=False)
    validate(_storage("outputs"), scopes)
    monkeypatch.setenv(JOB_ENV, "{}")
    for storage in ("/shared/sas-ray", "s3://bucket/sas-ray"):
        validate(_storage(storage), scopes)


def test_a_commands_relative_out_in_a_job_is_one_line_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(JOB_ENV, "{}")
    monkeypatch.setattr(cli, "resolve", lambda target: pytest.fail("a stage started"))
    assert cli.main(["latent", "--embeddings", str(tmp_path), "--out", "part",
                     "--run.storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sas-ray latent: error: output 'part' is "
                                                   "relative: in a Ray job"), err
    assert cli.main(["pipeline"]) == 2  # the default run.storage, outputs
    assert "run.storage 'outputs' is relative" in capsys.readouterr().err
