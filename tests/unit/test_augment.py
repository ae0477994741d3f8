"""SimCLR views: shapes, independent randomness per image, the un-augmented m=0 view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_ray.core.data.augment import IMAGENET_MEAN, IMAGENET_STD, SimCLRAugment, to_nchw


def images(n: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_view_shapes() -> None:
    aug = SimCLRAugment(size=24)
    v = aug.views(images(5, 32), 3)
    assert v.shape == (3, 5, 3, 24, 24) and v.dtype == torch.float32
    assert aug.views(images(5, 32), 0).shape == (1, 5, 3, 24, 24)
    with pytest.raises(ValueError):
        aug.views(images(1), -1)


def test_m0_is_the_plain_normalised_image() -> None:
    x = images()
    torch.testing.assert_close(SimCLRAugment(size=32).views(x, 0)[0], normalised(x))


def test_every_image_gets_its_own_randomness() -> None:
    same = images(1).expand(16, -1, -1, -1).contiguous()
    v = SimCLRAugment(size=32)(same, torch.Generator().manual_seed(0))
    flat = v.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(16) * 1e9).min() > 1.0  # no two images got the same view
    two = SimCLRAugment(size=32).views(same[:4], 2)
    assert (two[0] - two[1]).abs().flatten(1).amax(1).min() > 0.1  # the 2 views differ


def test_views_are_reproducible_with_a_generator() -> None:
    aug, x = SimCLRAugment(size=32), images()
    a = aug.views(x, 2, torch.Generator().manual_seed(3))
    b = aug.views(x, 2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_full_crop_without_colour_is_identity_and_flip_flips() -> None:
    x = images()
    keep = SimCLRAugment(size=32, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    torch.testing.assert_close(keep(x), normalised(x), atol=1e-5, rtol=0)
    flip = SimCLRAugment(size=32, scale=(1, 1), ratio=(1, 1), flip_p=1, jitter_p=0, gray_p=0)
    torch.testing.assert_close(flip(x), normalised(x).flip(-1), atol=1e-5, rtol=0)


def test_small_crops_are_zoomed_in() -> None:
    # a crop of at most 16% of a horizontal ramp is < 15 px wide: it spans < half the range
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8)
    x = ramp.view(1, 1, 1, 32).expand(8, 3, 32, 32).contiguous()
    aug = SimCLRAugment(size=32, scale=(0.08, 0.16), flip_p=0, jitter_p=0, gray_p=0)
    red = aug(x, torch.Generator().manual_seed(0))[:, 0]
    spread = red.amax(dim=(1, 2)) - red.amin(dim=(1, 2))
    full = normalised(x)[:, 0].amax() - normalised(x)[:, 0].amin()
    assert (spread < 0.5 * full).all() and (spread > 0.1 * full).all()


def test_grayscale_and_jitter() -> None:
    x = images()
    gray = SimCLRAugment(size=32, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=1)
    raw = gray(x) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) \
        + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(raw[:, 0], raw[:, 1], atol=1e-5, rtol=0)
    jitter = SimCLRAugment(size=32, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=1, gray_p=0)
    changed = (jitter(x) - normalised(x)).abs().flatten(1).amax(1)
    assert (changed > 0.05).all()


def test_blur_only_for_large_images_by_default() -> None:
    def high_freq(v: torch.Tensor) -> float:
        return (v[..., 1:] - v[..., :-1]).abs().mean().item()

    x = images(4, 64)
    base = dict(scale=(1.0, 1.0), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    plain = SimCLRAugment(size=64, blur=False, **base)(x)
    blurred = SimCLRAugment(size=64, blur_p=1, **base)(x)  # blur=None: on at 64 px
    assert high_freq(blurred) < 0.7 * high_freq(plain)
    small = SimCLRAugment(size=32, blur_p=1, **base)
    torch.testing.assert_close(small(images(4, 32)), normalised(images(4, 32)), atol=1e-5, rtol=0)


def test_to_nchw() -> None:
    hwc = np.zeros((2, 5, 6, 3), dtype=np.uint8)
    assert to_nchw(hwc).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError):
        to_nchw(np.zeros((2, 5, 6), dtype=np.uint8))


def test_per_image_generators_make_views_independent_of_the_batch() -> None:
    aug, x = SimCLRAugment(size=32, blur=True), images(3)

    def gens(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = aug.views(x, 2, gens(10, 11, 12))
    alone = aug.views(x[1:2], 2, gens(11))
    torch.testing.assert_close(batch[:, 1:2], alone)
    with pytest.raises(ValueError, match="2 generators for 3 images"):
        aug(x, gens(1, 2))


def test_solarize_inverts_the_bright_pixels_only() -> None:
    x = images()
    base = dict(scale=(1.0, 1.0), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    raw = x.float() / 255
    solarized = torch.where(raw >= 0.5, 1 - raw, raw)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    got = SimCLRAugment(size=32, solarize_p=1.0, **base)(x)
    torch.testing.assert_close(got, (solarized - mean) / std, atol=1e-5, rtol=0)
    half = SimCLRAugment(size=32, solarize_p=0.5, **base)(images(64), torch.Generator()
                                                           .manual_seed(0))
    changed = (half - normalised(images(64))).abs().flatten(1).amax(1) > 1e-3
    assert 16 < changed.sum() < 48  # about half the images are solarized

