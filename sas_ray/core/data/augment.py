"""SimCLR augmentations for batches of small images, with independent randomness per image.

The recipe (Chen et al. 2020, as used by the SAS reference code), applied to each image::

    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) -> horizontal flip (p=0.5)
    -> ColorJitter(0.4, 0.4, 0.4, 0.1) in a random order (p=0.8) -> grayscale (p=0.2)
    -> Gaussian blur, kernel ~10% of the side, sigma in [0.1, 2] (p=0.5; only if ``blur``)
    -> solarize: x -> 1 - x where x >= 0.5, x in [0, 1] (p=``solarize_p``, 0 by default)
    -> float, normalise with the ImageNet mean/std

Every probability and range is a field, so a method can give each of its views its own
parameters (BYOL's asymmetric views: blur p=1 / 0.1, solarize p=0 / 0.2).

``torchvision.transforms.v2`` draws one set of parameters per call, so applied to a batched
tensor every image would get the same crop and colours. Here the parameters are drawn per
image as tensors and applied in one vectorised pass: crop+resize with
``torchvision.ops.roi_align`` (one box per image; bilinear, averaging several samples per
output pixel when shrinking), colour ops as per-image blends, blur as a grouped convolution.

Shapes: images are uint8 ``(N, C, H, W)`` (C = 3) on any device; views are float
``(m, N, C, size, size)``. Plain torch/torchvision: no Ray, no pyarrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def to_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (what ``decode_images`` returns) -> uint8 tensor ``(N, 3, H, W)``."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) \
        else images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of float RGB ``(n, 3, h, w)`` -> ``(n, 1, h, w)``."""
    w = x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1]; ``factor`` is ``(n,)``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (``(n,)``, in turns) through HSV space."""
    r, g, b = x.unbind(1)
    v, argmax = x.max(1)
    c = v - x.min(1).values
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.stack([((g - b) / safe_c) % 6, (b - r) / safe_c + 2, (r - g) / safe_c + 4], 1)
    h = torch.where(c > 0, h.gather(1, argmax.unsqueeze(1)).squeeze(1), torch.zeros_like(c))
    h = (h / 6 + shift.view(-1, 1, 1)) % 1.0
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    n = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (n + 6 * h.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return (v.unsqueeze(1) * (1 - s.unsqueeze(1) * ramp)).clamp_(0, 1)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)
Generators = torch.Generator | list[torch.Generator] | None


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

    def views(self, images: torch.Tensor, m: int, generator: Generators = None) -> torch.Tensor:
        """``m`` independent views of every image: uint8 ``(N,C,H,W)`` -> ``(m,N,C,size,size)``.

        ``m=0`` returns the un-augmented image, resized to ``size`` and normalised, as
        ``(1, N, C, size, size)``. ``generator``: see :meth:`__call__`.
        """
        if m < 0:
            raise ValueError(f"number of views must be >= 0, got {m}")
        if m == 0:
            return self.plain(images).unsqueeze(0)
        return torch.stack([self(images, generator) for _ in range(m)])

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """The un-augmented images, resized to ``size`` and normalised: ``(N, C, size, size)``."""
        x = images.float().div_(255)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True).clamp_(0, 1)
        return self._normalise(x)

    def __call__(self, images: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """One view per image: uint8 ``(N, C, H, W)`` -> float ``(N, C, size, size)``.

        Random parameters are drawn on the CPU from ``generator`` (one for the batch), or
        from ``generator[i]`` for image ``i`` (a list of N: each image's views then do not
        depend on the rest of the batch), or from torch's global generator (None).
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        n, dev = images.shape[0], images.device
        if isinstance(generator, list | tuple) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images")

        def rand(*shape: int) -> torch.Tensor:  # shape[0] == n: one row per image
            if isinstance(generator, list | tuple):
                return torch.stack([torch.rand(shape[1:], generator=g)
                                    for g in generator]).to(dev)
            return torch.rand(*shape, generator=generator).to(dev)

        x = self._crop(images.float().div_(255), rand)
        flip = rand(n) < self.flip_p
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = self._color_jitter(x, rand)
        gray = rand(n) < self.gray_p
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        if self.blur if self.blur is not None else self.size >= 64:
            x = self._blur(x, rand)
        if self.solarize_p > 0:  # no draw otherwise: the SimCLR views stay as they were
            solarize = (rand(n) < self.solarize_p).view(-1, 1, 1, 1)
            x = torch.where(solarize & (x >= self.solarize_threshold), 1 - x, x)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def _crop(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Per-image RandomResizedCrop (torchvision's sampling: 10 tries, then a centre crop)."""
        n, _, height, width = x.shape
        tries = 10
        area = height * width * (self.scale[0] + (self.scale[1] - self.scale[0]) * rand(n, tries))
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * rand(n, tries))
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
        top = torch.where(found, torch.floor(rand(n) * (height - h + 1)), (height - h) // 2)
        left = torch.where(found, torch.floor(rand(n) * (width - w + 1)), (width - w) // 2)
        boxes = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype),
                             left, top, left + w, top + h], 1)
        out = roi_align(x, boxes, output_size=(self.size, self.size), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        return out.clamp_(0, 1)

    def _color_jitter(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Brightness, contrast, saturation, hue with per-image factors and a per-image order."""
        n = x.shape[0]
        b, c, s, hue = self.jitter
        factors = torch.stack([1 - b + 2 * b * rand(n), 1 - c + 2 * c * rand(n),
                               1 - s + 2 * s * rand(n), -hue + 2 * hue * rand(n)], 1)
        order = rand(n, len(_JITTER_OPS)).argsort(1)  # a random permutation of the ops per image
        apply = rand(n) < self.jitter_p
        x = x.clone()
        for pos in range(len(_JITTER_OPS)):
            for op_index, op in enumerate(_JITTER_OPS):
                idx = torch.nonzero(apply & (order[:, pos] == op_index)).squeeze(1)
                if idx.numel():
                    x[idx] = op(x[idx], factors[idx, op_index])
        return x

    def _blur(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Gaussian blur with a per-image sigma, as separable grouped convolutions."""
        n, ch, height, width = x.shape
        idx = torch.nonzero(rand(n) < self.blur_p).squeeze(1)
        lo, hi = self.blur_sigma
        sigma = (lo + (hi - lo) * rand(n))[idx]
        if not idx.numel():
            return x
        k = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)  # odd, ~10% of the side
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kernel = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (m*ch, k)
        y = x[idx].reshape(1, -1, height, width)
        y = F.pad(y, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
        y = F.conv2d(y, kernel.view(-1, 1, 1, k), groups=y.shape[1])
        y = F.conv2d(y, kernel.view(-1, 1, k, 1), groups=y.shape[1])
        x = x.clone()
        x[idx] = y.view(-1, ch, height, width)
        return x
