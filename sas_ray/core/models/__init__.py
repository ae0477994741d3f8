"""Encoders: backbones, heads, the SSL losses, optimisers, checkpoints."""

from __future__ import annotations

from sas_ray.core.models.heads import Encoder, ProjectionHead, build_model

__all__ = ["Encoder", "ProjectionHead", "build_model"]
