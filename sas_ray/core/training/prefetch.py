"""The training input: encoded batches decoded by threads, ahead of the step that uses them.

:func:`decoded_batches` keeps up to ``prefetch`` batches decoding while the consumer (the
training step) runs: each batch is split over ``threads`` decoding threads (Pillow releases
the GIL while it decodes and resizes, so the threads use separate cores), written straight
into one ``(n, size, size, 3)`` uint8 buffer, pinned when the step runs on CUDA (so the
step's ``non_blocking`` copy is asynchronous). The consumer gets the buffer as a
``(n, 3, size, size)`` view (channels-last memory, the layout convolutions on CUDA prefer).
Batches come out in order and hold the same pixels as :func:`~sas_ray.core.data.images.
decode_images`; ``prefetch=0`` decodes each batch when it is asked for, in the consumer's
thread (no overlap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import torch

from sas_ray.core.data.images import decode_image

Encoded = Sequence[bytes]  # one batch of encoded images


def _decode_into(out: np.ndarray, images: Encoded, start: int, stop: int, size: int) -> None:
    for i in range(start, stop):
        out[i] = decode_image(images[i], (size, size))


def _allocate(n: int, size: int, pin: bool) -> torch.Tensor:
    return torch.empty((n, size, size, 3), dtype=torch.uint8, pin_memory=pin)


def decoded_batches(encoded: Iterable[Encoded], size: int, *, prefetch: int = 2,
                    threads: int = 1, pin: bool = False) -> Iterator[torch.Tensor]:
    """uint8 ``(n, 3, size, size)`` batches of the encoded images of each item of
    ``encoded`` (module docstring); ``pin``: page-locked buffers (needs CUDA)."""
    if prefetch == 0:
        for images in encoded:
            buf = _allocate(len(images), size, pin)
            _decode_into(buf.numpy(), images, 0, len(images), size)
            yield buf.permute(0, 3, 1, 2)
        return
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode")
    pending: deque[tuple[torch.Tensor, list[Future]]] = deque()
    source = iter(encoded)

    def submit() -> None:
        images = next(source, None)
        if images is None:
            return
        buf = _allocate(len(images), size, pin)
        bounds = np.linspace(0, len(images), max(1, threads) + 1).round().astype(int)
        pending.append((buf, [pool.submit(_decode_into, buf.numpy(), images, lo, hi, size)
                              for lo, hi in pairwise(bounds.tolist())
                              if hi > lo]))

    try:
        for _ in range(prefetch):
            submit()
        while pending:
            buf, futures = pending.popleft()
            for f in futures:
                f.result()  # re-raises a decoding error here
            submit()  # keep `prefetch` batches decoding while this one trains
            yield buf.permute(0, 3, 1, 2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
