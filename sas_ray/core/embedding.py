"""Proxy embeddings of images: the mean of unit-normalised view embeddings.

For an image x with m augmented views v_1..v_m and the proxy encoder f (projection or
backbone feature), the stored embedding is::

    e(x) = 1/m * sum_k f(v_k) / ||f(v_k)||        (m = 0: e(x) = f(x) / ||f(x)||, no augmentation)

It is deliberately NOT re-normalised. With views drawn independently per image, for x != y
``e(x) . e(y)`` averages ``cos(f(v_x), f(v_y))`` over all m*m view pairs: an unbiased estimate
of the expected cosine similarity ``E[cos(f(v_x), f(v_y))]`` that SAS uses as s_xy (Joshi &
Mirzasoleiman 2023); re-normalising would scale it by ``1 / (||e(x)|| ||e(y)||) >= 1``.
So ``||e(x)|| <= 1``, with equality only when all views of x embed to the same direction.

The views of an example are counter-based draws from its key of ``(seed, id)``
(:func:`sas_ray.core.seeding.example_keys`), so an embedding depends neither on the batch the
example lands in nor on how many processes share the work.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F

from sas_ray.core.data.augment import Keys, SimCLRAugment
from sas_ray.core.models.heads import Encoder


@torch.inference_mode()
def mean_view_embeddings(model: Encoder, images: torch.Tensor, augment: SimCLRAugment,
                         views: int, feature: str,
                         keys: Keys = None) -> torch.Tensor:
    """``e(x)`` (module docstring) of uint8 ``images (N, 3, H, W)`` -> float32 ``(N, d)``.

    ``views=0`` embeds the un-augmented, resized and normalised images. ``keys`` (int64 ``(N,)``,
    one per image) make each image's views independent of the rest of the batch. ``model`` should be
    in eval mode (batch norm with running statistics, so an embedding ignores its batch).
    """
    x = augment.views(images, views, keys)  # (max(m, 1), N, 3, s, s)
    m, n = x.shape[:2]
    z = model.embed(x.flatten(0, 1), feature).float()  # (m*N, d)
    return F.normalize(z, dim=1).view(m, n, -1).mean(0)


def encoder_fingerprint(model: Encoder) -> str:
    """A short hash of an encoder's architecture spec and weights (independent of file format).

    A pretrained encoder whose spec holds its weights file's ``weights_sha256``
    (:mod:`sas_ray.core.models.encoders`) is hashed by its spec alone: that hash covers the
    weights, and large models need not be hashed tensor by tensor.
    """
    h = hashlib.sha256(json.dumps(model.spec, sort_keys=True).encode())
    if "weights_sha256" in model.spec:
        return h.hexdigest()[:16]
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
