"""What a measurement ran on: the machine and how busy it was (standard library and torch).

A trial's training time means little without the machine and its load, so every trial
result carries :func:`describe` taken around its fit (``load_before`` / ``load_after``: the
1-minute load average, i.e. runnable processes averaged over the last minute; on 2 cores a
load above 2 means the trial shared its cores).
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def accelerator() -> str | None:
    """The first CUDA device's name, or None on a CPU-only machine."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def load() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def describe() -> dict[str, Any]:
    """``host``, ``cpu``, ``cores``, ``accelerator`` and the current ``load``."""
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": cores(),
            "accelerator": accelerator(), "load": load()}
