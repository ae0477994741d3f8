"""Encoded image bytes <-> uint8 pixel arrays (PIL + numpy only: no Ray, no pyarrow).

Shards store images as PNG or JPEG bytes. ``check_image`` is what ingest runs on every
image, as cheaply as it can tell a complete image from a damaged one: the header (format,
size) and then

- PNG: ``verify()``, which walks every chunk up to ``IEND`` and checks its CRC-32 without
  inflating the pixel data (a truncated or bit-flipped file fails its CRCs or lacks a
  complete IEND chunk);
- JPEG: a decode at 1/8 scale (libjpeg's DCT scaling: the whole entropy-coded stream is
  parsed, so truncation is caught, but no full-size inverse DCT, upsampling or colour
  conversion is done);
- any other PIL-readable format: a full decode, then a lossless PNG re-encoding (it is
  stored as PNG).

PNG and JPEG bytes are kept as given. ``decode_images`` turns a batch of such bytes into one
``(N, H, W, 3)`` RGB array; with a fixed ``size`` every image is resized preserving its
aspect ratio so that it covers ``size``, then centre-cropped to it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC-32


class CorruptImageError(ValueError):
    """The bytes are not a decodable image."""


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 array."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3) pixels, got {pixels.dtype} "
                         f"{pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_image(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """Check ``data`` (see the module); return the bytes to store and ``(height, width)``.

    Raises :class:`CorruptImageError` when ``data`` is not a complete, decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = (im.height, im.width)
            if im.format == "PNG":
                im.verify()
                if PNG_END not in data[-64:]:  # verify() stops at IEND without its CRC
                    raise ValueError("the file ends inside its IEND chunk (truncated)")
                return data, size
            if im.format == "JPEG":
                im.draft(im.mode, (-(-im.width // 8), -(-im.height // 8)))
                im.load()
                return data, size
            im.load()
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=1)
            return buf.getvalue(), size
    except UnidentifiedImageError as err:
        raise CorruptImageError("not an image format PIL can read") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise CorruptImageError(f"{type(err).__name__}: {err}") from err


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8 RGB; with ``size=(H, W)``: scaled (bilinear,
    antialiased) by ``max(H / h, W / w)`` so that it covers ``size``, keeping its aspect
    ratio, and the central ``H x W`` kept. A JPEG is first decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) whose image still covers ``size``."""
    with Image.open(io.BytesIO(data)) as im:
        if size is not None and im.format == "JPEG":
            im.draft("RGB", (size[1], size[0]))
        rgb = im.convert("RGB")
    if size is not None and (rgb.height, rgb.width) != size:
        rgb = ImageOps.fit(rgb, (size[1], size[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(images: Iterable[bytes], size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded images into one ``(N, H, W, 3)`` uint8 RGB array.

    ``images``: bytes objects, a numpy object array (a Ray batch column) or a pyarrow binary
    array. Grayscale and palette images are expanded to 3 channels (alpha is dropped). With
    ``size`` (an int for square, or ``(H, W)``) every image is resized to cover it and
    centre-cropped (:func:`decode_image`); without it all images must already share one
    size.
    """
    hw = (size, size) if isinstance(size, int) else size
    arrays = [decode_image(b.as_py() if hasattr(b, "as_py") else bytes(b), hw) for b in images]
    if not arrays:
        h, w = hw or (0, 0)
        return np.zeros((0, h, w, 3), dtype=np.uint8)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        found = ", ".join(f"{h}x{w}" for h, w, _ in sorted(shapes)[:4])
        raise ValueError(f"images have different sizes ({found}); pass size= to resize them")
    return np.stack(arrays)
