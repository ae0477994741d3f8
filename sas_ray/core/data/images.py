"""Encoded image bytes <-> uint8 pixel arrays (PIL + numpy only: no Ray, no pyarrow).

Shards store images as PNG or JPEG bytes. ``check_image`` is what ingest runs on every
image: it decodes fully (so a truncated file is caught) and keeps PNG/JPEG bytes as
given; any other PIL-readable format is re-encoded as PNG, which is lossless.
``decode_images`` turns a batch of such bytes into one ``(N, H, W, 3)`` RGB array.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image

KEPT_FORMATS = ("PNG", "JPEG")  # stored byte for byte; anything else becomes PNG


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
    """Decode ``data`` fully; return the bytes to store and the image's ``(height, width)``.

    Raises :class:`CorruptImageError` when ``data`` is not a complete, decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = (im.height, im.width)
            if im.format in KEPT_FORMATS:
                return data, size
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=1)
            return buf.getvalue(), size
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise CorruptImageError(f"{type(err).__name__}: {err}") from err


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image as ``(H, W, 3)`` uint8 RGB, resized (bilinear) to ``size=(H, W)`` if given."""
    with Image.open(io.BytesIO(data)) as im:
        if size is not None and im.format == "JPEG":
            im.draft("RGB", (size[1], size[0]))  # let libjpeg downscale large images cheaply
        rgb = im.convert("RGB")
    if size is not None and (rgb.height, rgb.width) != size:
        rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_images(images: Iterable[bytes], size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded images into one ``(N, H, W, 3)`` uint8 RGB array.

    ``images``: bytes objects, a numpy object array (a Ray batch column) or a pyarrow binary
    array. Grayscale and palette images are expanded to 3 channels (alpha is dropped). With
    ``size`` (an int for square, or ``(H, W)``) every image is resized to it; without it all
    images must already share one size.
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
