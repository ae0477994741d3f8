"""SimSiam (Chen & He 2021): a predictor and a stop-gradient; no negatives, no momentum.

With the encoder ``f`` (backbone + 3-layer projector, last layer ``BN(affine=False)``) and the
predictor ``h`` (bottleneck MLP ``o -> pred_hidden -> o``), ``z_v = f(v)``, ``p_v = h(z_v)``::

    loss = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2,    D(p, z) = -mean_i cos(p_i, z_i)

Each view goes through the encoder on its own (batch norm per view, as in the paper). The
loss is a mean of per-sample terms, so the mean over DDP processes is the global batch's.
``pred_hidden=None``: ``proj_dim // 4`` (the paper's 2048 -> 512 bottleneck).
"""

from __future__ import annotations

import torch

from sas_ray.config import SimSiamConfig
from sas_ray.core.methods.base import Method
from sas_ray.core.models.heads import Block, Encoder, ProjectionHead, mlp
from sas_ray.core.models.losses import negative_cosine


class SimSiam(Method):
    name = "simsiam"
    config_type = SimSiamConfig

    def __init__(self, encoder: Encoder, params: SimSiamConfig) -> None:
        super().__init__(encoder, params)
        o = self.out_dim
        self.predictor = ProjectionHead(mlp([o, params.pred_hidden or max(1, o // 4), o],
                                            "bn", "none"))

    @staticmethod
    def projector(d: int, hidden: int | None, out: int) -> list[Block]:
        """``(Linear - BN - ReLU) x 2 - Linear - BN(affine=False)``."""
        return mlp([d, hidden or d, hidden or d, out], "bn", "bn-plain")

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.encoder(v1), self.encoder(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
