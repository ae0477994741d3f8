"""keep_freed_memory: a buffer freed and allocated again is reused, not mapped and zeroed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sas_ray.core import memory

CHILD = """
import resource, sys
import torch
from sas_ray.core.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(16):  # 128 MiB, touched, freed: the heap grows until a freed block fits
    torch.ones(1 << 25)  # (torch's 64-byte-aligned request is a little larger than a block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(1 << 25)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_freed_buffers_are_reused_not_faulted_in_again() -> None:
    if not memory.keep_freed_memory():
        pytest.skip("the C library is not glibc: keep_freed_memory changes nothing here")
    kept, with_keep = faults("keep")
    _, without = faults("default")
    assert kept == "True"
    pages = 10 * (1 << 27) // 4096  # ten 128 MiB buffers, 4 KiB pages
    assert without > 0.9 * pages  # glibc maps each one anew (torch asks for no huge pages)
    assert with_keep < 0.01 * pages
