"""One writer per artifact: the lease of sas_ray.io.lease and write_artifact's use of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sas_ray.io import lease, storage

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_writer_fails_naming_the_holder(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    held = lease.acquire(uri)
    try:
        with pytest.raises(lease.LeaseHeldError, match=f"pid {os.getpid()}"):
            lease.acquire(uri)
        with pytest.raises(lease.LeaseHeldError, match="being written by"), \
                storage.write_artifact(uri, "x"):
            pass
        assert storage.read_manifest(uri) is None
    finally:
        held.release()
    assert not os.path.exists(tmp_path / "art" / lease.LEASE_FILE)
    with storage.write_artifact(uri, "x") as w:  # free again
        storage.write_bytes_atomic(storage.join(w.dir, "a.bin"), b"1")
    assert storage.read_manifest(uri)["stage"] == "x"


def test_a_second_writer_may_wait_for_the_first(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    held = lease.acquire(uri)
    start = time.monotonic()
    import threading

    threading.Timer(0.6, held.release).start()
    lease.acquire(uri, wait_s=10).release()
    assert 0.5 < time.monotonic() - start < 5


def _plant(uri: str, **record: object) -> None:
    path = Path(uri) / lease.LEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "token": "t",
                                "heartbeat": time.time(), **record}))


def test_stale_leases_are_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    _plant(str(tmp_path / "a"), host=socket.gethostname(), pid=int(dead.stdout))  # gone
    lease.acquire(str(tmp_path / "a")).release()
    _plant(str(tmp_path / "b"), heartbeat=time.time() - 1000)  # no heartbeat for long
    lease.acquire(str(tmp_path / "b"), timeout_s=60).release()
    _plant(str(tmp_path / "c"))  # live, on another host
    with pytest.raises(lease.LeaseHeldError, match="x@elsewhere pid 1"):
        lease.acquire(str(tmp_path / "c"), timeout_s=60)


def test_a_writer_that_lost_its_lease_does_not_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    with pytest.raises(lease.LeaseHeldError, match="lost the write lease"), \
            storage.write_artifact(uri, "x") as w:
        storage.write_bytes_atomic(storage.join(w.dir, "a.bin"), b"1")
        _plant(uri, token="someone-else")  # e.g. taken over after a long stall
    assert storage.read_manifest(uri) is None


def test_the_heartbeat_keeps_a_long_write_alive(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    held = lease.acquire(uri, timeout_s=0.4)
    try:
        time.sleep(1.0)  # > timeout: only the heartbeat keeps it fresh
        record = json.loads((tmp_path / "art" / lease.LEASE_FILE).read_text())
        assert not lease.is_stale(record, 0.4)
        with pytest.raises(lease.LeaseHeldError):
            lease.acquire(uri, timeout_s=0.4)
    finally:
        held.release()


INGEST = ["-m", "sas_ray.cli", "ingest", "synthetic", "{out}", "--run.executor", "local",
          "--data.synthetic_classes", "4", "--data.synthetic_train_per_class", "400",
          "--data.synthetic_test_per_class", "50", "--data.shard_size", "200"]


def test_two_concurrent_ingests_leave_one_complete_artifact(tmp_path: Path) -> None:
    out = str(tmp_path / "shards")
    args = [a.format(out=out) for a in INGEST]
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results
    for code, err in results:
        if code:
            assert code == 2 and "being written by" in err.strip().splitlines()[-1], err
    manifest = storage.require_manifest(out, "shards")
    rows: dict[str, int] = {}
    for f in storage.artifact_files(out, manifest):
        if f.endswith(".parquet"):
            split = pq.read_table(f, columns=["split"]).column("split").to_pylist()
            for s in split:
                rows[s] = rows.get(s, 0) + 1
    assert rows == {"train": 1600, "test": 200}
    assert {k: v["images"] for k, v in manifest["meta"]["splits"].items()} == rows
    assert not os.path.exists(Path(out) / lease.LEASE_FILE)


def test_a_lease_this_process_no_longer_holds_is_taken_over(tmp_path: Path) -> None:
    """A write that failed while storage was unreachable leaves its lease file behind; the
    same process's next write takes it over instead of waiting for the timeout."""
    import socket

    _plant(str(tmp_path / "art"), host=socket.gethostname(), pid=os.getpid(), token="old")
    lease.acquire(str(tmp_path / "art")).release()
