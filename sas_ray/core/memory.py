"""Keep freed memory in the process: what a process that allocates the same large buffers
every step (a training step, an embedding batch) wants from glibc's malloc.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised as large
blocks are freed, to at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap``
when freed, and gives the top of its heap back to the OS once 128 KiB of it is free. A CPU
training step allocates its activations and their gradients anew each step (ResNet-10 x0.25
at 32 px, batch 256 of 2 views: about 1 GiB, in tensors of 34 MiB), so each step the kernel
maps and zeroes them again, one 4 KiB page fault at a time: ``python -m benchmarks.memory``
measures 311k minor faults per step and 365 img/s there, against 128 faults and 633 img/s
with this module's settings (2 cores; 1.17x at batch 128, 1.35x for the embedding at 224 px).

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (every block comes from the heap, which
reuses freed space) and ``M_TRIM_THRESHOLD`` to its largest value (``mallopt`` takes a C
int: 2 GiB; the heap's free top is returned only beyond that). The cost: the process keeps
its peak heap (up to 2 GiB more) until it exits, which for a training or embedding worker is
what it needs next step anyway, and the heap settles a little above the step's peak (torch
asks for 64-byte-aligned blocks, slightly larger than the freed ones, so the first few steps
grow it: peak RSS 1473 vs 1334 MiB at batch 256). It is a no-op where the C library is not
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt's value is a C int


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse (module docstring); True when
    glibc took both settings (once per process; later calls return the first answer)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: other parameter numbers
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                         LARGEST_TRIM_THRESHOLD))
