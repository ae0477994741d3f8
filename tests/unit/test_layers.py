"""The layering holds at import time: every core module imports without Ray, the S3 stack,
pyarrow or pandas (a GPU box may lack them), and the local executor, every stage and the
pipeline import without Ray (``run.executor: local`` runs where Ray is not installed)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sas_ray"


def modules(folder: str) -> list[str]:
    """Every module below ``sas_ray/<folder>`` (packages included), as dotted names."""
    prefix = "sas_ray." + folder.replace("/", ".")
    return [prefix, *(m.name for m in pkgutil.walk_packages([str(PACKAGE / folder)],
                                                             prefix + "."))]


def import_with_blocked(names: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import ``names`` in a fresh interpreter in which importing ``blocked`` fails."""
    code = ("import sys\n" + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
            + "".join(f"import {n}\n" for n in names))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("names", "blocked"), [
    (["sas_ray.config", *modules("core")],
     ("ray", "s3fs", "boto3", "botocore", "pyarrow", "pandas")),
    ([*modules("executors/local"), *modules("stages"), "sas_ray.pipeline", "sas_ray.cli"],
     ("ray",)),
])
def test_layers_import_without_what_they_must_not_need(names: list[str],
                                                       blocked: tuple[str, ...]) -> None:
    assert len(names) > 3
    done = import_with_blocked(names, blocked)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_check_catches_a_blocked_import() -> None:
    done = import_with_blocked(["sas_ray.executors.ray.tune"], ("ray",))
    assert done.returncode != 0 and "ray" in done.stderr
