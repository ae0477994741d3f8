"""Connecting to Ray once per process, quietly, and asking what the cluster has.

``ensure_ray`` joins ``run.ray_address`` (or ``$RAY_ADDRESS``, e.g. inside ``ray job
submit``) when set, else starts a local instance. The local dashboard stays on: it also serves
the state API that Ray Train's placement-group cleaner polls, and without it (Ray 2.60) that
cleaner takes a live training run for dead and removes its workers mid-run.

A local instance is this driver's child processes (GCS, raylet, dashboard, log monitor) and
theirs (the dashboard and runtime-env agents, the dashboard's module processes, workers).
:func:`stop_ray` ends all of them; it runs at interpreter exit, and at once when ``ray.init``
fails or is interrupted (Ctrl-C; SIGTERM, which the CLI raises as an interrupt: ``ray.init``
would replace that handler, so it is put back).
``ray.shutdown`` alone does not: after an interrupted ``ray.init`` the agents keep running,
holding their ports, and a Ray process that dies orphans its children.

``cluster_gpus`` lets stages decide ``num_gpus`` from real resources: a GPU actor on a
CPU-only cluster would wait forever.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any

import psutil

from sas_ray.config import RunConfig

log = logging.getLogger(__name__)
# Ray Train 2.60's own DatasetManager actor uses a Ray Data option that Ray deprecated; the
# warning (one per training run) is not actionable for users. Local workers inherit this filter
# from the driver's environment; jobs/runtime_env.yaml sets it on a cluster.
RAY_INTERNAL_WARNINGS = ("ignore:`ExecutionOptions.exclude_resources` is deprecated"
                         ":DeprecationWarning")
_STARTED: list[psutil.Process] = []  # the processes ray.init started in this process


def ensure_ray(run: RunConfig | None = None) -> Any:
    """Initialise Ray if this process has not yet; returns the ``ray`` module."""
    import ray

    if ray.is_initialized():
        return ray
    run = run or RunConfig()
    address = run.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "configure_logging": True,
    }
    if address is None:
        filters = os.environ.get("PYTHONWARNINGS", "")
        if RAY_INTERNAL_WARNINGS not in filters:
            os.environ["PYTHONWARNINGS"] = f"{filters},{RAY_INTERNAL_WARNINGS}".lstrip(",")
        kwargs.update(address="local", num_cpus=run.num_cpus,
                      object_store_memory=run.object_store_mb and run.object_store_mb * 2**20)
    else:
        kwargs["address"] = address
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    before = {p.pid for p in psutil.Process().children()}
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        context = ray.init(**kwargs)
    except BaseException:  # Ctrl-C, SIGTERM or an error while the head starts
        _record_started(before)
        stop_ray()
        raise
    finally:
        _keep_sigterm_handler(on_sigterm)
    _record_started(before)
    log.info("ray: %s%s", ray.cluster_resources(),
             f", dashboard http://{context.dashboard_url}" if context.dashboard_url else "")
    return ray


def _keep_sigterm_handler(handler: Any) -> None:
    """Put back a Python SIGTERM handler (the CLI's, raising an interrupt) that ``ray.init``
    replaced: Ray's core worker installs its own, which prints a stack and aborts the driver
    (exit -6), so no clean-up would run."""
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _record_started(before: set[int]) -> None:
    """Remember this process's children not in ``before``; :func:`stop_ray` runs at exit,
    before Ray's own shutdown hook (atexit runs the last registered first)."""
    _STARTED.extend(p for p in psutil.Process().children() if p.pid not in before)
    atexit.unregister(stop_ray)
    atexit.register(stop_ray)


def _tree(roots: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The live processes among ``roots`` and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            if root.is_running():
                found[root.pid] = root
                found.update((p.pid, p) for p in root.children(recursive=True))
    return list(found.values())


def _end(procs: list[psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still running after ``grace_s``."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def stop_ray() -> None:
    """Disconnect from Ray and end every process :func:`ensure_ray` started, with all their
    descendants: listed before ``ray.shutdown`` (which orphans some) and again after it (for
    any started meanwhile)."""
    procs = _tree(_STARTED)
    _STARTED.clear()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    _end(_tree(procs))


def cluster_gpus() -> float:
    """GPUs the connected cluster has (0 on a CPU-only cluster)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def want_gpu(setting: str) -> bool:
    """Resolve a ``use_gpu`` setting (auto | true | false) against the cluster's resources."""
    s = setting.lower()
    if s == "auto":
        return cluster_gpus() > 0
    if s in ("true", "1", "yes"):
        if cluster_gpus() == 0:
            from sas_ray.errors import SasRayError

            raise SasRayError("use_gpu=true but the Ray cluster has no GPUs; set "
                              "--train.use_gpu auto/false or add GPU nodes")
        return True
    return False
