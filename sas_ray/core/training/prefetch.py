"""The training input: encoded batches decoded by threads, ahead of the step that uses them,
or decoded once and gathered when the decoded rows fit in memory.

:func:`decoded_batches` keeps up to ``prefetch`` batches decoding while the consumer (the
training step) runs: each batch is split over ``threads`` decoding threads (Pillow releases
the GIL while it decodes and resizes, so the threads use separate cores), written straight
into one ``(n, size, size, 3)`` uint8 buffer, pinned when the step runs on CUDA (so the
step's ``non_blocking`` copy is asynchronous). The consumer gets the buffer as a
``(n, 3, size, size)`` view (channels-last memory, the layout convolutions on CUDA prefer).
Batches come out in order and hold the same pixels as :func:`~sas_ray.core.data.images.
decode_images`; ``prefetch=0`` decodes each batch when it is asked for, in the consumer's
thread (no overlap).

:class:`TrainInput` picks per fit: when all ``n`` decoded rows fit in ``cache_mb`` (CIFAR's
50k at 32 px: 147 MiB) they are decoded once (the first epoch, by the same threads) and every
batch is one gather from them, so small images cost no decoding per epoch and no decoding
thread competes for the GIL with the step (Pillow's per-image Python overhead bounds
threads to a few thousand small images per second); larger sets are decoded per batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def decode_all(encoded: Iterable[Encoded], n: int, size: int, threads: int) -> torch.Tensor:
    """The ``n`` images of ``encoded`` (batches, in order) decoded: uint8 ``(n, size, size, 3)``."""
    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    start = 0
    for batch in decoded_batches(encoded, size, prefetch=2, threads=threads):
        out[start:start + batch.shape[0]] = batch.permute(0, 2, 3, 1)
        start += batch.shape[0]
    return out


def gathered_batches(pixels: torch.Tensor, positions: Iterable[np.ndarray], pin: bool = False
                     ) -> Iterator[torch.Tensor]:
    """The rows of decoded ``pixels (n, s, s, 3)`` at each array of ``positions``, as uint8
    ``(b, 3, s, s)`` channels-last views of one (pinned when ``pin``) buffer each."""
    for pos in positions:
        out = torch.empty((len(pos), *pixels.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(pixels, 0, torch.from_numpy(np.asarray(pos, dtype=np.int64)), out=out)
        yield out.permute(0, 3, 1, 2)


class TrainInput:
    """The batches of ``n`` encoded training rows (``encoded(positions) -> bytes``, positions
    an int64 array) at side ``size``: decoded once and gathered when they fit in
    ``cache_mb`` MiB, else decoded per batch ``prefetch`` ahead (module docstring)."""

    CHUNK = 1024  # rows per batch when decoding everything

    def __init__(self, encoded: Callable[[np.ndarray], Encoded], n: int, size: int, *,
                 prefetch: int = 2, threads: int = 1, pin: bool = False,
                 cache_mb: float = 0) -> None:
        self.encoded, self.n, self.size = encoded, n, size
        self.prefetch, self.threads, self.pin = prefetch, threads, pin
        self.cached = n * size * size * 3 <= cache_mb * 2**20
        self._pixels: torch.Tensor | None = None

    def batches(self, positions: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """uint8 ``(b, 3, size, size)`` batches of the rows at each array of ``positions``."""
        if not self.cached:
            return decoded_batches((self.encoded(p) for p in positions), self.size,
                                   prefetch=self.prefetch, threads=self.threads, pin=self.pin)
        if self._pixels is None:
            chunks = (self.encoded(np.arange(i, min(i + self.CHUNK, self.n)))
                      for i in range(0, self.n, self.CHUNK))
            self._pixels = decode_all(chunks, self.n, self.size, self.threads)
        return gathered_batches(self._pixels, positions, self.pin)
