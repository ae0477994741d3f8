"""Ctrl-C or SIGTERM at any moment ends every process `sas-ray` started, Ray's included.

`sas-ray pipeline` (the tiny run on the Ray executor, starting a local Ray) runs in a
subprocess whose environment carries a marker unique to the test; every process it starts,
directly or through Ray, inherits it. After the signal and the exit, no process whose
/proc/<pid>/environ holds the marker may remain.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAS_RAY = Path(sys.executable).parent / "sas-ray"
MARK = "SAS_RAY_TEST_INTERRUPT"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")]


def _marked(token: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds ``MARK=token``."""
    needle = f"{MARK}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                        b"\0", b" ").decode(errors="replace")
    return found


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ray_agents_starting(token: str, out: Path) -> Callable[[], bool]:
    """Ray's dashboard or runtime-env agent has started (seconds before ``ray.init``
    returns): the moment that used to leave the agents running, holding their ports."""
    return lambda: any("agent" in cmd for cmd in _marked(token).values())


def _a_stage_finished(token: str, out: Path) -> Callable[[], bool]:
    """Ray is up and the first stage has committed its artifact (the next one is starting)."""
    return lambda: (out / "shards" / "manifest.json").exists()


@pytest.mark.parametrize(("moment", "signum", "group", "code", "word"), [
    # Ctrl-C in a terminal signals the whole foreground process group
    (_ray_agents_starting, signal.SIGINT, True, 130, "interrupted"),
    # `kill PID`, `ray job stop`: the driver alone
    (_a_stage_finished, signal.SIGTERM, False, 143, "terminated"),
])
def test_a_signal_leaves_no_process_behind(moment: Callable[[str, Path], Callable[[], bool]],
                                           signum: int, group: bool, code: int, word: str,
                                           tmp_path: Path, tiny_run: dict[str, object]) -> None:
    token = secrets.token_hex(8)
    err = tmp_path / "stderr.txt"
    env = {**os.environ, MARK: token}
    env.pop("RAY_ADDRESS", None)
    args = [str(SAS_RAY), "pipeline", "--run.storage",
            str(tmp_path / "out"), "--run.executor", "ray", "--run.num_cpus", "2",
            *(a for key, value in tiny_run.items() for a in (f"--{key}", str(value)))]
    with err.open("w") as stderr:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    try:
        _wait_for(moment(token, tmp_path / "out"), 120, f"{moment.__name__} (stderr: {err})")
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        assert proc.wait(timeout=120) == code, err.read_text()[-3000:]
        assert err.read_text().splitlines()[-1] == f"sas-ray pipeline: {word}"
        with contextlib.suppress(AssertionError):  # Ray's processes exit within seconds
            _wait_for(lambda: not _marked(token), 15, "")
        assert _marked(token) == {}
    finally:
        for pid in _marked(token):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
