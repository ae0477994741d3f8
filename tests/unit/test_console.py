"""The terminal / log-file routing of a command's output (no Ray: lines as Ray prints them)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from sas_ray import console
from sas_ray.console import Router, classify

RAY_LINES = [
    "\x1b[36m(TrainController pid=19552)\x1b[0m [2026-12-01 09:44:52,271 E 19552 19589] "
    "core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' has constructor ...",
    "[2026-12-01 09:45:06,656 E 19021 19021] core_worker.cc:2465: Actor with class name: ...",
    "(SplitCoordinator pid=812) execution finished in 0.2 s",
    "(PlacementGroupCleaner pid=8199) Traceback (most recent call last):",
    "2026-12-01 09:03:54,029\tINFO streaming_executor.py:215 -- Starting execution of Dataset",
    "(MapWorker(MapBatches(EmbedBatch)) pid=77, ip=10.0.0.2) some worker output",
]


def test_ray_lines_go_to_the_file_and_epochs_are_progress() -> None:
    assert all(classify(line)[0] == "file" for line in RAY_LINES)
    route, text = classify("\x1b[36m(RayTrainWorker pid=8314)\x1b[0m epoch 2/5  loss 4.1  "
                           "img/s 369")
    assert route == "progress" and text.startswith("epoch 2/5")
    assert classify("09:45:15 sweep: 5 trials (5 cells x 1 seeds)")[0] == "terminal"
    assert classify("strategy  fraction  seeds")[0] == "terminal"


def test_router_keeps_the_last_epoch_and_drops_status_lines_off_a_terminal() -> None:
    target, log = io.StringIO(), io.StringIO()
    router = Router(target, log, verbose=False)
    router.write("epoch 1/2  loss 5.0\n" + RAY_LINES[2] + "\nthe table\n")
    router.line("stage proxy ...", transient=True)
    router.write("(RayTrainWorker pid=1) epoch 2/2  loss 4.0\npartial")
    assert target.getvalue() == "the table\n  epoch 2/2  loss 4.0\n"
    assert log.getvalue().count("\n") == 5 and RAY_LINES[2] in log.getvalue()
    verbose_target = io.StringIO()
    Router(verbose_target, io.StringIO(), verbose=True).write(RAY_LINES[0] + "\n")
    assert verbose_target.getvalue() == RAY_LINES[0] + "\n"


def test_console_writes_a_log_file_and_restores_the_process(tmp_path: Path, capsys) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with console.console("pipeline", str(tmp_path), verbose=False) as path:
        logging.getLogger("sas_ray.pipeline").info("stage shards: ran in 1.0 s")
        logging.getLogger("ray.data").warning("ray's own warning")
        print(RAY_LINES[1])
        print("the table")
    out = capsys.readouterr().out
    assert "stage shards: ran in 1.0 s" in out and "the table" in out and f"log: {path}" in out
    assert "ray's own warning" not in out and "core_worker" not in out
    text = Path(path).read_text()
    assert Path(path).parent == tmp_path / "logs"
    assert "ray's own warning" in text and "core_worker" in text and "the table" in text
    assert root.handlers == handlers and root.level == level
