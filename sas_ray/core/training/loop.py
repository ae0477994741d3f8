"""The SimCLR training loop, plain PyTorch: usable with or without Ray.

One step: two augmented views of a uint8 batch ``(n, 3, H, W)`` -> one forward pass of the
``2n`` views -> :func:`~sas_ray.core.models.losses.ntxent_loss` -> backward -> optimiser and
per-step schedule. On CUDA with ``amp`` the forward runs under autocast (bfloat16 where the
GPU supports it, else float16 with a gradient scaler). Under an initialised process group
(DDP) the loss gathers the other processes' projections and the epoch metrics are summed
over processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from sas_ray.core.data.augment import SimCLRAugment
from sas_ray.core.models.losses import ntxent_loss


@dataclass
class Precision:
    """Autocast settings for one device: ``dtype=None`` means full float32."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler(
        enabled=False))

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> Precision:
        if not amp or device.type != "cuda":
            return cls(device)
        if torch.cuda.is_bf16_supported():
            return cls(device, torch.bfloat16)
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def train_step(model: nn.Module, images: torch.Tensor, augment: SimCLRAugment,
               optimizer: torch.optim.Optimizer, temperature: float, precision: Precision,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One SimCLR step on uint8 ``images (n, 3, H, W)``; returns the (detached) loss."""
    images = images.to(precision.device, non_blocking=True)
    views = augment.views(images, 2, generator)  # (2, n, 3, size, size)
    n = images.shape[0]
    with precision.autocast():
        z = model(views.flatten(0, 1))
    loss = ntxent_loss(z[:n], z[n:], temperature)
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return loss.detach()


def train_epoch(model: nn.Module, batches: Iterable[torch.Tensor], augment: SimCLRAugment,
                optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, temperature: float,
                precision: Precision, generator: torch.Generator | None = None
                ) -> dict[str, float]:
    """Train on every batch of ``batches`` (uint8 ``(n, 3, H, W)`` tensors).

    Returns ``loss`` (mean over steps), ``images`` and ``images_per_s`` (over all processes
    when distributed), ``seconds`` (wall time, including waiting for data), ``steps`` and
    ``lr`` (at the end of the epoch).
    """
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=precision.device)
    steps = images = 0
    for batch in batches:
        loss_sum += train_step(model, batch, augment, optimizer, temperature, precision,
                               generator)
        if scheduler is not None:
            scheduler.step()
        steps += 1
        images += batch.shape[0]
    totals = torch.stack([loss_sum.float(), torch.tensor(float(steps), device=loss_sum.device),
                          torch.tensor(float(images), device=loss_sum.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        totals[:2] /= dist.get_world_size()
    seconds = time.perf_counter() - start
    loss_total, steps_f, images_f = totals.tolist()
    return {
        "loss": loss_total / max(steps_f, 1.0),
        "images": images_f,
        "images_per_s": images_f / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "steps": steps_f,
        "lr": optimizer.param_groups[0]["lr"],
    }
