"""Momentum (EMA) encoders: the target of BYOL and the key encoder of MoCo.

After optimiser step ``k`` of ``K`` the momentum copy ``xi`` of the online weights ``theta`` is
updated as::

    xi <- tau_k * xi + (1 - tau_k) * theta
    tau_k = tau_final - (tau_final - tau_base) * (cos(pi * k / K) + 1) / 2

so ``tau`` rises by a half cosine from ``tau_base`` (step 0) to ``tau_final`` (step K), as in
BYOL (Grill et al. 2020, with ``tau_final = 1``). Only parameters are averaged; the copy's
batch-norm statistics are its own (it runs in training mode on its own inputs).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters get no gradient."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def cosine_tau(step: int, total_steps: int, tau_base: float, tau_final: float = 1.0) -> float:
    """``tau_k`` of the module docstring (``k`` clipped to ``[0, K]``)."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return tau_final - (tau_final - tau_base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``xi <- tau * xi + (1 - tau) * theta`` for every parameter pair, in place."""
    for xi, theta in zip(target.parameters(), online.parameters(), strict=True):
        xi.mul_(tau).add_(theta.detach(), alpha=1 - tau)
