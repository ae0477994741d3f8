"""Every seed the pipeline derives from ``run.seed``, in one place.

- model initialisation: ``torch.manual_seed(seed)`` before the model is built
  (:func:`seed_model`), so every worker and both executors start from the same weights;
- the training order of epoch ``e``: a permutation drawn from ``SeedSequence([seed, SHUFFLE,
  e])`` (:func:`shuffle_rng`), the same on every worker and executor;
- the augmentations of training step ``s`` of epoch ``e``: per-image keys (counter-based
  draws, :mod:`sas_ray.core.rng`) of ``(seed, e, s, position in the global batch)``
  (:func:`step_keys`), made on the device: a worker's images get the keys they would have in
  one process training the global batch, whatever the number of workers;
- the views of example ``id`` when embedding: keys of ``(seed, id)`` (:func:`example_keys`),
  so an embedding depends neither on the batch the example lands in nor on how many
  processes share the work.
"""

from __future__ import annotations

import numpy as np
import torch

from sas_ray.core.rng import MASK, combine, mix

SHUFFLE = 0x5EED  # the stream tag of the training-order permutations


def seed_model(seed: int) -> None:
    """Seed torch's global generator before building a model (its initial weights)."""
    torch.manual_seed(seed)


def shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s training order (identical on every worker)."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, SHUFFLE, epoch]))


STEP, EXAMPLE = 0x57E9, 0xE8A3  # the stream tags of training views and embedding views


def _seed_key(seed: int, tag: int) -> int:
    return combine(mix(tag), seed % 2**64)


def step_keys(seed: int, epoch: int, step: int, start: int, n: int,
              device: torch.device) -> torch.Tensor:
    """Keys (int64 ``(n,)`` on ``device``) of the images at positions ``start..start+n-1`` of
    global batch ``step`` in epoch ``epoch`` (no host-to-device copy)."""
    base = combine(combine(_seed_key(seed, STEP), epoch), step)
    return mix(torch.arange(start, start + n, device=device, dtype=torch.int64) ^ base)


def example_keys(ids: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
    """Keys (int64 ``(n,)``, on the ids' device) of examples ``ids`` (non-negative)."""
    ids = ids if isinstance(ids, torch.Tensor) else torch.from_numpy(np.array(ids, np.int64))
    return combine(torch.full_like(ids, _seed_key(seed, EXAMPLE) & MASK), ids)
