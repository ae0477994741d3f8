"""What a benchmark ran on: CPU model, cores, memory, GPU, library versions, date.

Reads ``/proc`` (through :mod:`sas_ray.core.machine`) and package metadata only, so it
imports neither Ray nor pyarrow.
"""

from __future__ import annotations

import datetime
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, RAM (GiB), load average, GPU (if torch sees one), versions."""
    import torch

    from sas_ray.core import machine

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": machine.cpu_model(),
        "cores": machine.cores(),
        "ram_gib": _memory_gib(),
        "load_avg_1m": round(machine.load(), 2),
        "gpu": machine.accelerator(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "ray": _version("ray"),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown-friendly line describing the machine."""
    gpu = info["gpu"] or "no GPU"
    return (f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {gpu}; "
            f"1-min load average {info['load_avg_1m']} at start; Python {info['python']}, "
            f"torch {info['torch']} ({info['torch_threads']} threads), "
            f"torchvision {info['torchvision']}, numpy {info['numpy']}, ray {info['ray']}; "
            f"{info['date']}")
