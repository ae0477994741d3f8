"""Shared fixtures: one local Ray session per test run, and a real S3 API (moto) on loopback.

The S3 environment (endpoint, dummy credentials) is set at import time, before any Ray
worker starts, so Ray workers inherit it; the moto server itself starts on first use.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


# The smallest run that still exercises every stage: 2 classes of 16 px images, 1 epoch.
TINY_RUN: dict[str, object] = {
    "data.synthetic_classes": 2, "data.synthetic_train_per_class": 32,
    "data.synthetic_test_per_class": 8, "data.synthetic_size": 16, "data.image_size": 16,
    "model.width": 0.125, "model.proj_dim": 16, "train.epochs": 1, "train.batch_size": 16,
    "proxy.epochs": 1, "eval.knn_k": 5, "eval.probe_epochs": 20, "embed.views": 1,
    "embed.num_actors": 1,
}


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A TCP port free on every interface, drawn from 20000-32767: above the worker ports of
    `ray start` (10002-19999) and below the kernel's ephemeral range (32768-60999). A port
    the kernel hands out (bind to port 0) can be taken, between the test picking it and a
    server binding it, by the client side of any new connection or by a Ray process that
    listens on port 0; that once left a test head without its job agent."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32768)
        if port in _GIVEN:  # never the same port twice in one test session
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


S3_PORT = _free_port()
os.environ.update({
    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
})
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """One local Ray instance (2 CPUs) shared by every test that asks for it."""
    import ray

    from sas_ray.config import RunConfig
    from sas_ray.executors.ray.session import ensure_ray

    ensure_ray(RunConfig(num_cpus=2, object_store_mb=1024))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL_S3"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test; returns ``s3://<bucket>``."""
    import boto3

    name = "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def cifar10_tar() -> Path:
    if not CIFAR10_TAR.exists():
        pytest.skip(f"real CIFAR-10 archive not found at {CIFAR10_TAR} (needs ../shared/datasets)")
    return CIFAR10_TAR


@pytest.fixture(scope="session")
def synthetic_shards(ray_session: object, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The built-in synthetic data set, curated (no long tail, duplicates or junk): 4
    classes of 64 train + 16 test images, 32x32 RGB, ingested once per session; returns the
    shard dir."""
    from sas_ray.config import Config
    from sas_ray.stages.ingest import ingest

    out = tmp_path_factory.mktemp("synthetic") / "shards"
    cfg = Config()
    d = cfg.data
    d.synthetic_classes, d.synthetic_train_per_class, d.synthetic_test_per_class = 4, 64, 16
    d.synthetic_imbalance, d.synthetic_duplicates, d.synthetic_junk = 1.0, 0.0, 0.0
    ingest("synthetic", str(out), cfg)
    return str(out)


def _write_image_folder(root: Path, counts: dict[str, int], size: int = 8,
                        seed: int = 0) -> dict[str, bytes]:
    """Write ``counts[folder]`` small random PNGs into each ``root/folder`` (``""`` = root);
    returns ``{relative path: PNG bytes}``."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            buf = io.BytesIO()
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="PNG")
            rel = f"{folder}/{i:03d}.png".lstrip("/")
            (root / rel).write_bytes(buf.getvalue())
            written[rel] = buf.getvalue()
    return written


@pytest.fixture
def image_folder() -> object:
    """``image_folder(root, {"train/cat": 3, "test/dog": 2}, size=8, seed=0)`` writes small
    random PNGs and returns ``{relative path: bytes}``."""
    return _write_image_folder


@pytest.fixture
def tiny_run() -> dict[str, object]:
    """Config overrides (``section.key`` -> value) of the smallest run that exercises every
    stage; tests add the sweep settings they need."""
    return dict(TINY_RUN)


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` -> a TCP port no other process is likely to take (see ``_free_port``)."""
    return _free_port
