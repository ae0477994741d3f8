"""SimCLR views: shapes, independent randomness per image, the un-augmented m=0 view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_ray.core.data import augment
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
    blurred = SimCLRAugment(size=64, blur_p=1, blur_sigma=(1.5, 2), **base)(x)  # on at 64 px
    assert high_freq(blurred) < 0.7 * high_freq(plain)
    small = SimCLRAugment(size=32, blur_p=1, **base)
    torch.testing.assert_close(small(images(4, 32)), normalised(images(4, 32)), atol=1e-5, rtol=0)


def test_to_nchw() -> None:
    hwc = np.zeros((2, 5, 6, 3), dtype=np.uint8)
    assert to_nchw(hwc).shape == (2, 3, 5, 6)
    with pytest.raises(ValueError):
        to_nchw(np.zeros((2, 5, 6), dtype=np.uint8))


def test_per_image_keys_make_views_independent_of_the_batch_and_chunking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    aug, x = SimCLRAugment(size=32, blur=True), images(3)
    keys = torch.tensor([10, 11, 12])
    batch = aug.views(x, 2, keys)
    alone = aug.views(x[1:2], 2, keys[1:2])
    torch.testing.assert_close(batch[:, 1:2], alone)
    monkeypatch.setattr(augment, "CPU_CHUNK_BYTES", 1)  # one image per pass
    torch.testing.assert_close(aug.views(x, 2, keys), batch)
    assert (aug.views(x, 2, keys + 1) - batch).abs().amax() > 0.1
    with pytest.raises(ValueError, match=r"\(2,\) keys for 3 images"):
        aug(x, keys[:2])


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



# ---------------------------------------------------------------- against torchvision
def colour_images(n: int = 12) -> torch.Tensor:
    """Float RGB in [0, 1] with the hard pixels of the hue formula: grey (no chroma), ties of
    the largest channels, pure and saturated colours, black and white."""
    x = torch.rand(n, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    hard = torch.tensor([[0.5, 0.5, 0.5], [0.8, 0.8, 0.2], [0.3, 0.9, 0.9], [0.7, 0.2, 0.7],
                         [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0],
                         [1.0, 1.0, 1.0], [0.2, 0.6, 0.4]])
    x[:, :, 0, :len(hard)] = hard.T
    return x


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_colour_op_matches_torchvision(op: str) -> None:
    from torchvision.transforms.v2 import functional as TF

    x = colour_images()
    n = len(x)
    gen = torch.Generator().manual_seed(1)
    if op == "hue":
        factor = torch.rand(n, generator=gen) - 0.5  # the full range [-0.5, 0.5)
        got = augment.hue(x, factor)
        want = torch.stack([TF.adjust_hue(im, float(f)) for im, f in zip(x, factor, strict=True)])
    else:
        factor = 2 * torch.rand(n, generator=gen)  # [0, 2): pushes values past 1 (the clamp)
        kind = {"brightness": augment.BRIGHTNESS, "contrast": augment.CONTRAST,
                "saturation": augment.SATURATION}[op]
        got = augment.blend(x, factor, *augment.blend_weights(torch.full((n,), kind), factor))
        reference = getattr(TF, f"adjust_{op}")
        want = torch.stack([reference(im, float(f)) for im, f in zip(x, factor, strict=True)])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    # a blend pass that applies nothing (NO_BLEND, factor 1) is exactly the identity
    same = augment.blend(x, torch.ones(n), *augment.blend_weights(
        torch.full((n,), augment.NO_BLEND), torch.ones(n)))
    assert torch.equal(same, x)


def test_cpu_crop_is_torchvisions_resized_crop_and_flip() -> None:
    """On the CPU each view's crop is ``TF.resized_crop`` of the uint8 image to its box
    (antialiased), mirrored where flipped: exactly, before the float conversion."""
    from torchvision.transforms.v2 import functional as TF

    x = images(16, 40).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last
    aug = SimCLRAugment(size=24, scale=(0.05, 1.0))  # enlarging and shrinking crops
    p = aug.params(torch.arange(16), (40, 40))
    assert 0 < p.flip.sum() < 16
    got = augment.resized_crops(x, list(range(16)), p.boxes.tolist(), p.flip.tolist(), 24)
    for i, ((left, top, right, bottom), flip) in enumerate(zip(p.boxes.tolist(),
                                                               p.flip.tolist(), strict=True)):
        want = TF.resized_crop(x[i], int(top), int(left), int(bottom - top), int(right - left),
                               [24, 24], antialias=True)
        assert torch.equal(got[i], want.flip(-1) if flip else want), i


def test_batched_device_path_matches_the_cpu_path() -> None:
    """``apply`` (roi_align over the batch, every pass run: what a GPU runs) gives the CPU
    path's views where crops only enlarge (the same bilinear samples, but the CPU crop is
    uint8 from torch's fixed-point kernel: a few 255ths after the colour ops and the
    normalisation's 1 / std) inside the one-pixel border (there
    roi_align reads the pixels beyond the box, resized_crop repeats its edge), and every
    skipped pass is exact (with blur and solarize, which the first check leaves out: they
    carry the border inwards and turn rounding into a jump)."""
    x, keys = images(24, 64), torch.arange(24) + 100
    aug = SimCLRAugment(size=48, scale=(0.1, 0.25), blur=False)
    p = aug.params(keys, (64, 64))
    assert ((p.boxes[:, 2:] - p.boxes[:, :2]) <= 48).all()  # enlarging crops only
    inner = (..., slice(1, -1), slice(1, -1))
    gap = (aug.apply(x, p)[inner] - aug(x, keys)[inner]).abs()
    assert gap.amax() < 0.1 and gap.mean() < 0.01, (gap.amax(), gap.mean())  # 0.1: ~5 / 255
    aug = SimCLRAugment(size=48, blur=True, solarize_p=0.3)
    p = aug.params(keys, (64, 64))
    crops = augment.resized_crops(x, list(range(24)), p.boxes.tolist(), p.flip.tolist(),
                                  48).float() / 255
    assert torch.equal(aug.colour(crops, p, augment.Passes.needed(p)), aug.colour(crops, p))
    assert augment.Passes.needed(p) != augment.Passes()  # some pass skipped


def raw(view: torch.Tensor) -> torch.Tensor:
    """A normalised view back in [0, 1]."""
    return view * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) \
        + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_grayscale_and_solarize_match_torchvision() -> None:
    from torchvision.transforms.v2 import functional as TF

    x, keep = images(), dict(scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    plain = x.float() / 255
    gray = SimCLRAugment(size=32, **(keep | {"gray_p": 1}))(x, torch.arange(8))
    torch.testing.assert_close(raw(gray), TF.rgb_to_grayscale(plain, 3), atol=2e-6, rtol=0)
    solar = SimCLRAugment(size=32, solarize_p=1, **keep)(x, torch.arange(8))
    torch.testing.assert_close(raw(solar), TF.solarize(plain, 0.5), atol=2e-6, rtol=0)


def test_jitter_is_each_op_once_in_a_uniformly_random_order_as_torchvision() -> None:
    """Every image gets brightness, contrast, saturation and hue once each, in one of the 24
    orders (about equally often), and its view equals torchvision's ops in that order."""
    from torchvision.transforms.v2 import functional as TF

    aug = SimCLRAugment(size=8, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=1, gray_p=0)
    n = 2400
    p = aug.params(torch.arange(n), (8, 8))
    orders = []
    for kinds in p.kinds.tolist():
        before = [k for k in kinds[:3] if k != augment.NO_BLEND]
        after = [k for k in kinds[3:] if k != augment.NO_BLEND]
        orders.append((*before, augment.HUE, *after))
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and p.hue_on.all()
    counts = np.unique(np.array(orders), axis=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 60  # 100 expected of each

    x = (colour_images(12)[..., :8, :8] * 255).round().to(torch.uint8)
    keys = torch.arange(12) * 7
    p = aug.params(keys, (8, 8))
    ops = {augment.BRIGHTNESS: TF.adjust_brightness, augment.CONTRAST: TF.adjust_contrast,
           augment.SATURATION: TF.adjust_saturation}
    want = []
    for i, im in enumerate(x.float() / 255):
        for j, k in enumerate(p.kinds[i].tolist()):
            if j == 3:
                im = TF.adjust_hue(im, float(p.hue_shift[i]))
            if k != augment.NO_BLEND:
                im = ops[k](im, float(p.factors[i, j]))
        want.append(im)
    torch.testing.assert_close(raw(aug(x, keys)), torch.stack(want), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- no host sync
SYNCING = {"aten::nonzero", "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero",
           "aten::masked_select", "aten::equal", "aten::lift_fresh"}


def test_views_queue_without_host_syncs() -> None:
    """No op that needs a value on the host (``nonzero``, ``item``, boolean-mask indexing,
    a tensor made from Python data, hence copied to the device) in the views of a step on a
    device (the keys, the parameters, the pixels: what ``__call__`` runs off the CPU), once
    the constants exist: on CUDA the views are queued without waiting for the GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sas_ray.core.seeding import step_keys

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.name().split(".")[0]
            bool_index = name == "aten::index" and any(
                t is not None and t.dtype == torch.bool for t in args[1])
            self.names.append("aten::masked_select" if bool_index else name)
            return func(*args, **(kwargs or {}))

    def device_views(augs: list[SimCLRAugment], x: torch.Tensor) -> None:
        keys = step_keys(0, 1, 2, 0, x.shape[0], x.device)
        for v, aug in enumerate(augs):
            aug.apply(x, aug.params(augment.view_keys(keys, v), x.shape[-2:]))

    for size, blur_p, solarize_p in ((32, 0.5, 0.0), (64, 1.0, 0.2)):
        augs = [SimCLRAugment(size=size, blur_p=blur_p, solarize_p=solarize_p),
                SimCLRAugment(size=size)]
        x = images(6, size)
        device_views(augs, x)  # warm-up: the cached constants
        with Ops() as ops:
            device_views(augs, x)
        assert not SYNCING & set(ops.names), sorted(SYNCING & set(ops.names))
        assert len(ops.names) < 800  # aten ops of 2 views, views included (907 with gathers)


# ---------------------------------------------------------------- counter-based draws
def test_counter_draws_are_uniform_and_the_same_for_ints_and_tensors() -> None:
    from sas_ray.core import rng

    values = [0, 1, 2**31, 2**32 - 1, 123456789]
    assert rng.mix(torch.tensor(values)).tolist() == [rng.mix(v) for v in values]
    big = [2**40 + 5, 2**63 - 1]
    assert rng.combine(torch.tensor([7, 7]), torch.tensor(big)).tolist() == \
        [rng.combine(7, v) for v in big]
    u = rng.uniform(rng.combine(rng.mix(3), torch.arange(50_000)), 36)
    assert u.shape == (50_000, 36) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.std() - 12 ** -0.5) < 0.005
    assert (torch.corrcoef(u.T) - torch.eye(36)).abs().max() < 0.03  # columns independent
    assert torch.equal(u, rng.uniform(rng.combine(rng.mix(3), torch.arange(50_000)), 36))
