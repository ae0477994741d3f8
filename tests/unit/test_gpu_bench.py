"""The GPU check's smoke run: ``python -m benchmarks.gpu --device cpu --quick`` at toy sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_cpu_run_measures_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick",
                           "--threads", "1", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["hardware"]["device_name"].startswith("CPU")
    assert len(result["train"]) == 2 and not result["notes"][:-1]  # nothing skipped
    for case in result["train"].values():
        assert case["images_per_s"] > 0 and case["decode_images_per_s"] > 0
        assert case["augmentation_share"] > 0 and case["gpu_utilisation"] is None
    png, jpeg = result["train"].values()  # the JPEG case also times decode_jpeg there
    assert png["device_decode_images_per_s"] is None
    assert jpeg["device_decode_images_per_s"] > 0
    assert result["embed"]["images_per_s"] > 0 and result["embed"]["views"] == 2
    for key in ("one_class", "many_classes"):
        assert result["sas"][key]["ranked"] == result["sas"][key]["rows"]
