"""Every seed the pipeline derives from ``run.seed``, in one place.

- model initialisation: ``torch.manual_seed(seed)`` before the model is built
  (:func:`seed_model`), so every worker and both executors start from the same weights;
- the training order of epoch ``e``: a permutation drawn from ``SeedSequence([seed, SHUFFLE,
  e])`` (:func:`shuffle_rng`), the same on every worker and executor;
- the augmentations of epoch ``e`` on worker ``r``: a torch generator seeded with
  ``seed * 1_000_003 + e * 1009 + r`` (:func:`epoch_generator_seed`), distinct per worker;
- the views of example ``id`` when embedding: a torch generator seeded from
  ``SeedSequence([seed, id])`` (:func:`example_generators`), so an embedding depends neither on
  the batch the example lands in nor on how many processes share the work.
"""

from __future__ import annotations

import numpy as np
import torch

SHUFFLE = 0x5EED  # the stream tag of the training-order permutations


def seed_model(seed: int) -> None:
    """Seed torch's global generator before building a model (its initial weights)."""
    torch.manual_seed(seed)


def shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s training order (identical on every worker)."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, SHUFFLE, epoch]))


def epoch_generator_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of worker ``rank``'s augmentation generator in epoch ``epoch``."""
    return seed * 1_000_003 + epoch * 1009 + rank


def example_generators(ids: np.ndarray, seed: int) -> list[torch.Generator]:
    """One CPU generator per example, seeded from ``(seed, id)`` via numpy's SeedSequence."""
    gens = []
    for i in ids.tolist():
        state = np.random.SeedSequence([seed % 2**64, i % 2**64]).generate_state(1, np.uint64)
        gens.append(torch.Generator().manual_seed(int(state[0])))
    return gens
