"""MoCo v2 (Chen et al. 2020, after He et al. 2020): a momentum key encoder and a queue.

Query encoder ``f_q`` (backbone + MLP head ``Linear - ReLU - Linear``, no batch norm) and key
encoder ``f_k``, an EMA of ``f_q`` (:mod:`~sas_ray.core.methods.momentum`, ``tau`` from
``tau_base`` to ``tau_final`` by a half cosine). For views ``v1, v2``: ``q = f̂_q(v1)``,
``k = f̂_k(v2)`` (unit-normalised, no gradient into ``k``), and the loss is InfoNCE against the
queue of past keys (:func:`~sas_ray.core.models.losses.moco_loss`, temperature 0.2)::

    l_i = -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.queue_j / t)) )

After the optimiser step (:meth:`MoCo.after_step`): update ``f_k``, then enqueue this step's
keys *of every process*, gathered in rank order (:class:`KeyQueue`, FIFO), so every process
holds the same queue and each key is in it once. The queue starts as random unit vectors.

Batch norm: no shuffle across workers; a SyncBN-free equivalent within each worker instead.
MoCo's shuffling BN exists because a query and its key would otherwise be normalised with the
statistics of the same images, a signal the model can use to find its positive. Here both
encoders run on ``bn_groups`` groups of the local batch ("virtual devices"): the queries in
contiguous groups, the keys in strided groups (image ``i`` in group ``i % G``), so the images
sharing a query's statistics and those sharing its key's overlap in ``~n / G^2`` rather than
``n``: what shuffling BN over ``G`` GPUs gives, but with no communication (all-gathering
images every step would be costly over gloo on CPUs), for any number of workers (one worker,
the CPU case, has nothing to shuffle across), and deterministic (the batch order is already a
random permutation of the data). ``bn_groups=1`` turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sas_ray.config import MoCoConfig
from sas_ray.core.methods.base import Method
from sas_ray.core.methods.momentum import cosine_tau, momentum_copy, momentum_update
from sas_ray.core.models.heads import Block, Encoder, mlp
from sas_ray.core.models.losses import all_gather, moco_loss


class KeyQueue(nn.Module):
    """A FIFO ring of ``size`` unit keys ``(size, dim)``; buffers, so checkpoints hold it."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries with ``keys (m, dim)`` (the last ``size`` if more)."""
        size = len(self.keys)
        keys = keys[-size:]
        idx = (self.ptr + torch.arange(len(keys), device=keys.device)) % size
        self.keys[idx] = keys.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + len(keys)) % size)

    def ordered(self) -> torch.Tensor:
        """The keys from oldest to newest."""
        return torch.roll(self.keys, -int(self.ptr), dims=0)


def grouped(f: nn.Module, x: torch.Tensor, groups: int, strided: bool) -> torch.Tensor:
    """``f`` applied to ``groups`` groups of the rows of ``x`` (contiguous, or image ``i`` in
    group ``i % groups``), rows back in the order of ``x``."""
    n, g = len(x), max(1, min(groups, len(x)))
    parts = [torch.arange(i, n, g, device=x.device) for i in range(g)]
    sizes = [len(p) for p in parts]
    order = torch.cat(parts) if strided else torch.arange(n, device=x.device)
    out = torch.cat([f(c) for c in x[order].split(sizes)])
    return out[torch.argsort(order)]


class MoCo(Method):
    name = "moco"
    config_type = MoCoConfig

    def __init__(self, encoder: Encoder, params: MoCoConfig) -> None:
        super().__init__(encoder, params)
        self.key_encoder = momentum_copy(encoder)
        self.queue = KeyQueue(params.queue_size, self.out_dim)
        self._keys: torch.Tensor | None = None  # this step's keys, enqueued after the step

    @staticmethod
    def projector(d: int, hidden: int | None, out: int) -> list[Block]:
        """``Linear - ReLU - Linear`` (hidden ``hidden or d``), as in MoCo v2."""
        return mlp([d, hidden or d, out], "none", "none")

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        g = self.params.bn_groups
        q = F.normalize(grouped(self.encoder, v1, g, strided=False).float(), dim=1)
        with torch.no_grad():
            k = F.normalize(grouped(self.key_encoder, v2, g, strided=True).float(), dim=1)
        self._keys = k
        return moco_loss(q, k, self.queue.keys, self.params.temperature)

    def after_step(self, step: int, total_steps: int) -> None:
        tau = cosine_tau(step, total_steps, self.params.tau_base, self.params.tau_final)
        momentum_update(self.key_encoder, self.encoder, tau)
        if self._keys is not None:
            self.queue.push(all_gather(self._keys))
            self._keys = None
