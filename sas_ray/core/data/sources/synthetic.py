"""The built-in synthetic source: images with known latent classes (``synthetic``)."""

from __future__ import annotations

import zlib

import numpy as np

from sas_ray.config import DataConfig
from sas_ray.core.data.files import Files
from sas_ray.core.data.sources import Item, Source, register_source
from sas_ray.errors import SasRayError


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """``(n,)`` hues in [0, 1) at one saturation/value -> ``(n, 3)`` RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def synthetic_images(num_classes: int, per_class: int, size: int, seed: int,
                     split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images with known latent classes: ``(n, size, size, 3)`` uint8 and ``(n,)`` labels.

    Class ``k`` of ``K`` is a prototype: a grating of hue ``k/K``, orientation ``pi*k/K`` and
    2 or 4 cycles per image. Each image shifts the grating by a random phase, scales its
    brightness by U(0.8, 1.2), pastes a random grey square (a class-independent distractor)
    at a random place and adds N(0, 0.06) noise. Classes are interleaved (label = index mod
    K). Deterministic in ``(seed, split)``; train and test share the prototypes.
    """
    if num_classes < 1 or per_class < 1 or size < 4:
        raise SasRayError(f"synthetic data needs classes >= 1, images per class >= 1 and size "
                          f">= 4 (got {num_classes}, {per_class}, {size}); fix --data.synthetic_*")
    n = num_classes * per_class
    labels = np.arange(n) % num_classes
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    yy, xx = np.mgrid[0:size, 0:size] / size
    theta = np.pi * labels / num_classes
    cycles = 2.0 + 2.0 * (labels % 2)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    wave = (xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None])
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles[:, None, None] * wave + phase[:, None, None])
    colour = _hsv_to_rgb(labels / num_classes, 0.75, 0.9)
    img = colour[:, None, None, :] * (0.35 + 0.65 * grating[..., None])
    img *= rng.uniform(0.8, 1.2, (n, 1, 1, 1))
    side = max(2, size // 4)
    corner = rng.integers(0, size - side + 1, (n, 2))
    grey = rng.uniform(0.0, 1.0, n)
    for i in range(n):
        y, x = corner[i]
        img[i, y:y + side, x:x + side, :] = grey[i]
    img += rng.normal(0.0, 0.06, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8), labels


@register_source("synthetic")
def synthetic_source(arg: str, data: DataConfig, seed: int, files: Files) -> Source:
    """The built-in synthetic data set (see :func:`synthetic_images`)."""
    k = data.synthetic_classes
    class_names = [f"class{c}" for c in range(k)]
    items = []
    for split, per_class in (("train", data.synthetic_train_per_class),
                             ("test", data.synthetic_test_per_class)):
        if per_class == 0:
            continue
        pixels, labels = synthetic_images(k, per_class, data.synthetic_size, seed, split)
        items += [Item(f"{split}/{class_names[y]}/{i:06d}", split, int(y), pixels[i])
                  for i, y in enumerate(labels)]
    size = data.synthetic_size
    return Source("synthetic", "pixels", class_names, items, pixel_shape=(size, size, 3))
