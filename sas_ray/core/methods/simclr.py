"""SimCLR (Chen et al. 2020): NT-Xent between two views, negatives from the whole global batch.

``forward(v1, v2)``: one pass of the ``2n`` views through the encoder (batch norm over both
views, as in the SAS reference code), ``z = encoder([v1; v2])``, then
:func:`~sas_ray.core.models.losses.ntxent_loss` ``(z[:n], z[n:], t)``, which gathers every
process's projections with their gradients: N processes train exactly like one with the
global batch. Head: ``Linear - BN - ReLU - Linear - BN(affine=False)``. No per-step hook.
"""

from __future__ import annotations

import torch

from sas_ray.config import SimCLRConfig
from sas_ray.core.methods.base import Method
from sas_ray.core.models.losses import ntxent_loss


class SimCLR(Method):
    name = "simclr"
    config_type = SimCLRConfig

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z = self.encoder(torch.cat([v1, v2]))
        return ntxent_loss(z[:len(v1)], z[len(v1):], self.params.temperature)
