"""Executors: where the stages' heavy work runs (see :mod:`sas_ray.executors.base`).

``get_executor(name, cfg)`` imports the chosen implementation lazily, so choosing ``local``
never imports Ray.
"""

from __future__ import annotations

import importlib

from sas_ray.config import Config
from sas_ray.executors.base import Executor

EXECUTORS = {"local": "sas_ray.executors.local:LocalExecutor",
             "ray": "sas_ray.executors.ray:RayExecutor"}


def get_executor(cfg: Config) -> Executor:
    """The executor named by ``run.executor``, configured from ``cfg``."""
    module, cls = EXECUTORS[cfg.run.executor].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
