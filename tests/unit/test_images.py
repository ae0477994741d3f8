"""Image checking (header plus a cheap decode) and decoding (aspect-preserving resize and a
centre crop)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from sas_ray.core.data import images


def _encode(pixels: np.ndarray, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_check_image_keeps_png_jpeg_and_converts_others_losslessly() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        data = _encode(rgb, fmt)
        assert images.check_image(data) == (data, (5, 7))
    stored, size = images.check_image(_encode(rgb, "BMP"))
    assert stored[:8] == b"\x89PNG\r\n\x1a\n" and size == (5, 7)
    np.testing.assert_array_equal(images.decode_images([stored])[0], rgb)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "progressive"])
def test_check_image_catches_damage(fmt: str) -> None:
    """Truncation anywhere after the header, and a flipped bit in PNG pixel data (CRC)."""
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    data = _encode(rgb, "JPEG", progressive=True) if fmt == "progressive" else _encode(rgb, fmt)
    for cut in (len(data) // 2, len(data) - 16, len(data) - 2):
        with pytest.raises(images.CorruptImageError):
            images.check_image(data[:cut])
    for broken in (b"", b"garbage bytes", data[:8]):
        with pytest.raises(images.CorruptImageError):
            images.check_image(broken)
    if fmt == "PNG":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        with pytest.raises(images.CorruptImageError, match=r"checksum|broken"):
            images.check_image(bytes(flipped))


def test_check_image_does_not_decode_fully(monkeypatch) -> None:
    """A JPEG is decoded at 1/8 scale and a PNG not at all (its CRCs are checked)."""
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg, png = _encode(rgb, "JPEG"), _encode(rgb, "PNG")
    decoded: list[tuple[int, int]] = []
    load = Image.Image.load

    def spy(self: Image.Image) -> object:
        out = load(self)
        decoded.append(self.size)
        return out

    monkeypatch.setattr(Image.Image, "load", spy)
    images.check_image(jpeg)
    assert decoded and set(decoded) == {(8, 8)}
    decoded.clear()
    images.check_image(png)
    assert decoded == []


def test_decode_images_rgb_grayscale_batches() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    out = images.decode_images([images.encode_png(rgb), images.encode_png(grey)])
    assert out.shape == (2, 4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], rgb)
    np.testing.assert_array_equal(out[1], np.repeat(grey[..., None], 3, axis=2))
    small = images.decode_images([images.encode_png(rgb), _encode(rgb[:2], "JPEG")], size=3)
    assert small.shape == (2, 3, 3, 3)
    assert images.decode_images([], size=(2, 5)).shape == (0, 2, 5, 3)
    column = [images.encode_png(rgb), images.encode_png(rgb)]
    for batch in (pa.array(column), np.array(column, dtype=object)):  # pyarrow / Ray batch
        np.testing.assert_array_equal(images.decode_images(batch), np.stack([rgb, rgb]))
    with pytest.raises(ValueError, match="different sizes"):
        images.decode_images([images.encode_png(rgb), images.encode_png(rgb[:2])])


def _bands(height: int, width: int, axis: int) -> np.ndarray:
    """Three equal bands along ``axis`` (1: columns, 0: rows): blue, green, red."""
    pixels = np.zeros((height, width, 3), np.uint8)
    n = pixels.shape[axis] // 3
    for band, channel in enumerate((2, 1, 0)):
        index = [slice(None), slice(None)]
        index[axis] = slice(band * n, (band + 1) * n)
        pixels[(*index, channel)] = 255
    return pixels


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("axis", [0, 1])
def test_fixed_size_keeps_the_aspect_ratio_and_crops_the_centre(fmt: str, axis: int) -> None:
    """A 3:1 image of blue|green|red bands at a square size is its green centre (a squash
    would keep all three bands); the scale is that of the shorter side."""
    shape = (48, 144) if axis == 1 else (144, 48)
    out = images.decode_images([_encode(_bands(*shape, axis), fmt, quality=95)], size=16)[0]
    assert out.shape == (16, 16, 3)
    centre = out[4:12, 4:12].astype(int)
    assert (centre[..., 1] > 230).all() and (centre[..., [0, 2]] < 25).all()
    green = out[..., 1].astype(int) > 128
    assert green.mean() > 0.8  # the crop is (nearly all) the green band
    wide = images.decode_images([_encode(_bands(48, 144, 1), fmt, quality=95)],
                                size=(8, 24))[0]  # the image's own aspect ratio: no crop
    assert wide.shape == (8, 24, 3)
    assert wide[4, 2, 2] > 200 and wide[4, 12, 1] > 200 and wide[4, 21, 0] > 200


def test_fixed_size_upscales_small_images() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    out = images.decode_images([images.encode_png(rgb)], size=8)
    assert out.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(out[0].mean(), rgb[:, 2:6].mean(), atol=12)
