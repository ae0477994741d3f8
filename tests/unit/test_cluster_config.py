"""cluster.yaml passes Ray's own launcher validation and matches the project's pins."""

from __future__ import annotations

import copy
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_validates_cluster_yaml(cluster: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))  # raises on any schema error


def test_ray_rejects_a_broken_copy(cluster: dict) -> None:
    """The validation above can fail: an unknown head node type is rejected."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))


def test_image_matches_installed_ray_and_python(cluster: dict) -> None:
    image = cluster["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{version('ray')}-py311")
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[train,data,tune,default]=={version('ray')}" in pins


def test_token_auth_and_shared_memory(cluster: dict) -> None:
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "-e RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert any(o.startswith("--shm-size=") for o in cluster["docker"]["run_options"])
    assert "/home/ray/.ray/auth_token" in cluster["file_mounts"]


def test_gpu_worker_type_exists(cluster: dict) -> None:
    types = cluster["available_node_types"]
    assert types["gpu"]["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert types["gpu"]["max_workers"] >= 1
