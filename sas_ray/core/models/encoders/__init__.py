"""The encoder registry: a name and a weights location -> an :class:`Encoder` with its own
preprocessing.

Names (``proxy.encoder``), one module per kind:

==========================  =======================================================  ========
name                        what loads                                               extra
==========================  =======================================================  ========
``sas-ray``                 a sas-ray checkpoint (any method), or torchvision ResNet  -
                            weights into sas-ray's ResNet (:mod:`..checkpoint`)
``torchvision:<name>``      any torchvision classification model, classifier removed  -
``timm:<name>``             any timm model, classifier removed (``num_classes=0``)    timm
``open_clip:<arch>``        an open_clip model's image tower (text tower: zero-shot)  clip
==========================  =======================================================  ========

Weights come from a file or directory (:mod:`.weights`); with ``weights=None`` the library
fetches its own pretrained weights, only when ``allow_download`` is set. Every pretrained
encoder's ``spec`` holds ``name``, ``image_size`` (the side its preprocessing resizes to),
``mean``/``std`` (its normalisation) and ``weights_sha256`` (the sha256 of the weights file's
bytes, the encoder's fingerprint; absent for downloaded weights). ``backbone`` gives the
features before the model's projection (open_clip ViTs: before ``proj``; classifiers: the
pooled pre-logits features) and ``head`` the projection (identity where there is none).
Nothing here imports timm or open_clip until such an encoder is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sas_ray.core.data.files import LOCAL_FILES, Files
from sas_ray.core.models.encoders import (
    open_clip_models,
    sas_ray_models,
    timm_models,
    torchvision_models,
)
from sas_ray.core.models.encoders.weights import Weights, read_weights
from sas_ray.core.models.heads import Encoder
from sas_ray.errors import SasRayError


@dataclass(frozen=True)
class Kind:
    """A kind of encoder: ``load(arch, weights, files, allow_download)`` and the file names it
    looks for first in a weights directory."""

    load: Callable[[str, str | None, Files, bool], Encoder]
    file_names: Sequence[str]


KINDS: dict[str, Kind] = {
    "sas-ray": Kind(sas_ray_models.load, sas_ray_models.FILE_NAMES),
    "torchvision": Kind(torchvision_models.load, ()),
    "timm": Kind(timm_models.load, timm_models.FILE_NAMES),
    "open_clip": Kind(open_clip_models.load, open_clip_models.FILE_NAMES),
}
TRAIN = "train"  # proxy.encoder: train the proxy instead of loading one


def parse(name: str) -> tuple[str, str]:
    """``"timm:vit_small_patch14_dinov2"`` -> ``("timm", "vit_small_patch14_dinov2")``;
    ``"sas-ray"`` -> ``("sas-ray", "")``. An unknown kind or a missing arch is one line."""
    kind, _, arch = name.partition(":")
    if kind not in KINDS or (kind != "sas-ray") != bool(arch):
        raise SasRayError(f"unknown encoder {name!r}; use sas-ray, torchvision:NAME, "
                          "timm:NAME or open_clip:ARCH (e.g. open_clip:ViT-B-32)")
    return kind, arch


@dataclass(frozen=True)
class EncoderRef:
    """What to load: a registry ``name``, its ``weights`` (file/dir/URI, or None to let the
    library download them when ``allow_download``)."""

    name: str
    weights: str | None
    allow_download: bool = False

    def load(self, files: Files = LOCAL_FILES) -> Encoder:
        """The encoder, CPU, eval mode (``files`` reads the weights)."""
        kind, arch = parse(self.name)
        if self.weights is None and not self.allow_download:
            raise SasRayError(f"encoder {self.name} needs weights: pass --proxy.weights PATH "
                              "(a file or directory, local or s3://), or --proxy.allow_download "
                              "true to let the library fetch its pretrained weights")
        return KINDS[kind].load(arch, self.weights, files, self.allow_download).eval()

    def weights_file(self, files: Files = LOCAL_FILES) -> Weights:
        """The bytes of the weights file the encoder loads (``weights`` itself, or the file
        its kind reads in that directory); ``Weights.sha256`` is its fingerprint."""
        if self.weights is None:
            raise SasRayError(f"encoder {self.name} has no weights file (downloaded weights)")
        kind, _ = parse(self.name)
        return read_weights(self.weights, files, KINDS[kind].file_names,
                            f"the weights of {self.name}")


def load_pretrained(name: str, weights: str | None, files: Files = LOCAL_FILES,
                    allow_download: bool = False) -> Encoder:
    """:meth:`EncoderRef.load` of ``EncoderRef(name, weights, allow_download)``."""
    return EncoderRef(name, weights, allow_download).load(files)


__all__ = ["KINDS", "TRAIN", "EncoderRef", "Kind", "load_pretrained", "parse"]
