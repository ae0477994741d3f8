"""The training order: a global shuffle of the training rows every epoch.

The ``n`` training rows (the train split, or a subset of it, in id order) are permuted
afresh every epoch by :func:`~sas_ray.core.seeding.shuffle_rng` ``(seed, epoch)``, the same
permutation on every worker. Global batch ``s`` is positions ``perm[s*B:(s+1)*B]`` with
``B = world * (batch_size // world)``; worker ``r`` of ``world`` takes its ``r``-th equal slice
of it. So every worker reads disjoint rows, the workers together train on exactly the global
batch that one worker would, and an epoch visits every row at most once (the last partial
batch is dropped). Rows sorted by class (as CIFAR-10's ids are) are mixed across the whole
epoch, unlike a local shuffle buffer over a sorted stream, which keeps a batch mostly one class.
"""

from __future__ import annotations

import numpy as np

from sas_ray.core.seeding import shuffle_rng


def per_worker_batch(batch_size: int, world: int) -> int:
    """Images per worker and step for a global ``batch_size`` over ``world`` workers."""
    return batch_size // world


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Full global batches in an epoch over ``n`` rows."""
    per = per_worker_batch(batch_size, world)
    return n // (per * world) if per else 0


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> list[np.ndarray]:
    """Worker ``rank``'s batches of epoch ``epoch``: int64 positions into the ``n`` rows, one
    array of ``batch_size // world`` per step (module docstring)."""
    per = per_worker_batch(batch_size, world)
    perm = shuffle_rng(seed, epoch).permutation(n)
    steps = steps_per_epoch(n, batch_size, world)
    return [perm[(s * world + rank) * per:(s * world + rank + 1) * per] for s in range(steps)]
