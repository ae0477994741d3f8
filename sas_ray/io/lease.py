"""Leases: one writer per artifact at a time.

A writer takes the lease ``URI/.lease.json`` before it stages anything and checks that it
still holds it just before it commits the manifest. The lease file names its holder (user,
host, pid, a random token) and a heartbeat time that a background thread refreshes every
``timeout_s / 4`` seconds. Taking it is an exclusive create:

- local: the record is written to a temporary file and hard-linked to the lease path
  (``link`` fails when the path exists, and readers never see a half-written record);
- S3: a conditional PUT (``If-None-Match: *``), which S3 refuses with 412 when the key exists.

A second writer fails at once with one line naming the holder (or waits up to ``wait_s``).
A lease is *stale*, and is taken over, when its heartbeat is older than ``timeout_s``, when
its holder is a process on this host that no longer exists, or when it is this very process's
but no longer held (a write that failed while storage was unreachable cannot remove it).
Take-over deletes the stale file and retries the exclusive create, so of two writers that both
find the same stale lease only one gets it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sas_ray.errors import SasRayError
from sas_ray.io import fs as storage

LEASE_FILE = ".lease.json"
TIMEOUT_S = 120.0  # a heartbeat older than this marks the holder as gone
POLL_S = 0.5


_HELD: set[str] = set()  # tokens of the leases this process holds


class LeaseHeldError(SasRayError):
    """Another live writer holds the artifact's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_exclusive(uri: str, data: bytes) -> bool:
    """Create the file ``uri`` holding ``data`` unless it exists; True if this call made it."""
    if storage.is_s3(uri):
        fs = storage.s3fs_filesystem()
        try:
            fs.pipe_file(uri[len("s3://"):], data, mode="create")
        except (FileExistsError, OSError) as err:
            if isinstance(err, FileExistsError) or "PreconditionFailed" in str(err) \
                    or "412" in str(err):
                return False
            raise storage.explain_s3_error(uri, err) from err
        return True
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, uri)
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


def _read(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(path))
    except (SasRayError, OSError, ValueError):
        return None  # gone (released in between) or being replaced


def describe(record: dict[str, Any]) -> str:
    age = time.time() - float(record.get("heartbeat", 0))
    return (f"{record.get('owner')}@{record.get('host')} pid {record.get('pid')} "
            f"(heartbeat {age:.0f} s ago)")


def is_stale(record: dict[str, Any], timeout_s: float) -> bool:
    if time.time() - float(record.get("heartbeat", 0)) > timeout_s:
        return True
    if record.get("host") != socket.gethostname():
        return False
    pid = int(record["pid"])
    return not _pid_alive(pid) or (pid == os.getpid() and record.get("token") not in _HELD)


@dataclass
class Lease:
    """A held lease; refreshed in the background until :meth:`release`."""

    path: str
    record: dict[str, Any]
    timeout_s: float
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        _HELD.add(self.record["token"])
        threading.Thread(target=self._beat, daemon=True, name="sas-ray-lease").start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            with contextlib.suppress(Exception):
                if self.holds():
                    self.record["heartbeat"] = time.time()
                    storage.write_json_atomic(self.path, self.record)

    def holds(self) -> bool:
        current = _read(self.path)
        return current is not None and current.get("token") == self.record["token"]

    def check(self) -> None:
        """Raise unless this writer still holds the lease (call just before committing)."""
        if not self.holds():
            current = _read(self.path)
            holder = describe(current) if current else "nobody"
            raise LeaseHeldError(f"lost the write lease on {self.path} (now held by {holder}) "
                                 "while writing; nothing was committed - rerun the stage")

    def release(self) -> None:
        self._stop.set()
        _HELD.discard(self.record["token"])
        with contextlib.suppress(Exception):
            if self.holds():
                storage.delete(self.path)


def acquire(uri: str, *, wait_s: float = 0.0, timeout_s: float = TIMEOUT_S) -> Lease:
    """Take the lease on the artifact at ``uri`` (see the module docstring)."""
    path = storage.join(uri, LEASE_FILE)
    record = {"owner": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(),
              "token": uuid.uuid4().hex, "acquired": time.time(), "heartbeat": time.time()}
    deadline = time.monotonic() + wait_s
    while True:
        record["heartbeat"] = time.time()
        with storage.s3_errors(path):
            if _create_exclusive(storage.absolute(path), json.dumps(record).encode()):
                return Lease(path, record, timeout_s)
        holder = _read(path)
        if holder is not None and is_stale(holder, timeout_s):
            storage.delete(path)
            continue
        if time.monotonic() >= deadline:
            who = describe(holder) if holder else "another writer"
            raise LeaseHeldError(f"{uri} is being written by {who}; wait for it to finish, or "
                                 f"delete {path} if that process is gone")
        time.sleep(POLL_S)


@contextlib.contextmanager
def held(uri: str, *, wait_s: float = 0.0, timeout_s: float = TIMEOUT_S) -> Iterator[Lease]:
    """``with held(uri) as lease:`` - the lease for the block's duration."""
    lease = acquire(uri, wait_s=wait_s, timeout_s=timeout_s)
    try:
        yield lease
    finally:
        lease.release()
