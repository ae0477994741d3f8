"""What every pretrained kind builds: an :class:`~sas_ray.core.models.heads.Encoder` whose
spec names it, its preprocessing and its weights' hash."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sas_ray.core.models.encoders.weights import Weights
from sas_ray.core.models.heads import Encoder, ProjectionHead


class LinearProjection(nn.Module):
    """``x @ proj`` for a ``(d, e)`` projection matrix (CLIP's ``proj``): ``(N, d) -> (N, e)``."""

    def __init__(self, proj: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Parameter(proj.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj.to(x.dtype)


def pretrained_encoder(backbone: nn.Module, name: str, image_size: int,
                       mean: Sequence[float], std: Sequence[float], weights: Weights | None,
                       head: nn.Module | None = None) -> Encoder:
    """An encoder: ``backbone`` (images -> features), ``head`` (features -> projections; none:
    the identity), preprocessing ``image_size`` px normalised by ``mean``/``std``."""
    spec = {"name": name, "image_size": int(image_size), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std]}
    if weights is not None:
        spec["weights_sha256"] = weights.sha256
    return Encoder(backbone, head if head is not None else ProjectionHead([]), spec)
