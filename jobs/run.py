"""Entrypoint for ``ray job submit``: ``python jobs/run.py COMMAND [--config FILE] [...]``.

COMMAND is any ``sas-ray`` subcommand; the jobs of interest are ``pipeline``, ``select``,
``train`` and ``sweep``. Inside a submitted job ``RAY_ADDRESS`` is set, so every stage joins
the cluster instead of starting a local Ray. Example::

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/run.py pipeline --config configs/cifar10_cpu.yaml --run.storage s3://B/P

The job's ``python`` is the first on the PATH of the head's Ray (the environment ``ray start``
ran in): start the head from the sas-ray environment (the cluster image with ``pip install
-e``, or an activated venv), or name that environment's interpreter in the entrypoint.
Outputs must outlive the job: ``run.storage`` and ``--out`` are absolute paths on storage
every node shares, or ``s3://`` (a relative one is refused).
"""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NEEDED = ("ray", "torch", "pyarrow", "s3fs", "yaml")  # what every stage imports

if __name__ == "__main__":
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"jobs/run.py: {sys.executable} cannot import {', '.join(missing)}; start "
                 "the head's Ray from the sas-ray environment (e.g. `source .venv/bin/activate "
                 "&& ray start --head`, or cluster.yaml's image) or name that environment's "
                 "interpreter in the entrypoint (`-- /PATH/TO/.venv/bin/python jobs/run.py`)")
    from sas_ray.cli import main

    sys.exit(main())
