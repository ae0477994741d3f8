"""NT-Xent: value against the formula, and 1 process == 2 processes (gloo) for one batch."""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sas_ray.core.models.losses import ntxent_loss


def ntxent_by_formula(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The SimCLR loss written out anchor by anchor."""
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = len(u)
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denom = sum(math.exp(u[i] @ u[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(u[i] @ u[pos] / t) / denom)
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_matches_formula(t: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    assert ntxent_loss(z1, z2, t).item() == pytest.approx(ntxent_by_formula(z1, z2, t), rel=1e-5)


def test_ntxent_is_low_for_aligned_views() -> None:
    z = torch.randn(16, 8)
    aligned = ntxent_loss(z, z + 0.01 * torch.randn_like(z), 0.1)
    assert aligned < ntxent_loss(z, torch.randn_like(z), 0.1)


def _batch() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """A global batch (8 images, 2 views, 6 features) and a small model mapping it to 4-d."""
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    torch.manual_seed(1)
    return x1, x2, nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def _worker(rank: int, world: int, port: int, out: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x1, x2, model = _batch()
        ddp = nn.parallel.DistributedDataParallel(model)
        n = len(x1) // world
        rows = slice(rank * n, (rank + 1) * n)
        z1 = model(x1[rows]).detach().requires_grad_()  # leaf: gradient w.r.t. embeddings
        z2 = model(x2[rows]).detach().requires_grad_()
        loss = ntxent_loss(z1, z2, 0.5)
        loss.backward()
        ddp.zero_grad()  # the model's gradients through DDP (averaged over processes)
        ntxent_loss(ddp(x1[rows]), ddp(x2[rows]), 0.5).backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        # numpy, not tensors: torch would pass tensors as shared memory, which dies with us
        out.put((rank, {"loss": (mean_loss / world).item(), "z1_grad": z1.grad.numpy(),
                        "z2_grad": z2.grad.numpy(),
                        "param_grads": [p.grad.numpy() for p in model.parameters()]}))
    except Exception:  # report instead of leaving the parent waiting on the queue
        out.put((rank, {"error": traceback.format_exc()}))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(free_port: Callable[[], int]) -> None:
    world = 2
    ctx = mp.get_context("fork")  # children inherit the imports: much faster than spawn
    out, port = ctx.SimpleQueue(), free_port()
    procs = [ctx.Process(target=_worker, args=(rank, world, port, out))
             for rank in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get() for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    x1, x2, model = _batch()
    z1 = model(x1).detach().requires_grad_()
    z2 = model(x2).detach().requires_grad_()
    loss = ntxent_loss(z1, z2, 0.5)
    loss.backward()
    model.zero_grad()
    ntxent_loss(model(x1), model(x2), 0.5).backward()
    single_param_grads = [p.grad for p in model.parameters()]

    for rank in range(world):
        r = results[rank]
        assert "error" not in r, r.get("error")
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-6)
        rows = slice(rank * 4, (rank + 1) * 4)
        # each process's loss is a mean over its own anchors; the global loss is their mean
        torch.testing.assert_close(torch.from_numpy(r["z1_grad"]) / world, z1.grad[rows])
        torch.testing.assert_close(torch.from_numpy(r["z2_grad"]) / world, z2.grad[rows])
        for got, want in zip(r["param_grads"], single_param_grads, strict=True):
            torch.testing.assert_close(torch.from_numpy(got), want)
