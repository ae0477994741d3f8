"""S3 that goes away: a short outage is retried, a long one is one clear error, and neither
leaves a corrupt artifact.

The S3 API is moto's server on loopback behind a TCP forwarder that the test takes down
(open connections reset, new ones closed on accept) and brings back.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from sas_ray.errors import SasRayError
from sas_ray.io import storage


class FlakyForwarder:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`down` cuts it until :meth:`up`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.available = threading.Event()
        self.available.set()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.available.is_set():
                _reset(client)
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _reset(s)

    def down(self) -> None:
        self.available.clear()
        with self.lock:
            for s in self.open:
                _reset(s)
            self.open.clear()

    def up(self) -> None:
        self.available.set()

    def close(self) -> None:
        self.down()
        self.listener.close()


def _reset(s: socket.socket) -> None:
    """Close with RST, as a dropped connection looks to the client."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


@pytest.fixture
def flaky_s3(s3_server: str, s3_bucket: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyForwarder]:
    host, port = s3_server.removeprefix("http://").split(":")
    forwarder = FlakyForwarder((host, int(port)))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{forwarder.port}")
    yield forwarder
    forwarder.close()


def _write(uri: str, files: dict[str, bytes], during: Callable[[], None] | None = None) -> None:
    """Write ``files`` as one artifact; call ``during()`` after the first file."""
    with storage.write_artifact(uri, "demo", config={"files": sorted(files)}) as w:
        for i, (name, data) in enumerate(files.items()):
            storage.write_bytes_atomic(storage.join(w.dir, name), data)
            if i == 0 and during is not None:
                during()


def _contents(uri: str) -> dict[str, bytes]:
    return {f.rsplit("/", 1)[1]: storage.read_bytes(f) for f in storage.artifact_files(uri)}


def test_a_short_outage_is_retried(flaky_s3: FlakyForwarder, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/short"

    def outage() -> None:
        flaky_s3.down()
        threading.Timer(1.5, flaky_s3.up).start()

    files = {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000}
    _write(uri, files, during=outage)
    assert _contents(uri) == files


def test_a_long_outage_is_one_clear_error_and_keeps_the_last_artifact(
        flaky_s3: FlakyForwarder, s3_bucket: str) -> None:
    uri = f"{s3_bucket}/long"
    first = {"a.bin": b"first-a", "b.bin": b"first-b"}
    _write(uri, first)
    committed = storage.read_manifest(uri)

    start = time.monotonic()
    with pytest.raises(SasRayError) as err:
        _write(uri, {"a.bin": b"second-a", "b.bin": b"second-b"}, during=flaky_s3.down)
    took = time.monotonic() - start
    message = str(err.value)
    assert "\n" not in message and uri in message, message
    assert "AWS_ENDPOINT_URL_S3" in message, message  # names the fix
    assert took < 120, f"gave up only after {took:.0f} s"

    flaky_s3.up()
    assert storage.read_manifest(uri) == committed  # the failed write changed nothing visible
    assert _contents(uri) == first
    third = {"a.bin": b"third-a", "b.bin": b"third-b"}
    _write(uri, third)  # and the next write works and clears the abandoned staging dir
    assert _contents(uri) == third
    staged = {f.split("/")[-2] for f in storage.list_files(uri) if "/v-" in f}
    assert len(staged) == 1
