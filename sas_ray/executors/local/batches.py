"""A batch class over the shards in this process: torch threads, a GPU when there is one.

The batches are :func:`sas_ray.io.shards.plan_batches`'s, read one at a time (only the row
groups that hold a batch) and prepared (decoded) by a thread one batch ahead of the batch
class (Pillow and pyarrow release the GIL), so memory holds two batches and at most one
output file's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import torch

from sas_ray.core import machine
from sas_ray.executors.base import ROWS_PER_FILE, BatchClass, Prepare, Workers
from sas_ray.io import shards, storage
from sas_ray.io.artifacts import write_table


def one_ahead(load: Callable[[Any], pa.Table], items: Sequence[Any]) -> Iterator[pa.Table]:
    """``load(item)`` for each item in order, the next one computed by a thread meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix="prepare") as pool:
        future = pool.submit(load, items[0]) if items else None
        for i in range(len(items)):
            table = future.result()
            if i + 1 < len(items):
                future = pool.submit(load, items[i + 1])
            yield table


def map_batches(fn: BatchClass, fn_kwargs: dict[str, Any], data: str, split: str,
                columns: list[str], batch_size: int, out_dir: str,
                workers: Workers, prepare: Prepare | None = None) -> dict[str, Any]:
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

        def load(batch: shards.ShardBatch) -> pa.Table:
            table = shards.read_batch(batch, filesystem, split, columns)
            return table if prepare is None else prepare(table)

        for table in one_ahead(load, batches):
            pending.append(apply(table))
            if sum(t.num_rows for t in pending) >= ROWS_PER_FILE:
                flush()
        flush()
    finally:
        torch.set_num_threads(before)
    return {"workers": 1, "threads": threads, "device": device}
