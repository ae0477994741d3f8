"""The artifact lease on S3 (moto's server on loopback): a conditional PUT excludes writers."""

from __future__ import annotations

import pytest

from sas_ray.io import lease, storage


def test_s3_lease_is_exclusive_and_released(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/art"
    held = lease.acquire(uri)
    try:
        with pytest.raises(lease.LeaseHeldError, match="being written by"):
            lease.acquire(uri)
        with pytest.raises(lease.LeaseHeldError), storage.write_artifact(uri, "x"):
            pass
    finally:
        held.release()
    assert not storage.exists(storage.join(uri, lease.LEASE_FILE))
    with storage.write_artifact(uri, "x") as w:
        storage.write_bytes_atomic(storage.join(w.dir, "a.bin"), b"1")
    assert storage.require_manifest(uri, "x")["files"][0].endswith("a.bin")
