"""Encoders for SimCLR: backbones, projection head, NT-Xent, optimisers, checkpoints."""

from __future__ import annotations

from sas_ray.config import Config
from sas_ray.core.models.heads import ProjectionHead, SimCLR, build_model


def model_from_config(cfg: Config) -> SimCLR:
    """The SimCLR model ``cfg.model`` describes, for images of ``cfg.data.image_size`` px."""
    m = cfg.model
    return build_model(m.arch, width=m.width, stem=m.stem, proj_hidden=m.proj_hidden,
                       proj_dim=m.proj_dim, image_size=cfg.data.image_size)


__all__ = ["ProjectionHead", "SimCLR", "build_model", "model_from_config"]
