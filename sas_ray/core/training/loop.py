"""The training loop, plain PyTorch: one loop for the local executor, Ray Train's workers and
the benchmarks.

:func:`fit` runs epochs ``epochs`` (a range, so a resumed run starts mid-way). Epoch ``e``:

1. every callback's ``on_epoch_start``;
2. for every uint8 batch ``(n, 3, H, W)`` of ``batches(e)`` (step ``s``): ``loss =
   step(model, batch, keys)`` (one optimisation step, returns the detached loss) with the
   images' augmentation keys :func:`~sas_ray.core.seeding.step_keys` ``(seed, e, s, rank *
   n, n)`` made on the device (worker ``rank``'s slice of the global batch), then the
   per-step schedule, then every callback's ``on_batch`` (e.g. a momentum-encoder update).
   Nothing in the loop reads a value back from the device until the epoch ends (the loss
   is summed on the device), so on CUDA the host runs ahead, queueing steps while it waits
   for the next batch;
3. metrics: ``loss`` (mean over steps), ``images`` and ``images_per_s`` (summed over
   processes under DDP), ``seconds`` (wall time, including waiting for data), ``steps``,
   ``lr`` (at the end of the epoch), ``epoch`` (epochs done), ``start_epoch`` (where this call
   began) and ``train_seconds`` (training time of all epochs so far, resumes included);
4. append them to ``state.history`` and call every callback's ``on_epoch_end`` in order
   (which may add metrics, e.g. a kNN accuracy, before later ones log or checkpoint them).

A step is ``step(model, images, keys) -> loss``; :func:`method_step` makes the one of an
SSL method (:mod:`sas_ray.core.methods`, SimCLR by default): the images to the device
(``non_blocking``: asynchronous from pinned memory), the method's views (drawn on the device,
channels-last on CUDA) -> its loss ``model(*views)`` -> backward -> optimiser;
:class:`AfterStep` is its per-step hook (momentum updates). On CUDA with ``amp`` the forward
runs under autocast (bfloat16 where the GPU supports it, else float16 with a gradient
scaler). Under an initialised process group (DDP,
the method wrapped) the losses gather the other processes' projections where they need
negatives, so N processes train like one with the global batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sas_ray.core.data.augment import SimCLRAugment
from sas_ray.core.seeding import step_keys

Step = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Callable[[int], Iterable[torch.Tensor]]  # epoch -> uint8 (n, 3, H, W) batches


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


def method_step(augments: Sequence[SimCLRAugment], optimizer: torch.optim.Optimizer,
                precision: Precision) -> Step:
    """The step of a :class:`~sas_ray.core.methods.base.Method` (the model, possibly
    DDP-wrapped): its views of uint8 ``images (n, 3, H, W)``, one per augmentation, then
    ``loss = model(*views)``, backward and the optimiser. The method's per-step hook is
    :class:`AfterStep`."""

    memory = torch.channels_last if precision.device.type == "cuda" else torch.contiguous_format

    def step(model: nn.Module, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        method = getattr(model, "module", model)
        views = [v.contiguous(memory_format=memory) for v in method.views(
            images.to(precision.device, non_blocking=True), augments, keys)]
        with precision.autocast():
            loss = model(*views)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        return loss.detach()

    return step


def prepare_module(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """A method ready for ``device`` (call before moving or DDP-wrapping it): on CUDA,
    channels-last weights (what the channels-last views feed) and cuDNN's autotuner (fixed
    shapes: the last partial batch is dropped); with ``compile``, its encoder compiled in
    place (``torch.compile``; the state-dict keys stay)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.encoder.compile()
    return model


class Callback:
    """Hooks of :func:`fit`; override the ones needed (all default to doing nothing)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first batch of ``epoch`` (0-based)."""

    def on_batch(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        """After optimisation step ``step`` (0-based within the epoch) and its schedule step."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        """After ``epoch``; ``metrics`` is already in the history and may be extended."""


class AfterStep(Callback):
    """Calls the method's ``after_step(global step, total steps)`` after every step (momentum
    encoders, MoCo's queue)."""

    def __init__(self, model: nn.Module, steps_per_epoch: int, epochs: int) -> None:
        self.method = getattr(model, "module", model)
        self.steps_per_epoch, self.total = steps_per_epoch, steps_per_epoch * epochs

    def on_batch(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        self.method.after_step(epoch * self.steps_per_epoch + step, self.total)


@dataclass
class TrainState:
    """What a resumed run continues from: per-epoch metrics and the training time so far."""

    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def _epoch(model: nn.Module, batches: Iterable[torch.Tensor], step: Step,
           scheduler: torch.optim.lr_scheduler.LRScheduler | None, seed: int, rank: int,
           device: torch.device, epoch: int, callbacks: Sequence[Callback]) -> dict[str, float]:
    model.train()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    steps = images = 0
    for batch in batches:
        n = batch.shape[0]
        loss = step(model, batch, step_keys(seed, epoch, steps, rank * n, n, device))
        loss_sum += loss.float()
        if scheduler is not None:
            scheduler.step()
        for cb in callbacks:
            cb.on_batch(epoch, steps, loss)
        steps += 1
        images += batch.shape[0]
    totals = torch.stack([loss_sum, torch.tensor(float(steps), device=device),
                          torch.tensor(float(images), device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        totals[:2] /= dist.get_world_size()
    seconds = time.perf_counter() - start
    loss_total, steps_f, images_f = totals.tolist()
    return {"loss": loss_total / max(steps_f, 1.0), "images": images_f,
            "images_per_s": images_f / seconds if seconds > 0 else 0.0,
            "seconds": seconds, "steps": steps_f}


def fit(model: nn.Module, batches: Batches, step: Step, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, epochs: range, *, seed: int,
        device: torch.device, rank: int = 0, state: TrainState | None = None,
        callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train ``model`` for ``epochs`` (module docstring); returns ``state`` with the new
    epochs' metrics appended."""
    state = state if state is not None else TrainState()
    for epoch in epochs:
        for cb in callbacks:
            cb.on_epoch_start(epoch)
        metrics: dict[str, Any] = _epoch(model, batches(epoch), step, scheduler, seed, rank,
                                         device, epoch, callbacks)
        state.train_seconds += metrics["seconds"]
        metrics.update(lr=optimizer.param_groups[0]["lr"], epoch=epoch + 1,
                       start_epoch=epochs.start, train_seconds=state.train_seconds)
        state.history.append(metrics)
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics)
    return state
