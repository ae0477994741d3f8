"""Shards and sources on S3, against moto's S3 server on loopback (see tests/conftest.py).

What moto checks: bucket existence always. Credentials only after ``/moto-api/reset-auth``
turns authentication on; then it verifies the SigV4 signature against access keys of its own
IAM and evaluates IAM policies. The wrong-credentials test does exactly that, with a real IAM
user (allowed everything) whose key signs the good requests.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import boto3
import pytest
import requests
import s3fs

from sas_ray.cli import main
from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.executors.ray.data import read_dataset
from sas_ray.io import shards, storage
from sas_ray.stages.ingest import ingest

pytestmark = pytest.mark.usefixtures("ray_session")


def _cfg(shard_size: int = 3) -> Config:
    cfg = Config()
    cfg.data.shard_size = shard_size
    return cfg


def _upload(bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket.removeprefix("s3://"), Key=key, Body=data)


def test_ingest_to_s3_and_read_back(s3_bucket: str, tmp_path: Path, image_folder,
                                    capsys) -> None:
    image_folder(tmp_path / "src", {"train/cat": 3, "train/dog": 3, "test/cat": 2})
    local = ingest(str(tmp_path / "src"), str(tmp_path / "local"), _cfg())
    uri = f"{s3_bucket}/x/shards"
    remote = ingest(str(tmp_path / "src"), uri, _cfg())
    assert remote["meta"] == local["meta"]
    assert [f.split("/")[-1] for f in remote["files"]] == [f.split("/")[-1]
                                                          for f in local["files"]]
    assert sorted(storage.list_files(uri)) == sorted(
        storage.join(uri, f) for f in [*remote["files"], "manifest.json"])
    expected = shards.read_table(str(tmp_path / "local")).sort_by("id")
    assert shards.read_table(uri).sort_by("id").equals(expected)
    rows = sorted(read_dataset(uri, split="train").take_all(), key=lambda r: r["id"])
    train = expected.filter(expected["split"].to_numpy(zero_copy_only=False) == "train")
    assert [r["id"] for r in rows] == train["id"].to_pylist()
    assert [r["image"] for r in rows] == train["image"].to_pylist()
    assert main(["info", uri]) == 0
    assert f"shards      {uri}" in capsys.readouterr().out


def test_ingest_from_s3_directory_and_archive(s3_bucket: str, tmp_path: Path,
                                              image_folder) -> None:
    written = image_folder(tmp_path / "src", {"train/cat": 2, "test/dog": 2})
    for rel, data in written.items():
        _upload(s3_bucket, f"folder/{rel}", data)
    with tarfile.open(tmp_path / "src.tgz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="src")
    _upload(s3_bucket, "archive.tgz", (tmp_path / "src.tgz").read_bytes())
    ingest(str(tmp_path / "src"), str(tmp_path / "local"), _cfg())
    expected = shards.read_table(str(tmp_path / "local")).sort_by("id")
    for source, out in ((f"{s3_bucket}/folder", "a"), (f"{s3_bucket}/archive.tgz", "b")):
        ingest(source, str(tmp_path / out), _cfg())
        assert shards.read_table(str(tmp_path / out)).sort_by("id").equals(expected)


def test_missing_bucket_is_one_clear_line(s3_server: str, tmp_path: Path) -> None:
    for action in (lambda: shards.read_table("s3://no-such-bucket/shards"),
                   lambda: ingest("synthetic", "s3://no-such-bucket/out", _cfg()),
                   lambda: ingest("s3://no-such-bucket/data.tar.gz", str(tmp_path / "o"), _cfg())):
        with pytest.raises(SasRayError) as err:
            action()
        text = str(err.value)
        assert "no-such-bucket" in text and "\n" not in text
        assert "create the bucket" in text or "does not exist" in text
    assert not (tmp_path / "o").exists()


@pytest.fixture
def moto_auth(s3_server: str) -> object:
    """An IAM user allowed everything; moto checks signatures while the fixture is active."""
    iam = boto3.client("iam", endpoint_url=s3_server)
    iam.create_user(UserName="sasray")
    iam.put_user_policy(UserName="sasray", PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="sasray")["AccessKey"]
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield key
    finally:
        requests.post(f"{s3_server}/moto-api/reset-auth", data=b"inf", timeout=10)
        s3fs.S3FileSystem.clear_instance_cache()


def test_wrong_credentials_are_one_clear_line(s3_bucket: str, synthetic_shards: str,
                                              moto_auth: dict, monkeypatch) -> None:
    uri = f"{s3_bucket}/shards"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_auth["SecretAccessKey"])
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches clients with their credentials
    table = shards.read_table(synthetic_shards)
    with storage.write_artifact(uri, shards.STAGE) as w:
        shards.write_shard(table, storage.join(w.dir, "part-0.parquet"))
        w.meta = {"class_names": []}
    assert shards.read_table(uri).num_rows == table.num_rows  # the right key works
    for key_id, secret in ((moto_auth["AccessKeyId"], "wrong-secret"),
                           ("AKIAUNKNOWNKEY000000", moto_auth["SecretAccessKey"])):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(SasRayError) as err:
            shards.read_table(uri)
        assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in str(err.value)
        assert "\n" not in str(err.value)
