"""Counter-based random numbers written in torch ops: draws on any device, no generator state.

A *key* is a 32-bit value (held in an int64 tensor, or a Python int); ``uniform(keys, k)``
hashes every ``(key, counter)`` pair for counters ``0..k-1`` into a float in ``[0, 1)``. So a
draw is a pure function of its key and counter, like Philox's counter mode (Salmon et al.
2011), but computed with integer ops that give the same bits on the CPU and on CUDA, for
one image or a batch at once, without a host round trip or a per-image generator.

The hash is a two-round xor-shift-multiply of Wellons' hash prospector (constants
``0x21f0aaad``, ``0x735a2d97``: low bias), applied twice per draw. Both multipliers are below
2^31, so every product of a 32-bit value fits in int64 (no overflow: torch tensors and Python
ints give identical results), and :func:`mix` accepts Python ints and int64 tensors alike:
scalar keys (a seed, an epoch) are mixed on the host, per-image keys on the device.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import torch

MASK = 0xFFFFFFFF
IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor)


def mix(x: IntOrTensor) -> IntOrTensor:
    """A 32-bit hash of 32-bit values (an int or an int64 tensor in ``[0, 2^32)``)."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK  # multipliers < 2^31: products < 2^63, no int64 overflow
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK
    return x ^ (x >> 15)


def combine(key: IntOrTensor, value: int | torch.Tensor) -> IntOrTensor:
    """A new key from ``key`` and ``value`` (a non-negative integer below 2^64, or an int64
    tensor of them), e.g. ``combine(combine(mix(seed), epoch), step)``."""
    key = mix(key ^ mix((value & MASK) ^ 0x9E3779B9))
    if isinstance(value, int) and value <= MASK:
        return key
    return mix(key ^ mix(((value >> 32) & MASK) ^ 0x7F4A7C15))


@functools.lru_cache(maxsize=16)
def _counters(k: int, device: torch.device) -> torch.Tensor:
    """The hashed counters ``0..k-1`` (1, k), made on ``device`` once."""
    return mix(torch.arange(1, k + 1, dtype=torch.int64) * 0x9E3779B9 & MASK).view(1, k) \
        .to(device)


def uniform(keys: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` independent uniform draws in ``[0, 1)`` per key: int64 ``(n,)`` -> float32
    ``(n, k)`` on the keys' device (24-bit resolution, exact in float32)."""
    h = mix(mix(keys.view(-1, 1) ^ _counters(k, keys.device)) ^ 0x85EBCA6B)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
