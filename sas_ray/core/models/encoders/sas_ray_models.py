"""``sas-ray``: a sas-ray checkpoint (any method; file, or a directory holding ``encoder.pt``)
or torchvision ResNet weights loaded into sas-ray's ResNet, as
:func:`~sas_ray.core.models.checkpoint.load_encoder` reads them. Preprocessing: the size the
encoder was trained at, ImageNet mean/std (what sas-ray's augmentation uses in training).
Its fingerprint is that of its spec and weights
(:func:`~sas_ray.core.embedding.encoder_fingerprint`), whatever the file holds besides."""

from __future__ import annotations

from sas_ray.core.data.files import Files
from sas_ray.core.models.checkpoint import ENCODER_FILE, load_encoder
from sas_ray.core.models.heads import Encoder
from sas_ray.errors import SasRayError

FILE_NAMES = (ENCODER_FILE,)


def load(arch: str, weights: str | None, files: Files, allow_download: bool) -> Encoder:
    """The sas-ray encoder at ``weights`` (``arch`` is empty: the file names it)."""
    if weights is None:
        raise SasRayError("encoder sas-ray has nothing to download; pass --proxy.weights PATH "
                          "(a sas-ray checkpoint or run directory)")
    return load_encoder(weights, files=files)
