"""Encoders: backbones, heads, the SSL losses, optimisers, checkpoints."""

from __future__ import annotations

from sas_ray.config import Config
from sas_ray.core.models.heads import Encoder, ProjectionHead, build_model


def model_from_config(cfg: Config) -> Encoder:
    """The (untrained) encoder ``cfg.model`` describes, with the projection head of
    ``cfg.train.method``, for images of ``cfg.data.image_size`` px."""
    from sas_ray.core.methods.registry import method_class  # the methods build on the models

    m = cfg.model
    return build_model(m.arch, width=m.width, stem=m.stem, proj_hidden=m.proj_hidden,
                       proj_dim=m.proj_dim, image_size=cfg.data.image_size,
                       projector=method_class(cfg.train.method).projector)


__all__ = ["Encoder", "ProjectionHead", "build_model", "model_from_config"]
