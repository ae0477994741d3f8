"""The first run a user sees: ``sas-ray pipeline`` on the built-in defaults (the demo's data
and model; the local executor, which CI affords: ``make demo`` runs the same stages on
Ray), the accuracy band that makes selection matter, a quiet terminal, and the report page
loaded in a real headless browser (Debian's chromium; skipped when it is not installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sas_ray.analysis.records import FULL, read_sweep
from sas_ray.config import Config
from sas_ray.core.evaluation import evaluate_encoder
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.seeding import seed_model
from sas_ray.stages.evaluate import load_split

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SAS_RAY = str(Path(sys.executable).with_name("sas-ray"))
RAY_NOISE = ("core_worker.cc", "SplitCoordinator", "PlacementGroupCleaner", "Traceback")
# appended to a copy of the page: the title lists every image as src=1 (decoded) or src=0
IMAGE_PROBE = ("<script>addEventListener('load', () => { document.title = 'images: ' + "
               "[...document.images].map(i => i.getAttribute('src') + '=' + "
               "(i.complete && i.naturalWidth > 0 ? 1 : 0)).join(' '); });</script>")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default pipeline's storage and its terminal output (stdout + stderr)."""
    root = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([SAS_RAY, "pipeline", "--run.executor", "local", "--run.storage",
                           str(root)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def random_init_accuracy(shards: Path) -> float:
    """Linear-probe test accuracy of an untrained encoder of the default architecture."""
    cfg = Config()
    seed_model(cfg.run.seed)
    model = model_from_config(cfg)
    train, test = (load_split(str(shards), split, cfg.data.image_size)
                   for split in ("train", "test"))
    torch.manual_seed(cfg.run.seed)
    return float(evaluate_encoder(model, *train, *test, cfg.eval, seed=cfg.run.seed)
                 ["linear_acc"])


def test_full_data_ssl_is_below_100_and_well_above_random_init(demo: tuple[Path, str]) -> None:
    root, _ = demo
    (full,) = [r for r in read_sweep(str(root / "sweep")) if r.strategy == FULL]
    trained, untrained = full.metrics["linear_acc"], random_init_accuracy(root / "shards")
    print(f"full-data SSL {trained:.1f}%, random init {untrained:.1f}%")
    assert trained < 97.0
    assert trained >= untrained + 10.0


def test_terminal_is_short_and_ray_free(demo: tuple[Path, str]) -> None:
    root, terminal = demo
    lines = terminal.splitlines()
    assert len(lines) < 60, terminal
    assert not [line for line in lines if any(noise in line for noise in RAY_NOISE)]
    (log,) = re.findall(r"log: (\S+)", terminal)
    assert Path(log).is_file() and Path(log).parent == root / "logs"
    assert "report: " + str(root / "report" / "index.html") in terminal
    assert re.search(r"sweep: 5/5 trials done", terminal)
    assert "duplicates kept" in terminal and "junk kept" in terminal


def page_images(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def load_in_chromium(page: Path) -> tuple[str, list[str]]:
    """The DOM headless Chromium renders for ``page`` and the console lines it logged."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if "CONSOLE" in line]


def test_report_page_loads_in_headless_chromium(demo: tuple[Path, str],
                                                tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does)")
    report = demo[0] / "report"
    page = report / "index.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, nothing fetched
    images = page_images(page)
    assert {"accuracy_vs_fraction.png", "training_curves.png", "gallery-sas.png",
            "gallery-random.png"} <= set(images)
    for name in images:  # each exists, is a PNG the report committed, and decodes
        assert (report / name).is_file(), name
        with Image.open(report / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    dom, console = load_in_chromium(page)
    assert console == [] and "Data savings" in dom and "<table>" in dom
    probe = tmp_path / "report"  # a copy with the image probe: did the browser decode them?
    shutil.copytree(report, probe)
    (probe / "index.html").write_text(text.replace("</body>", IMAGE_PROBE + "</body>"))
    dom, console = load_in_chromium(probe / "index.html")
    title = re.search(r"<title>images: (.*?)</title>", dom)
    assert title and console == [], (dom[:500], console)
    loaded = dict(item.rsplit("=", 1) for item in title[1].split())
    assert loaded == dict.fromkeys(images, "1")
    assert np.all([Path(report, n).stat().st_size > 1000 for n in images])


def test_show_draws_the_report_gallery(demo: tuple[Path, str], tmp_path: Path) -> None:
    root = demo[0]
    out = tmp_path / "sas.png"
    proc = subprocess.run([SAS_RAY, "show", str(root / "rankings" / "labels" / "sas"),
                           "--run.storage", str(root), "--fraction", "0.5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and f"wrote {out}" in proc.stdout, proc.stderr
    with Image.open(out) as shown, Image.open(root / "report" / "gallery-sas.png") as page:
        assert shown.size == page.size  # the same grid: 3 classes x kept/dropped x 8
    wrong = subprocess.run([SAS_RAY, "show", str(root / "rankings" / "random"), "--data",
                            str(root / "nowhere")], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "nowhere" in wrong.stderr
