"""Ctrl-C / SIGTERM reach the CLI as exceptions even while subprocesses are being started."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sas_ray import interrupts

ROOT = Path(__file__).resolve().parents[2]
# A process that imports logging (whose lock functions run as at-fork hooks) and, as Ray does
# when it starts its head, forks subprocesses with a preexec_fn; 1 GiB mapped makes each fork
# slow enough that a signal often arrives during it. With Python's default handler about a
# third of the interrupts are lost ("Exception ignored in: <function _releaseLock>").
FORKING = """
import logging, subprocess, sys
from sas_ray import interrupts
interrupts.install()
big = bytearray(1 << 30)
print("ready", flush=True)
try:
    while True:
        subprocess.Popen(["true"], preexec_fn=lambda: None).wait()
except KeyboardInterrupt as err:
    sys.exit(interrupts.exit_code(err))
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_no_signal_is_lost_while_subprocesses_start(signum: int, code: int) -> None:
    rng = random.Random(0)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", FORKING], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.05, 0.3))
        proc.send_signal(signum)
        try:
            assert proc.wait(timeout=5) == code
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"signal {signum} lost: {proc.communicate()[1][-2000:]}")


def test_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    restore = interrupts.install()
    with pytest.raises(interrupts.Terminated):
        signal.raise_signal(signal.SIGTERM)
    restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
