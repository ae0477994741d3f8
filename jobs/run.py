"""Entrypoint for ``ray job submit``: ``python jobs/run.py COMMAND [--config FILE] [...]``.

COMMAND is any ``sas-ray`` subcommand; the jobs of interest are ``pipeline``, ``select``,
``train`` and ``sweep``. Inside a submitted job ``RAY_ADDRESS`` is set, so every stage joins
the cluster instead of starting a local Ray. Example::

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/run.py pipeline --config configs/cifar10_cpu.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sas_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
