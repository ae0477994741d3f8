"""The SSL losses: NT-Xent (SimCLR) across processes, MoCo's InfoNCE against a queue, and
the cosine losses of BYOL and SimSiam.

NT-Xent, the normalised-temperature cross-entropy of SimCLR:

For a global batch of ``N`` images with two views each, let ``u_1..u_2N`` be the unit-
normalised projections (views 1 of all images, then views 2), ``s_ij = u_i · u_j / t``, and
``p(i)`` the index of ``i``'s other view. The loss is the mean over the ``2N`` anchors of::

    l_i = -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )

Each process holds ``n = N / W`` images. It gathers every process's projections *with*
gradients, scores only its own ``2n`` anchors against all ``2N`` candidates and returns their
mean. Averaging over processes (what DDP does to the gradients) then gives exactly the
single-process loss and gradient for the same global batch: the backward of the gather
sums, onto each process's own rows, the gradients that every process's loss sends them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather. Backward: sum the gradients every process computed for the
    gathered tensor (all-reduce) and hand each process the rows of its own input."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n:(rank + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` (each ``(n, d)``, equal ``n``), concatenated in rank order to
    ``(W * n, d)``; gradients flow back to every process's own ``x``."""
    _, world = _world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def ntxent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                gather: bool = True) -> torch.Tensor:
    """NT-Xent of two views ``z1``, ``z2`` (each ``(n, d)``; row ``i`` of both is one image).

    With ``gather=True`` and an initialised process group of ``W`` processes, the negatives
    are the views of all ``W * n`` images in the global batch (see the module docstring);
    every process must call it with the same ``n``. Returns the mean loss over this
    process's ``2n`` anchors, a scalar. Computed in float32 (safe under autocast).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must both be (n, d), got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    n = z1.shape[0]
    rank, world = _world() if gather else (0, 1)
    u1 = F.normalize(z1.float(), dim=1)
    u2 = F.normalize(z2.float(), dim=1)
    if world > 1:
        g1, g2 = gather_with_grad(u1), gather_with_grad(u2)
    else:
        g1, g2 = u1, u2
    big_n = g1.shape[0]
    candidates = torch.cat([g1, g2], dim=0)  # (2N, d): views 1, then views 2
    anchors = torch.cat([u1, u2], dim=0)  # (2n, d): this process's rows
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    own = rank * n + torch.arange(n, device=z1.device)  # global index of each local image
    self_index = torch.cat([own, own + big_n])
    positive = torch.cat([own + big_n, own])
    logits[torch.arange(2 * n, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """All processes' ``x`` (each ``(n, ...)``, equal shapes) concatenated in rank order, no
    gradient (e.g. MoCo's keys, to enqueue on every process); ``x`` itself with one process."""
    _, world = _world()
    if world == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
              temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of MoCo: queries ``q`` and their keys ``k`` (each ``(n, d)``), negatives the
    ``(K, d)`` queue; all three unit-normalised. The mean over the ``n`` queries of::

        l_i = -log( exp(q_i . k_i / t) / (exp(q_i . k_i / t) + sum_j exp(q_i . queue_j / t)) )

    Per query, so with the same queue on every process the mean over processes (DDP) is the
    loss of the global batch. Computed in float32.
    """
    q, k, queue = q.float(), k.float(), queue.float()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def normalised_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss, the mean over rows of ``||p_i/|p_i| - z_i/|z_i|||^2 =
    2 - 2 cos(p_i, z_i)`` for ``(n, d)`` predictions ``p`` and (detached) targets ``z``."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``D(p, stopgrad(z))``: the mean over rows of ``-cos(p_i, z_i)``."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
