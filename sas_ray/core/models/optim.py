"""Optimisers and learning-rate schedules for SimCLR.

- ``adam``: the SAS reference recipe (Adam, lr 1e-3, weight decay 1e-6, constant lr).
- ``sgd`` / ``lars``: the solo-learn recipe (momentum SGD or LARS, linear warm-up, then
  cosine decay to zero, stepped every iteration).

For every optimiser, batch-norm parameters and biases (all 1-d tensors) get no weight decay,
and LARS does not adapt their learning rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from sas_ray.config import TrainConfig
from sas_ray.errors import SasRayError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and BN/bias parameters (neither)."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


class LARS(torch.optim.Optimizer):
    """Momentum SGD with layer-wise adaptive rate scaling (You et al. 2017).

    For a parameter ``w`` with gradient ``g`` in a group with ``lars=True``::

        d = g + wd * w
        d <- d * eta * ||w|| / ||d||      (when both norms are > 0)
        v <- momentum * v + d;   w <- w - lr * v

    Groups with ``lars=False`` (BN parameters, biases) take plain momentum SGD steps.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.02) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "eta": eta, "lars": True})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] \
                    else p.grad.clone()
                if group["lars"]:
                    w_norm, d_norm = torch.linalg.norm(p), torch.linalg.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lr_factor(step: int, warmup_steps: int, total_steps: int, cosine: bool) -> float:
    """Learning-rate multiplier at ``step``: linear from 1/warmup to 1 over ``warmup_steps``,
    then 1 (constant) or a cosine decay reaching 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser named by ``cfg.optimizer`` and its per-step schedule.

    ``cfg.schedule``: "constant" or "cosine" (over ``cfg.epochs``), both after
    ``cfg.warmup_epochs`` of linear warm-up; "auto" is constant for adam, cosine for sgd/lars.
    """
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.optimizer == "lars":
        opt = LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        raise SasRayError(f"unknown optimizer {cfg.optimizer!r}; set --train.optimizer to "
                          "adam, sgd or lars")
    schedule = cfg.schedule if cfg.schedule != "auto" else \
        ("constant" if cfg.optimizer == "adam" else "cosine")
    if schedule not in ("constant", "cosine"):
        raise SasRayError(f"unknown schedule {cfg.schedule!r}; set --train.schedule to auto, "
                          "constant or cosine")
    factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_epochs * steps_per_epoch,
                               total_steps=cfg.epochs * steps_per_epoch,
                               cosine=schedule == "cosine")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
