"""The SimCLR projection head and the model that pairs it with a backbone.

Projection head (reference recipe)::

    z = BN_noaffine(W2 · ReLU(BN(W1 · h)))      h: (N, d) -> z: (N, out_dim)

with ``W1: d -> hidden`` and ``W2: hidden -> out_dim``; the linear layers have no bias
because a batch norm follows each. The final batch norm has no learnable scale/shift.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sas_ray.core.models.backbones import ResNetBackbone, build_backbone, resolve_stem
from sas_ray.errors import SasRayError

Feature = Literal["projection", "backbone"]


class ProjectionHead(nn.Sequential):
    """``Linear(d, hidden) - BN - ReLU - Linear(hidden, out_dim) - BN(affine=False)``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim, affine=False),
        )


class SimCLR(nn.Module):
    """Backbone + projection head. ``forward(x)`` gives projections ``(N, out_dim)``.

    ``spec`` holds the arguments of :func:`build_model` that rebuild the same model (arch,
    width, stem, proj_hidden, proj_dim, image_size: the side of the images it expects);
    checkpoints store it.
    """

    def __init__(self, backbone: ResNetBackbone, head: ProjectionHead, spec: dict) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = dict(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor, feature: Feature = "projection") -> torch.Tensor:
        """Backbone features ``(N, feature_dim)`` or projections ``(N, out_dim)`` of ``x``."""
        if feature == "backbone":
            return self.backbone(x)
        if feature == "projection":
            return self(x)
        raise SasRayError(f"unknown feature {feature!r}; use 'projection' or 'backbone'")


def build_model(arch: str = "resnet18", width: float = 1.0, stem: str = "cifar",
                proj_hidden: int | None = None, proj_dim: int = 128,
                image_size: int = 32) -> SimCLR:
    """A SimCLR model; ``proj_hidden=None`` uses the backbone's feature dim (reference recipe),
    ``stem="auto"`` picks the stem from ``image_size``."""
    stem = resolve_stem(stem, image_size)
    backbone = build_backbone(arch, width=width, stem=stem)
    hidden = proj_hidden or backbone.feature_dim
    head = ProjectionHead(backbone.feature_dim, hidden, proj_dim)
    spec = {"arch": arch, "width": width, "stem": stem, "proj_hidden": hidden,
            "proj_dim": proj_dim, "image_size": image_size}
    return SimCLR(backbone, head, spec)
