"""SimCLR augmentations for batches of images, with independent randomness per image.

The recipe (Chen et al. 2020, as used by the SAS reference code), applied to each image::

    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) -> horizontal flip (p=0.5)
    -> ColorJitter(0.4, 0.4, 0.4, 0.1) in a random order (p=0.8) -> grayscale (p=0.2)
    -> Gaussian blur, kernel ~10% of the side, sigma in [0.1, 2] (p=0.5; only if ``blur``)
    -> solarize: x -> 1 - x where x >= 0.5, x in [0, 1] (p=``solarize_p``, 0 by default)
    -> float, normalise with ``mean``/``std`` (ImageNet's by default; the embed stage passes
       the encoder's own, :mod:`sas_ray.core.models.encoders`)

Every probability and range is a field, so a method can give each of its views its own
parameters (BYOL's asymmetric views: blur p=1 / 0.1, solarize p=0 / 0.2). Each colour op is
torchvision's (``transforms.v2.functional``: ``adjust_brightness``, ``adjust_contrast``,
``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``solarize``) on the same
parameters, to float rounding.

Randomness: image ``i`` has a 32-bit key (an int64 tensor ``(N,)`` on any device); its
parameters are counter-based draws from it (:func:`sas_ray.core.rng.uniform`: one column per
parameter, so a parameter never shifts another's draws), made on the images' device. A view
therefore depends only on the image and its key: not on the batch, the device's generator,
or how the batch is split (and on the device only through the crop's resampling, below). No
step needs a value on the host: per-image choices are mask blends (exact ``lerp`` selects,
identity factors) over the whole batch, never ``nonzero`` gathers, and constants live on the
device (:func:`_constant`), so on CUDA a view is queued without a sync.

The colour jitter in a random order without gathers: image ``i`` applies its brightness,
contrast and saturation blends and its hue rotation in its own order. The three blends share
one form, ``clamp(f * x + (1 - f) * other, 0, 1)`` with ``other`` 0 / the mean grey / the
grey image, so a pass applies any of them per image (``f = 1``: the identity). Three passes
apply the blends that come before the image's hue rotation, then the hue rotation runs once
for all, then three passes apply the blends after it: the hue (the costly op) runs once.

Pixel work, batched (:meth:`SimCLRAugment.apply`, what a device runs): crop+resize with
``torchvision.ops.roi_align`` (one box per image; bilinear, averaging ``ceil(box / size)``
samples per output pixel when shrinking), blur as a grouped convolution (a unit impulse
kernel where the image is not blurred). On the CPU (:meth:`SimCLRAugment.__call__`) the crop
is torchvision's ``resized_crop`` of each uint8 image (:func:`resized_crops`: torch's
antialiased uint8 bilinear kernel, 15x faster than ``roi_align`` at 224 px; the same
bilinear samples when enlarging, a triangle filter instead of the box average when
shrinking, the box's edge repeated where roi_align reads beyond it, rounded to uint8 as
torchvision's own uint8 pipeline is), and the colour passes run :data:`CPU_CHUNK_BYTES` of
images at a time, so every intermediate stays in cache. The images are grouped by the passes
they need (blurred or not, which of the six blend passes are real), and a pass no image of a
chunk needs is skipped (:meth:`Passes.needed`): skipped passes are exact identities, so a
view does not depend on its chunk. The flags are free to read on the CPU; on a device every
pass runs (no host sync).

Shapes: images are uint8 ``(N, C, H, W)`` (C = 3) on any device; views are float
``(m, N, C, size, size)``. Plain torch/torchvision: no Ray, no pyarrow.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sas_ray.core.rng import combine, uniform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)
CPU_CHUNK_BYTES = 1 << 21  # a pass's float images on the CPU: 2 MiB (3 at 224 px) stay in cache
CROP_TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # colour-jitter ops (column = index)
NO_BLEND = HUE  # a blend pass's "nothing here" (factor 1)

# one column range of uniform draws per parameter: (name, columns)
_DRAWS = (("area", CROP_TRIES), ("aspect", CROP_TRIES), ("top", 1), ("left", 1), ("flip", 1),
          ("factors", 4), ("order", 4), ("jitter", 1), ("gray", 1), ("blur", 1), ("sigma", 1),
          ("solarize", 1))
_COLUMNS = dict(zip((n for n, _ in _DRAWS), accumulate((w for _, w in _DRAWS), initial=0),
                    strict=False))  # name -> first column
DRAWS_PER_VIEW = sum(w for _, w in _DRAWS)
Keys = torch.Tensor | torch.Generator | None


def to_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (what ``decode_images`` returns) -> uint8 tensor ``(N, 3, H, W)``
    (a view: channels-last memory)."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) \
        else images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def image_keys(keys: Keys, n: int, device: torch.device) -> torch.Tensor:
    """Per-image keys, int64 ``(n,)`` on ``device``: ``keys`` itself (moved there), or ``n``
    keys drawn from a generator (``None``: torch's global one; a CPU generator's keys are
    copied to the device, a host round trip: pass device keys in a training step)."""
    if isinstance(keys, torch.Tensor):
        if keys.shape != (n,):
            raise ValueError(f"got {tuple(keys.shape)} keys for {n} images")
        return keys.to(device, non_blocking=True)
    on = keys.device if keys is not None else torch.device("cpu")
    return torch.randint(0, 1 << 32, (n,), generator=keys, device=on).to(device)


def view_keys(keys: torch.Tensor, view: int) -> torch.Tensor:
    """The keys of view number ``view`` of the images with ``keys``."""
    return combine(keys, view)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
    """A ``(1, len(values), 1, 1)`` tensor, made on ``device`` once (not copied every step)."""
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of float RGB ``(n, 3, h, w)`` -> ``(n, 1, h, w)``, as torchvision computes it."""
    r, g, b = x.unbind(1)
    w = GRAY_WEIGHTS
    return r.mul(w[0]).add_(g, alpha=w[1]).add_(b, alpha=w[2]).unsqueeze(1)


def _column(v: torch.Tensor) -> torch.Tensor:
    """Per-image values ``(n,)`` -> ``(n, 1, 1, 1)``."""
    return v.view(-1, 1, 1, 1)


def select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where ``mask`` (0/1 floats or bools, broadcastable) else ``b``:
    ``torch.lerp(b, a, mask)``, exact for finite values (torch's lerp returns ``b + 0 * d``
    for weight 0 and ``a - 0 * d`` for weight 1) and 3-4x faster than ``torch.where`` with a
    broadcast mask on the CPU."""
    return torch.lerp(b, a, mask if mask.dtype == a.dtype else mask.to(a.dtype))


def blend_weights(kind: torch.Tensor, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the grey image and of its mean in :func:`blend` for ops ``kind`` with
    factors ``factor`` (any shape): ``(1 - f) [kind == SATURATION]``, ``(1 - f) [kind ==
    CONTRAST]`` (0/1 indicators: exact)."""
    rest = 1 - factor
    return (kind == SATURATION).to(rest.dtype) * rest, (kind == CONTRAST).to(rest.dtype) * rest


def blend(x: torch.Tensor, factor: torch.Tensor, gray_weight: torch.Tensor,
          mean_weight: torch.Tensor) -> torch.Tensor:
    """One colour-jitter pass, ``clamp(f x + a grey(x) + b mean(grey(x)), 0, 1)`` per image
    with ``f, a, b = factor[i], gray_weight[i], mean_weight[i]`` (:func:`blend_weights`):
    brightness ``f x``, contrast ``f x + (1-f) mean(grey)``, saturation ``f x + (1-f) grey``
    (torchvision's ``adjust_*`` with factor f); ``f = 1, a = b = 0`` is the identity."""
    g = _gray(x)
    other = torch.addcmul(g.mean(dim=(1, 2, 3), keepdim=True).mul_(_column(mean_weight)), g,
                          _column(gray_weight))
    return torch.addcmul(other, x, _column(factor)).clamp_(0, 1)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of float RGB ``(n, 3, h, w)`` in [0, 1] by ``shift[i]`` turns.

    The value ``v = max`` and the chroma ``c = max - min`` stay; with the new hue in sixths
    ``h`` in [0, 6), the pure colour of hue ``h`` is ``clamp(|h - 3| - 1, 2 - |h - 2|,
    2 - |h - 4|)`` (R, G, B, each clamped to [0, 1]) and the pixel ``min + c * pure``: the
    HSV -> RGB formula without forming S, and without ``where``/``remainder`` over pixels."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    c = v - low
    # hue in sixths in [-1, 5): the sector of the largest channel (R first, then G), as HSV
    h = select(v == r, g - b, select(v == g, torch.add(b - r, c, alpha=2),
                                     torch.add(r - g, c, alpha=4)))
    h = h.div_(c.clamp_min(1e-30)).add_(_column(6 * shift))  # c = 0: the numerator is 0
    h = h.sub_(torch.floor(h * (1 / 6)).mul_(6))  # into [0, 6)
    pure = (h - _constant((3.0, 2.0, 4.0), x.device, x.dtype)).abs_()  # in-place: fast on CPU
    pure = pure.mul_(_constant((1.0, -1.0, -1.0), x.device, x.dtype)).add_(
        _constant((-1.0, 2.0, 2.0), x.device, x.dtype)).clamp_(0, 1)
    return pure.mul_(c).add_(low)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``(n, size)`` (``size`` odd) of widths ``sigma (n,)``.
    Weights below 1e-30 are 0: denormal floats would slow the convolution ~10x on a CPU."""
    t = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - size // 2
    pdf = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    pdf = pdf * (pdf > 1e-30)
    return pdf / pdf.sum(1, keepdim=True)


def blur_images(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable blur of ``(n, c, h, w)`` with image ``i``'s 1-D ``kernel[i]`` (reflect pad):
    one depthwise convolution per direction over the ``n * c`` planes, in channels-last
    memory (oneDNN's depthwise kernels are 3x faster in it at 224 px, the same sums)."""
    n, ch, height, width = x.shape
    k = kernel.shape[1]
    w = kernel.repeat_interleave(ch, 0)  # (n*ch, k)
    y = F.pad(x.reshape(1, n * ch, height, width), (k // 2,) * 4, mode="reflect")
    y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, w.view(-1, 1, 1, k), groups=n * ch)
    y = F.conv2d(y, w.view(-1, 1, k, 1), groups=n * ch)
    return y.contiguous().view(n, ch, height, width)


@dataclass
class ViewParams:
    """Per-image parameters of one view (every field has the images as its first axis)."""

    boxes: torch.Tensor  # (n, 4): left, top, right, bottom in input pixels
    flip: torch.Tensor  # (n,) 0/1 float mask
    kinds: torch.Tensor  # (n, 6) blend op of each pass: 3 before the hue rotation, 3 after
    factors: torch.Tensor  # (n, 6) its factor (1 for NO_BLEND)
    gray_weights: torch.Tensor  # (n, 6) blend_weights of each pass
    mean_weights: torch.Tensor  # (n, 6)
    hue_shift: torch.Tensor  # (n,) turns
    hue_on: torch.Tensor  # (n,) 0/1 float masks, like flip and gray
    gray: torch.Tensor  # (n,)
    blur: torch.Tensor | None  # (n, k) kernels (an impulse where not blurred), or off
    blurred: torch.Tensor | None  # (n,) bool: a Gaussian kernel, not an impulse
    solarize: torch.Tensor | None  # (n,) 0/1 float mask, or off

    def rows(self, rows: torch.Tensor | slice) -> ViewParams:
        """The parameters of images ``rows`` (int64 indices; a slice gives views)."""
        return ViewParams(**{f.name: None if (v := getattr(self, f.name)) is None
                             else v[rows] for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class Passes:
    """Which pixel passes :meth:`SimCLRAugment.colour` runs: all by default (what a device
    runs, reading no flag), or only those some image needs (:meth:`needed`)."""

    blends: tuple[bool, ...] = (True,) * 6
    hue: bool = True
    gray: bool = True
    blur: bool = True
    solarize: bool = True

    @classmethod
    def needed(cls, p: ViewParams) -> Passes:
        """The passes that are not the identity for some image of ``p``: it reads ``p``'s
        values (a host sync on a device: for the CPU)."""
        return cls(blends=tuple((p.kinds != NO_BLEND).any(0).tolist()),
                   hue=bool(p.hue_on.any()), gray=bool(p.gray.any()),
                   blur=p.blurred is not None and bool(p.blurred.any()),
                   solarize=p.solarize is not None and bool(p.solarize.any()))

    @staticmethod
    def patterns(p: ViewParams) -> torch.Tensor:
        """A number per image of ``p``, ``(n,)``, equal for images that need the same passes
        (bit i: blend pass i is real; bit 6: blurred)."""
        real = (p.kinds != NO_BLEND).to(torch.int64)
        bits = real @ (1 << torch.arange(6, device=real.device))
        return bits if p.blurred is None else bits + (p.blurred.to(torch.int64) << 6)


def resized_crops(images: torch.Tensor, rows: list[int], boxes: list[list[float]],
                  flips: list[float], size: int) -> torch.Tensor:
    """torchvision's ``resized_crop`` of uint8 image ``images[rows[i]]`` (of ``(N, C, H,
    W)``) to ``boxes[i]`` (left, top, right, bottom: integers) at ``size x size`` (bilinear,
    antialiased, rounded to uint8; channels-last input takes torch's vectorised uint8
    kernel), mirrored where ``flips[i]``: uint8 ``(len(rows), C, size, size)``."""
    out = torch.empty((len(rows), images.shape[1], size, size), dtype=torch.uint8)
    for i, (row, (left, top, right, bottom), flip) in enumerate(zip(rows, boxes, flips,
                                                                     strict=True)):
        crop = images[row:row + 1, :, int(top):int(bottom), int(left):int(right)]
        view = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)[0]
        out[i] = view.flip(-1) if flip else view
    return out


@dataclass
class SimCLRAugment:
    """Draws SimCLR views of uint8 image batches; see the module docstring for the recipe.

    ``blur=None`` turns the Gaussian blur on for images of 64 px and more (SimCLR's ImageNet/
    STL-10 recipe) and off for CIFAR-sized images (the reference CIFAR recipe has none).
    """

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur: bool | None = None
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def views(self, images: torch.Tensor, m: int, keys: Keys = None) -> torch.Tensor:
        """``m`` independent views of every image: uint8 ``(N,C,H,W)`` -> ``(m,N,C,size,size)``.

        View ``v`` uses ``view_keys(keys, v)`` (``keys``: see :func:`image_keys`). ``m=0``
        returns the un-augmented image, resized to ``size`` and normalised, as
        ``(1, N, C, size, size)``.
        """
        if m < 0:
            raise ValueError(f"number of views must be >= 0, got {m}")
        if m == 0:
            return self.plain(images).unsqueeze(0)
        n, c = images.shape[:2]
        keys = image_keys(keys, n, images.device)
        out = torch.empty((m, n, c, self.size, self.size), device=images.device)
        for v in range(m):
            self(images, view_keys(keys, v), out=out[v])
        return out

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """The un-augmented images, resized to ``size`` and normalised: ``(N, C, size, size)``."""
        x = images.float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True).clamp_(0, 1)
        return self._normalise(x)

    def __call__(self, images: torch.Tensor, keys: Keys = None, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """One view per image: uint8 ``(N, C, H, W)`` -> float ``(N, C, size, size)``, image
        ``i``'s parameters drawn from ``keys[i]`` (see :func:`image_keys`); written into
        ``out`` when given."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        n, c = images.shape[:2]
        params = self.params(image_keys(keys, n, images.device), images.shape[-2:])
        if images.device.type != "cpu":
            view = self.apply(images, params)
            return view if out is None else out.copy_(view)
        if out is None:
            out = torch.empty((n, c, self.size, self.size))
        # CPU (module docstring): chunks of images that need the same passes
        chunk = max(1, CPU_CHUNK_BYTES // (4 * c * self.size ** 2))
        order = torch.argsort(Passes.patterns(params), stable=True)
        grouped, order_list = params.rows(order), order.tolist()  # chunks are then slices
        for start in range(0, n, chunk):
            part, rows = grouped.rows(slice(start, start + chunk)), order_list[start:start + chunk]
            crops = resized_crops(images, rows, part.boxes.tolist(), part.flip.tolist(),
                                  self.size)
            x = crops.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
            for row, view in zip(rows, self.colour(x, part, Passes.needed(part)), strict=True):
                out[row] = view
        return out

    # ------------------------------------------------------------ parameters (tiny tensors)
    def params(self, keys: torch.Tensor, hw: tuple[int, int]) -> ViewParams:
        """The parameters of one view of images of size ``hw`` with ``keys (n,)``."""
        u = uniform(keys, DRAWS_PER_VIEW)

        def draw(name: str, columns: int = 1) -> torch.Tensor:
            start = _COLUMNS[name]
            return u[:, start] if columns == 1 else u[:, start:start + columns]

        kinds, factors, shift, hue_on = self._jitter(draw("factors", 4), draw("order", 4),
                                                     draw("jitter") < self.jitter_p)
        blur_on = self.blur if self.blur is not None else self.size >= 64
        kernel = blurred = None
        if blur_on:
            k = max(3, int(0.1 * self.size) // 2 * 2 + 1)  # odd, ~10% of the side
            lo, hi = self.blur_sigma
            blurred = draw("blur") < self.blur_p
            sigma = torch.where(blurred, lo + (hi - lo) * draw("sigma"),
                                torch.full_like(draw("sigma"), 1e-3))  # 1e-3: an impulse
            kernel = gaussian_kernels(sigma, k)
        def mask(name: str, p: float) -> torch.Tensor:
            return (draw(name) < p).to(u.dtype)

        gray_weights, mean_weights = blend_weights(kinds, factors)
        return ViewParams(
            boxes=self._boxes(draw("area", CROP_TRIES), draw("aspect", CROP_TRIES),
                              draw("top"), draw("left"), hw),
            flip=mask("flip", self.flip_p), kinds=kinds, factors=factors,
            gray_weights=gray_weights, mean_weights=mean_weights, hue_shift=shift,
            hue_on=hue_on.to(u.dtype), gray=mask("gray", self.gray_p), blur=kernel,
            blurred=blurred,
            solarize=mask("solarize", self.solarize_p) if self.solarize_p > 0 else None)

    def _boxes(self, area_u: torch.Tensor, aspect_u: torch.Tensor, top_u: torch.Tensor,
               left_u: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Per-image RandomResizedCrop boxes (torchvision's sampling: 10 tries, then a centre
        crop): ``(n, 4)`` left, top, right, bottom."""
        height, width = hw
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * area_u)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * aspect_u)
        w = torch.sqrt(area * aspect).round()
        h = torch.sqrt(area / aspect).round()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.float().argmax(1, keepdim=True)  # first valid try per image
        w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
        # fallback: the whole image, clipped to the allowed aspect ratios, centred
        in_ratio = width / height
        fw = float(width) if in_ratio <= self.ratio[1] else round(height * self.ratio[1])
        fh = float(height) if in_ratio >= self.ratio[0] else round(width / self.ratio[0])
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        top = torch.where(found, torch.floor(top_u * (height - h + 1)), (height - h) // 2)
        left = torch.where(found, torch.floor(left_u * (width - w + 1)), (width - w) // 2)
        return torch.stack([left, top, left + w, top + h], 1)

    def _jitter(self, factor_u: torch.Tensor, order_u: torch.Tensor, on: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ColorJitter's per-image factors and random order as 6 blend passes around one hue
        rotation: ``kinds (n, 6)``, ``factors (n, 6)``, hue ``shift (n,)``, ``hue_on (n,)``."""
        b, c, s, h = self.jitter
        factors = torch.stack([1 - b + 2 * b * factor_u[:, 0], 1 - c + 2 * c * factor_u[:, 1],
                               1 - s + 2 * s * factor_u[:, 2], torch.ones_like(factor_u[:, 3])],
                              1)
        order = order_u.argsort(1)  # order[:, p]: the op at position p (a random permutation)
        hue_at = (order == HUE).float().argmax(1, keepdim=True)  # position of the hue op
        position = torch.arange(4, device=on.device).view(1, 4)
        before = torch.where(on.view(-1, 1) & (position < hue_at), order, NO_BLEND)[:, :3]
        after = torch.where(on.view(-1, 1) & (position > hue_at), order, NO_BLEND)[:, 1:]
        kinds = torch.cat([before, after], 1)
        return kinds, factors.gather(1, kinds), -h + 2 * h * factor_u[:, 3], on

    # ------------------------------------------------------------ pixels
    def apply(self, images: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """The view of uint8 ``images (n, C, H, W)`` with parameters ``p`` (of these n),
        batched: what a device runs (module docstring)."""
        index = torch.arange(images.shape[0], device=images.device, dtype=p.boxes.dtype)
        boxes = torch.cat([index.view(-1, 1), p.boxes], 1)  # roi_align's (n, 5) boxes
        x = roi_align(images.float(), boxes, output_size=(self.size, self.size),
                      spatial_scale=1.0, sampling_ratio=-1, aligned=True).div_(255)
        return self.colour(select(_column(p.flip), x.flip(-1), x), p)

    def colour(self, x: torch.Tensor, p: ViewParams, passes: Passes = Passes()) -> torch.Tensor:
        """Colour jitter, grayscale, blur, solarize and normalisation of the cropped float
        images ``x (n, C, size, size)`` in [0, 1], running ``passes``."""
        for i in range(6):
            if i == 3 and passes.hue:  # after the blends that come before it
                x = select(_column(p.hue_on), hue(x, p.hue_shift), x)
            if passes.blends[i]:
                x = blend(x, p.factors[:, i], p.gray_weights[:, i], p.mean_weights[:, i])
        if passes.gray:
            x = select(_column(p.gray), _gray(x).expand_as(x), x)
        if p.blur is not None and passes.blur:
            x = blur_images(x, p.blur)
        if p.solarize is not None and passes.solarize:
            x = select((x >= self.solarize_threshold).to(x.dtype).mul_(_column(p.solarize)),
                       1 - x, x)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel."""
        mean = _constant(tuple(self.mean), x.device, x.dtype)
        std = _constant(tuple(self.std), x.device, x.dtype)
        return (x - mean).div_(std)
