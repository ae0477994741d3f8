"""The core and the replication script run where only torch, torchvision, numpy and PIL exist
(the GPU machine has no Ray): imports and a tiny end-to-end run with Ray, pyarrow, PyYAML,
s3fs and pandas made unimportable."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Importing any of these modules raises ImportError in the child process.
BLOCK = ("import sys\n"
         "for name in ('ray', 'pyarrow', 'yaml', 's3fs', 'pandas'):\n"
         "    sys.modules[name] = None\n")
REPLICATE = (BLOCK + "import runpy\nsys.argv[0] = 'benchmarks.replicate'\n"
             "runpy.run_module('benchmarks.replicate', run_name='__main__')\n")
CORE = ["sas_ray.config", *(m.name for m in pkgutil.walk_packages(
    [str(ROOT / "sas_ray" / "core")], "sas_ray.core.") if not m.ispkg)]
TINY = ["--scale", "gpu", "--device", "cpu", "--threads", "1", "--pool", "60", "--test", "30",
        "--epochs", "1", "--proxy-epochs", "1", "--forget-epochs", "2", "--batch-size", "16",
        "--views", "1", "--width", "0.0625", "--proxy-width", "0.0625", "--seeds", "0",
        "--fractions", "0.5", "--strategies", "sas,random", "--latent", "labels,kmeans",
        "--forgetting-fraction", "0.5"]


def replicate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", REPLICATE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_core_modules_import_without_ray() -> None:
    code = BLOCK + "".join(f"import {name}\n" for name in CORE)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def cifar_like_tar(tmp_path: Path, image_folder: Callable[..., object]) -> Path:
    """A CIFAR-10-shaped ImageFolder tar: train/ and test/ with 10 classes of 32 px PNGs."""
    root = tmp_path / "cifar_like"
    counts = {f"{split}/class{k}": n for split, n in (("train", 8), ("test", 4))
              for k in range(10)}
    image_folder(root / "cifar", counts, size=32)
    path = root / "cifar.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(root / "cifar", arcname="cifar")
    return path


def test_replication_runs_without_ray_and_resumes(cifar_like_tar: Path, tmp_path: Path) -> None:
    out = tmp_path / "replicate"
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n<!-- BEGIN replicate report -->\nold\n<!-- END replicate report -->\n"
                   "hand-written verdict\n")
    first = replicate(*TINY, "--data", str(cifar_like_tar), "--out", str(out), "--doc", str(doc))
    assert first.returncode == 0, first.stderr[-3000:]

    runs = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    # full data and random (both latent-free), sas under both latent methods, and the least /
    # most forgettable subsets under the primary one
    assert sorted(runs) == sorted([
        "any__full__f1__s0", "any__random__f0.5__s0", "labels__sas__f0.5__s0",
        "kmeans__sas__f0.5__s0", "labels__cnn-forgetting-least__f0.5__s0",
        "labels__cnn-forgetting-most__f0.5__s0"])
    for name, record in runs.items():
        assert 0 <= record["linear_acc"] <= 100 and 0 <= record["knn_acc"] <= 100, name
    settings = json.loads((out / "settings.json").read_text())
    assert settings["pool_size"] == 60 and settings["test_size"] == 30
    assert "forgetting_correlation" in settings
    text = doc.read_text()
    assert "old" not in text and "hand-written verdict" in text
    assert (out / "report.md").read_text().strip() in text

    # a rerun with the same settings finds every run done and trains nothing
    again = replicate(*TINY, "--data", str(cifar_like_tar), "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert " run " not in again.stdout + again.stderr
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted(runs)

    # other scale settings in the same directory are refused in one line, nothing lost
    other = replicate(*TINY, "--epochs", "2", "--data", str(cifar_like_tar), "--out", str(out))
    assert other.returncode == 2
    assert other.stderr.strip().startswith("error:") and "pass a new --out" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted(runs)

    # without pandas / matplotlib the report has no plots; where they exist (here) the report
    # links one plot per latent method, copied next to the document
    assert "![" not in text
    done = subprocess.run([sys.executable, "-m", "benchmarks.replicate", "--out", str(out),
                           "--report-only", "--doc", str(doc)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for latent in ("labels", "kmeans"):
        name = f"accuracy_vs_fraction-{latent}.png"
        assert f"](doc/{name})" in doc.read_text()
        assert (tmp_path / "doc" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"](plots/{name})" in (out / "report.md").read_text()
