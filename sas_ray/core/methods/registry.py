"""The method registry: ``train.method`` -> its :class:`~sas_ray.core.methods.base.Method`.

:func:`build_method` makes the method a config names (its encoder from ``model.*`` with the
method's projection head, its parameters from ``method.<name>``); :func:`method_from_spec`
rebuilds one from a checkpoint's specs, :func:`load_method` one saved with its weights.
"""

from __future__ import annotations

from typing import Any

from sas_ray.config import Config
from sas_ray.core.data.files import LOCAL_FILES, Files
from sas_ray.core.methods.base import Method
from sas_ray.core.methods.byol import BYOL
from sas_ray.core.methods.moco import MoCo
from sas_ray.core.methods.simclr import SimCLR
from sas_ray.core.methods.simsiam import SimSiam
from sas_ray.core.models.checkpoint import is_sas_ray, load_state, read_checkpoint
from sas_ray.core.models.heads import Encoder, build_model, encoder_from_spec
from sas_ray.errors import SasRayError

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (SimCLR, MoCo, BYOL, SimSiam)}


def model_from_config(cfg: Config) -> Encoder:
    """The (untrained) encoder ``cfg.model`` describes, with the projection head of
    ``cfg.train.method``, for images of ``cfg.data.image_size`` px."""
    m = cfg.model
    return build_model(m.arch, width=m.width, stem=m.stem, proj_hidden=m.proj_hidden,
                       proj_dim=m.proj_dim, image_size=cfg.data.image_size,
                       projector=method_class(cfg.train.method).projector)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise SasRayError(f"unknown method {name!r}; set --train.method to one of "
                          f"{', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg: Config) -> Method:
    """The method ``cfg.train.method`` for images of ``cfg.data.image_size`` px, freshly
    initialised from torch's global generator (seed it first)."""
    cls = method_class(cfg.train.method)
    return cls(model_from_config(cfg), getattr(cfg.method, cls.name))


def method_from_spec(encoder_spec: dict[str, Any], method_spec: dict[str, Any]) -> Method:
    """A freshly initialised method of ``method_spec`` (``Method.spec``) around an encoder of
    ``encoder_spec`` (``Encoder.spec``); load the checkpoint's state dict into it."""
    cls = method_class(method_spec["name"])
    return cls(encoder_from_spec(encoder_spec), cls.config_type(**method_spec["params"]))


def load_method(path: str, files: Files = LOCAL_FILES) -> Method:
    """The whole method (encoder, momentum encoder, queue, predictor) saved at ``path`` by
    :func:`~sas_ray.core.models.checkpoint.save_encoder`, on the CPU in training mode (read
    through ``files``)."""
    payload = read_checkpoint(path, files)
    if not is_sas_ray(payload) or payload.get("method") is None:
        raise SasRayError(f"checkpoint {path} holds no method (a bare encoder, an older file "
                          "or torchvision weights); load it with load_encoder")
    method = method_from_spec(payload["spec"], payload["method"])
    load_state(method, payload["state_dict"], path, payload["spec"])
    return method
