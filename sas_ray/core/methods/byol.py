"""BYOL (Grill et al. 2020): an online network with a predictor regresses a momentum target.

Online: encoder ``f`` (backbone + projector ``Linear - BN - ReLU - Linear``) and predictor
``q`` (the same layout, ``o -> pred_hidden -> o``). Target: ``f_xi``, an EMA of ``f``
(:mod:`~sas_ray.core.methods.momentum`; ``tau`` from ``tau_base`` 0.99 to ``tau_final`` 1 by a
half cosine over all steps, updated in :meth:`BYOL.after_step`). The symmetric loss::

    loss = mean_i [ ||q̂(f(v1_i)) - f̂_xi(v2_i)||^2 + ||q̂(f(v2_i)) - f̂_xi(v1_i)||^2 ]

with ``x̂ = x / ||x||`` (each term is ``2 - 2 cos``) and no gradient into the target. Views are
asymmetric (paper, Table 6): view 1 always blurred, never solarized; view 2 blurred with p=0.1,
solarized with p=0.2; colour jitter (0.4, 0.4, 0.2, 0.1). Blur still follows
``SimCLRAugment.blur`` (off below 64 px, as solo-learn's CIFAR recipe has none). Per-sample
terms: the mean over DDP processes is the global batch's loss. ``pred_hidden=None``: the
projector's hidden width.
"""

from __future__ import annotations

import torch

from sas_ray.config import BYOLConfig
from sas_ray.core.methods.base import Method
from sas_ray.core.methods.momentum import cosine_tau, momentum_copy, momentum_update
from sas_ray.core.models.heads import Block, Encoder, ProjectionHead, mlp
from sas_ray.core.models.losses import normalised_mse

_JITTER = (0.4, 0.4, 0.2, 0.1)


class BYOL(Method):
    name = "byol"
    config_type = BYOLConfig
    view_params = ({"blur_p": 1.0, "solarize_p": 0.0, "jitter": _JITTER},
                   {"blur_p": 0.1, "solarize_p": 0.2, "jitter": _JITTER})

    def __init__(self, encoder: Encoder, params: BYOLConfig) -> None:
        super().__init__(encoder, params)
        o, hidden = self.out_dim, encoder.head.blocks[0][1]
        self.predictor = ProjectionHead(mlp([o, params.pred_hidden or hidden, o], "bn", "none"))
        self.target = momentum_copy(encoder)

    @staticmethod
    def projector(d: int, hidden: int | None, out: int) -> list[Block]:
        """``Linear - BN - ReLU - Linear`` (hidden ``hidden or d``)."""
        return mlp([d, hidden or d, out], "bn", "none")

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.predictor(self.encoder(v1)), self.predictor(self.encoder(v2))
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        return normalised_mse(p1, t2) + normalised_mse(p2, t1)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = cosine_tau(step, total_steps, self.params.tau_base, self.params.tau_final)
        momentum_update(self.target, self.encoder, tau)
