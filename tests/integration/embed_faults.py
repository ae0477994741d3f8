"""Faults for the embedding stage's tests, injected as a batch class (no production hook)."""

from __future__ import annotations

import os

import pyarrow as pa

from sas_ray.stages.embed import EmbedBatch


def crash_once(after: int, marker: str) -> type[EmbedBatch]:
    """An :class:`EmbedBatch` whose first instance to reach its ``after``-th batch exits its
    process, once per ``marker`` (a file created atomically when it does). The class is made
    here, so cloudpickle ships it to Ray's actors by value: workers need not import tests."""

    class CrashOnce(EmbedBatch):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.batches = 0

        def __call__(self, batch: pa.Table) -> pa.Table:
            self.batches += 1
            if self.batches == after:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    return CrashOnce
