"""The built-in synthetic source (``synthetic``): a small *uncurated* pool with known classes.

What a web-scraped image pool looks like, at 32 px and in a second: objects of ``K`` shape
classes (:data:`SHAPES`) photographed in every pose, size, colour and texture against a
cluttered background, classes of very different sizes, images that appear many times, and
images that belong to no class at all. Every train image is tagged with its *kind*
(:data:`KINDS`):

``clean``
    one object of its class. A class has a shape, a typical hue (``k / K``) and a texture
    (solid, stripes, checks or dots: ``k mod 4``), as real object classes have typical
    shapes, colours and textures; each image draws the pose (rotation in [0, 2 pi)), scale
    (radius 30-45 % of the side), position, the hue's jitter (N(0, 0.03)), saturation and
    brightness, the texture's frequency, and the background (a two-colour gradient with 2-5
    clutter marks: dots, bars, rings, some on top of the object).
``duplicate``
    a near-copy of a clean train image (as a re-upload or re-encode is): the same pixels,
    brightness x U(0.95, 1.05), N(0, 0.02) noise. Copies come in clusters of 2-6 around an
    original.
``blank``, ``noise``, ``off-class`` (together: junk)
    a flat colour; uniform or blurred noise; an object of a shape no class has
    (:data:`OFF_CLASS`), in any colour and texture. Junk carries a class label drawn like
    a clean image's (as a scraped image carries the query it was found under), so it is
    label noise too.

Sizes: the train pool holds ``K * synthetic_train_per_class`` images, of which shares
``synthetic_duplicates`` and ``synthetic_junk`` are duplicates and junk (split evenly over
the three junk kinds); the clean images follow a geometric long tail whose largest class is
``synthetic_imbalance`` times the smallest. The test split is curated: ``synthetic_test_per
_class`` clean images of every class. Train images are in a seeded random order (kinds and
classes interleaved), test images class by class in turn. Deterministic in ``(seed,
data settings)``; train and test are drawn from the same distribution with separate streams.

Pixels are rendered at twice the side and averaged 2 x 2 (anti-aliased edges). Plain numpy.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sas_ray.config import DataConfig
from sas_ray.core.data.files import Files
from sas_ray.core.data.sources import Item, Source, register_source
from sas_ray.errors import SasRayError

Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (u, v, r) -> bool mask


def _star(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return r < 0.55 + 0.4 * np.cos(5 * np.arctan2(v, u))


# shape -> mask in object coordinates (u, v; radius r = |(u, v)|; the object fills r <= 1)
SHAPES: dict[str, Mask] = {
    "disk": lambda u, v, r: r < 0.9,
    "square": lambda u, v, r: np.maximum(np.abs(u), np.abs(v)) < 0.7,
    "triangle": lambda u, v, r: (v > -0.5) & (v < 0.95 - 1.75 * np.abs(u)),
    "cross": lambda u, v, r: ((np.abs(u) < 0.28) | (np.abs(v) < 0.28)) & (r < 0.95),
    "ring": lambda u, v, r: (r > 0.55) & (r < 0.95),
    "bar": lambda u, v, r: (np.abs(u) < 0.95) & (np.abs(v) < 0.3),
    "crescent": lambda u, v, r: (r < 0.9) & (np.hypot(u - 0.45, v) > 0.7),
    "star": _star,
}
OFF_CLASS: dict[str, Mask] = {  # shapes no class has (off-class junk)
    "hourglass": lambda u, v, r: (np.abs(v) > 1.2 * np.abs(u)) & (np.abs(v) < 0.9),
    "arrow": lambda u, v, r: ((np.abs(v) < 0.15) & (u > -0.9) & (u < 0.2))
    | ((u >= 0.2) & (u < 0.9) & (np.abs(v) < 0.9 - u)),
}
KINDS = ("clean", "duplicate", "blank", "noise", "off-class")
JUNK = ("blank", "noise", "off-class")
CLUSTER = (2, 6)  # copies per near-duplicate cluster
HUE_JITTER = 0.03  # std of an object's hue around its class's (hue in [0, 1))
PATTERNS = 4  # textures: solid, stripes, checks, dots


@dataclass(frozen=True)
class Split:
    """One split of the synthetic pool: uint8 ``pixels (n, size, size, 3)``, ``labels (n,)``
    and ``kinds (n,)`` (indices into :data:`KINDS`)."""

    pixels: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hues, saturations, values in [0, 1] ``(n,)`` -> RGB ``(n, 3)`` in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - (v * s)[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
            ) -> np.ndarray:
    return _hsv(rng.uniform(0, 1, 1), rng.uniform(*sat, 1), rng.uniform(*val, 1))[0]


class _Canvas:
    """Pixel coordinates of a ``2 size`` square canvas, in units of the side (0..1)."""

    def __init__(self, size: int) -> None:
        self.side = 2 * size
        self.y, self.x = (np.mgrid[0:self.side, 0:self.side] + 0.5) / self.side

    def frame(self, img: np.ndarray) -> np.ndarray:
        """The canvas averaged 2 x 2 -> ``(size, size, 3)``."""
        s = self.side // 2
        return img.reshape(s, 2, s, 2, 3).mean(axis=(1, 3))

    def background(self, rng: np.random.Generator) -> np.ndarray:
        a, b = (_colour(rng, (0.0, 0.5), (0.25, 0.95)) for _ in range(2))
        t = rng.uniform(0, 2 * np.pi)
        ramp = (self.x - 0.5) * np.cos(t) + (self.y - 0.5) * np.sin(t) + 0.5
        return a + np.clip(ramp, 0, 1)[..., None] * (b - a)

    def clutter(self, img: np.ndarray, rng: np.random.Generator, count: int) -> None:
        """Paint ``count`` small marks (dot, bar or ring) of random colours on ``img``."""
        for _ in range(count):
            cx, cy = rng.uniform(0, 1, 2)
            dx, dy = self.x - cx, self.y - cy
            r = np.hypot(dx, dy)
            size = rng.uniform(0.04, 0.1)
            mark = rng.integers(3)
            if mark == 0:
                mask = r < size
            elif mark == 1:
                t = rng.uniform(0, np.pi)
                along, across = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
                mask = (np.abs(along) < 2.5 * size) & (np.abs(across) < 0.02)
            else:
                mask = np.abs(r - size) < 0.02
            img[mask] = _colour(rng, (0.2, 1.0), (0.2, 1.0))

    def texture(self, rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
                pattern: int) -> np.ndarray:
        """A brightness pattern in [0, 1] over object coordinates: solid, stripes, checks or
        dots (``pattern`` 0-3) at a random frequency."""
        f = rng.uniform(2.0, 4.0)
        if pattern == 0:
            return np.ones_like(u)
        if pattern == 1:
            return (np.sin(np.pi * f * u) > 0).astype(float)
        if pattern == 2:
            return ((np.sin(np.pi * f * u) > 0) ^ (np.sin(np.pi * f * v) > 0)).astype(float)
        return (np.hypot((u * f) % 2 - 1, (v * f) % 2 - 1) > 0.5).astype(float)

    def scene(self, rng: np.random.Generator, mask_of: Mask, hue: float | None = None,
              pattern: int | None = None) -> np.ndarray:
        """One object of shape ``mask_of`` in a random pose, scale and position on a cluttered
        background, some clutter on top; float ``(size, size, 3)``. Its colour has hue
        ``hue`` + N(0, :data:`HUE_JITTER`) (any hue when None) at a random saturation and
        brightness, its texture is ``pattern`` (random when None) at a random frequency."""
        img = self.background(rng)
        self.clutter(img, rng, int(rng.integers(1, 4)))
        radius = rng.uniform(0.3, 0.45)
        cx, cy = rng.uniform(radius * 0.8, 1 - radius * 0.8, 2)
        t = rng.uniform(0, 2 * np.pi)
        dx, dy = (self.x - cx) / radius, (self.y - cy) / radius
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        mask = mask_of(u, v, np.hypot(u, v))
        fill, other = _colour(rng, (0.5, 1.0), (0.55, 1.0)), _colour(rng, (0.0, 1.0), (0.1, 0.6))
        if hue is not None:
            h = np.array([(hue + rng.normal(0.0, HUE_JITTER)) % 1.0])
            fill = _hsv(h, rng.uniform(0.5, 1.0, 1), rng.uniform(0.55, 1.0, 1))[0]
        if pattern is None:
            pattern = int(rng.integers(PATTERNS))
        shade = self.texture(rng, u, v, pattern)[..., None]
        img[mask] = (other + shade * (fill - other))[mask]
        self.clutter(img, rng, int(rng.integers(1, 3)))
        img = self.frame(img) * rng.uniform(0.85, 1.15)
        return img + rng.normal(0.0, 0.03, img.shape)


def _junk(canvas: _Canvas, rng: np.random.Generator, kind: str) -> np.ndarray:
    s = canvas.side // 2
    if kind == "blank":
        return np.broadcast_to(_colour(rng, (0, 1), (0, 1)), (s, s, 3)) + rng.normal(
            0.0, 0.01, (s, s, 3))
    if kind == "noise":
        x = rng.uniform(0, 1, (s, s, 3))
        if rng.uniform() < 0.5:  # blurred: blobs instead of grain
            for axis in (0, 1):
                x = (np.roll(x, 1, axis) + x + np.roll(x, -1, axis)) / 3
            x = (x - x.mean()) * 3 + 0.5
        return x
    return canvas.scene(rng, list(OFF_CLASS.values())[int(rng.integers(len(OFF_CLASS)))])


def _duplicate(original: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return original * rng.uniform(0.95, 1.05) + rng.normal(0.0, 0.02, original.shape)


def class_sizes(total: int, num_classes: int, imbalance: float) -> np.ndarray:
    """``total`` split over classes as a geometric long tail: class ``k`` ~ ``imbalance **
    (-k / (K - 1))`` (largest first, largest / smallest ~ ``imbalance``), each >= 1, rounded
    by largest remainders so the sizes sum to ``total``."""
    if total < num_classes:
        raise SasRayError(f"a synthetic pool of {total} clean images cannot hold "
                          f"{num_classes} classes; raise --data.synthetic_train_per_class")
    w = imbalance ** (-np.arange(num_classes) / max(1, num_classes - 1))
    share = 1 + (total - num_classes) * w / w.sum()
    sizes = np.floor(share).astype(np.int64)
    sizes[np.argsort(sizes - share)[: total - sizes.sum()]] += 1
    return sizes


def synthetic_split(data: DataConfig, seed: int, split: str) -> Split:
    """The ``split`` ("train": the uncurated pool, "test": curated) of the synthetic data set;
    see the module docstring."""
    k, size = data.synthetic_classes, data.synthetic_size
    if not 1 <= k <= len(SHAPES) or size < 8:
        raise SasRayError(f"synthetic data has 1..{len(SHAPES)} classes ({', '.join(SHAPES)}) "
                          f"of at least 8 px (got {k} classes of {size} px); fix "
                          "--data.synthetic_classes / --data.synthetic_size")
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    canvas = _Canvas(size)
    masks = list(SHAPES.values())[:k]
    if split != "train":
        labels = np.arange(k * data.synthetic_test_per_class) % k
        pixels = [canvas.scene(rng, masks[y], y / k, y % PATTERNS) for y in labels]
        return _finish(pixels, labels, np.zeros(labels.size, np.int64))
    total = k * data.synthetic_train_per_class
    n_junk = round(data.synthetic_junk * total)
    n_dup = round(data.synthetic_duplicates * total)
    sizes = class_sizes(total - n_junk - n_dup, k, data.synthetic_imbalance)
    labels = np.repeat(np.arange(k), sizes)
    pixels = [canvas.scene(rng, masks[y], y / k, y % PATTERNS) for y in labels]
    kinds = [0] * len(pixels)
    labels = labels.tolist()
    while n_dup > 0:  # clusters of copies around originals drawn uniformly from the clean ones
        original = int(rng.integers(sizes.sum()))
        copies = min(n_dup, int(rng.integers(CLUSTER[0], CLUSTER[1] + 1)))
        pixels += [_duplicate(pixels[original], rng) for _ in range(copies)]
        labels += [labels[original]] * copies
        kinds += [KINDS.index("duplicate")] * copies
        n_dup -= copies
    for i in range(n_junk):
        kind = JUNK[i % len(JUNK)]
        pixels.append(_junk(canvas, rng, kind))
        labels.append(int(rng.choice(k, p=sizes / sizes.sum())))
        kinds.append(KINDS.index(kind))
    order = rng.permutation(len(pixels))
    return _finish([pixels[i] for i in order], np.asarray(labels)[order],
                   np.asarray(kinds, np.int64)[order])


def _finish(pixels: list[np.ndarray], labels: np.ndarray, kinds: np.ndarray) -> Split:
    stacked = (np.clip(np.stack(pixels), 0.0, 1.0) * 255).round().astype(np.uint8)
    return Split(stacked, labels.astype(np.int64), kinds)


@register_source("synthetic")
def synthetic_source(arg: str, data: DataConfig, seed: int, files: Files) -> Source:
    """The built-in synthetic data set (see the module docstring); ``Source.kinds`` lists the
    ids of every kind."""
    class_names = list(SHAPES)[:data.synthetic_classes]
    items: list[Item] = []
    kinds: dict[str, list[int]] = {}
    for split in ("train", "test"):
        part = synthetic_split(data, seed, split)
        for i, (y, kind) in enumerate(zip(part.labels.tolist(), part.kinds.tolist(),
                                          strict=True)):
            kinds.setdefault(KINDS[kind], []).append(len(items))
            items.append(Item(f"{split}/{class_names[y]}/{i:06d}", split, y, part.pixels[i]))
    size = data.synthetic_size
    return Source("synthetic", "pixels", class_names, items, pixel_shape=(size, size, 3),
                  kinds=kinds)
