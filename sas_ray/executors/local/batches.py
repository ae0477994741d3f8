"""A batch class over the shards in this process: torch threads, a GPU when there is one.

The batches are :func:`sas_ray.io.shards.plan_batches`'s, read one at a time (only the row
groups that hold a batch), so memory holds one batch and at most one output file's rows.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from sas_ray.core import machine
from sas_ray.executors.base import ROWS_PER_FILE, BatchClass, Workers
from sas_ray.io import shards, storage
from sas_ray.io.artifacts import write_table


def map_batches(fn: BatchClass, fn_kwargs: dict[str, Any], data: str, split: str,
                columns: list[str], batch_size: int, out_dir: str,
                workers: Workers) -> dict[str, Any]:
    """:meth:`sas_ray.executors.base.Executor.map_batches` in this process (one instance of
    ``fn``; ``workers.count`` and ``workers.cpus`` do not apply). Torch's thread count is
    restored afterwards."""
    filesystem, batches = shards.plan_batches(data, split, batch_size)
    threads = workers.threads or machine.cores()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pending: list[pa.Table] = []
    files = 0

    def flush() -> None:
        nonlocal files
        if pending:
            write_table(pa.concat_tables(pending), storage.join(out_dir,
                                                                f"part-{files:05d}.parquet"))
            files += 1
            pending.clear()

    before = torch.get_num_threads()
    try:
        apply = fn(**fn_kwargs, threads=threads, device=device)
        for batch in batches:
            pending.append(apply(shards.read_batch(batch, filesystem, split, columns)))
            if sum(t.num_rows for t in pending) >= ROWS_PER_FILE:
                flush()
        flush()
    finally:
        torch.set_num_threads(before)
    return {"workers": 1, "threads": threads, "device": device}
