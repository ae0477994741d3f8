"""SSL methods: each loss against its formula (MoCo and BYOL also against hand-computed tiny
examples), the momentum update and its cosine schedule, MoCo's queue, 1 vs 2 gloo processes,
views, the registry and checkpoint round trips of every method."""

from __future__ import annotations

import math
import os
import traceback
import typing
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sas_ray.config import (
    BYOLConfig,
    Config,
    ConfigError,
    MethodConfig,
    MoCoConfig,
    SimCLRConfig,
    SimSiamConfig,
    TrainConfig,
    apply,
)
from sas_ray.core.methods import METHODS, Method, build_method, load_method
from sas_ray.core.methods.moco import KeyQueue, grouped
from sas_ray.core.methods.momentum import cosine_tau, momentum_update
from sas_ray.core.models.checkpoint import load_encoder, save_encoder
from sas_ray.core.models.heads import Encoder, ProjectionHead, build_model
from sas_ray.errors import SasRayError

PARAMS = {"simclr": SimCLRConfig(temperature=0.5), "moco": MoCoConfig(queue_size=16),
          "byol": BYOLConfig(), "simsiam": SimSiamConfig()}


def tiny(name: str, seed: int = 0, **params: object) -> Method:
    """``name`` around a small MLP encoder on ``(n, 3, 4, 4)`` views (its own projection head,
    batch norms included), initialised from ``seed``."""
    torch.manual_seed(seed)
    cls = METHODS[name]
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 10), nn.BatchNorm1d(10), nn.ReLU())
    head = ProjectionHead(cls.projector(10, 12, 6))
    p = PARAMS[name] if not params else type(PARAMS[name])(**params)
    return cls(Encoder(backbone, head, {}), p)


def views(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=gen), torch.randn(n, 3, 4, 4, generator=gen)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


# ------------------------------------------------------------------ losses, by formula
def test_simclr_loss_is_ntxent_written_out() -> None:
    m, (v1, v2) = tiny("simclr").eval(), views()  # eval: each projection depends on its image
    u = torch.cat([m.encoder(v1), m.encoder(v2)]).detach()
    n2, t = len(u), 0.5
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denom = sum(math.exp(cos(u[i], u[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(cos(u[i], u[pos]) / t) / denom)
    assert m(v1, v2).item() == pytest.approx(total / n2, rel=1e-5)


def test_moco_loss_is_infonce_against_the_queue_written_out() -> None:
    m, (v1, v2) = tiny("moco", temperature=0.2, queue_size=5).eval(), views()
    q, k = m.encoder(v1).detach(), m.key_encoder(v2).detach()
    queue, t = m.queue.keys, 0.2
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(cos(q[i], k[i]) / t)
        total += -math.log(pos / (pos + sum(math.exp(cos(q[i], z) / t) for z in queue)))
    assert m(v1, v2).item() == pytest.approx(total / len(q), rel=1e-5)


def test_byol_loss_is_the_symmetric_normalised_mse_written_out() -> None:
    m, (v1, v2) = tiny("byol").eval(), views()
    with torch.no_grad():
        p1, p2 = m.predictor(m.encoder(v1)), m.predictor(m.encoder(v2))
        t1, t2 = m.target(v1), m.target(v2)
    per_sample = [(2 - 2 * cos(p1[i], t2[i])) + (2 - 2 * cos(p2[i], t1[i]))
                  for i in range(len(v1))]
    assert m(v1, v2).item() == pytest.approx(sum(per_sample) / len(v1), rel=1e-5)


def test_simsiam_loss_is_the_symmetric_negative_cosine_written_out() -> None:
    m, (v1, v2) = tiny("simsiam").eval(), views()
    with torch.no_grad():
        z1, z2 = m.encoder(v1), m.encoder(v2)
        p1, p2 = m.predictor(z1), m.predictor(z2)
    per_sample = [-cos(p1[i], z2[i]) / 2 - cos(p2[i], z1[i]) / 2 for i in range(len(v1))]
    assert m(v1, v2).item() == pytest.approx(sum(per_sample) / len(v1), rel=1e-5)


def _identity_encoder() -> Encoder:
    """Projections = inputs ``(n, 2)``: identity backbone, one bias-free identity layer."""
    head = ProjectionHead([(2, 2, "none", False)])
    with torch.no_grad():
        head[0].weight.copy_(torch.eye(2))
        head[0].bias.zero_()
    return Encoder(nn.Identity(), head, {})


def test_moco_hand_computed_example() -> None:
    m = METHODS["moco"](_identity_encoder(), MoCoConfig(temperature=0.5, queue_size=2)).eval()
    m.queue.keys.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    v1, v2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    # q = k = (1, 0): logits 2 | 0, -2      -> log(1 + e^-2 + e^-4) = 0.1429316
    # q = k = (0, 1): logits 2 | 2, 0       -> log(2 + e^-2)        = 0.7586237
    want = (math.log(1 + math.exp(-2) + math.exp(-4)) + math.log(2 + math.exp(-2))) / 2
    assert want == pytest.approx(0.4507777, abs=1e-7)
    assert m(v1, v2).item() == pytest.approx(want, rel=1e-6)
    m.after_step(0, 10)  # this step's keys (1, 0), (0, 1) replace the queue (size 2)
    torch.testing.assert_close(m.queue.ordered(), torch.eye(2))


def test_byol_hand_computed_example() -> None:
    m = METHODS["byol"](_identity_encoder(), BYOLConfig()).eval()
    with torch.no_grad():  # predictor: Linear(I) - BN (running stats 0/1) - ReLU - Linear(swap)
        m.predictor[0].weight.copy_(torch.eye(2))
        m.predictor[3].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        m.predictor[3].bias.zero_()
    v1, v2 = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    # image 1: p1 = (0, 1) vs t2 = (1, 1), p2 = (1, 1) vs t1 = (1, 0): 2 * (2 - 2 / sqrt 2)
    # image 2: p1 = (4, 3) = t2, p2 = (3, 4) = t1: 0
    want = (4 - 2 * math.sqrt(2) + 0) / 2
    assert want == pytest.approx(0.5857864, abs=1e-7)
    assert m(v1, v2).item() == pytest.approx(want, rel=1e-4)  # BN's eps: x / sqrt(1 + 1e-5)


# ------------------------------------------------------------------ momentum and queue
def test_cosine_tau_schedule() -> None:
    assert cosine_tau(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_tau(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_tau(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_tau(25, 100, 0.9, 0.99) == pytest.approx(0.99 - 0.09 * (math.cos(math.pi / 4)
                                                                           + 1) / 2)
    taus = [cosine_tau(k, 20, 0.99) for k in range(21)]
    assert taus == sorted(taus)  # rises monotonically


def test_momentum_update_and_method_hooks() -> None:
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for xi, x0, theta in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(xi, 0.9 * x0 + 0.1 * theta.detach())
    for name, attr in (("byol", "target"), ("moco", "key_encoder")):
        m = tiny(name)
        copy = getattr(m, attr)
        assert not any(p.requires_grad for p in copy.parameters())
        with torch.no_grad():
            for p in m.encoder.parameters():
                p.add_(1.0)  # as if an optimiser step moved the online encoder
        xi0 = [p.clone() for p in copy.parameters()]
        m(*views())  # the forward pass leaves the momentum encoder alone
        assert all(torch.equal(a, b) for a, b in zip(xi0, copy.parameters(), strict=True))
        m.after_step(5, 10)
        tau = cosine_tau(5, 10, m.params.tau_base, m.params.tau_final)
        for xi, x0, theta in zip(copy.parameters(), xi0, m.encoder.parameters(), strict=True):
            torch.testing.assert_close(xi, tau * x0 + (1 - tau) * theta.detach())


def test_queue_is_a_fifo_of_fixed_size() -> None:
    q = KeyQueue(5, 2)
    keys = torch.arange(24, dtype=torch.float32).view(12, 2)
    q.push(keys[:3])
    torch.testing.assert_close(q.ordered()[-3:], keys[:3])
    q.push(keys[3:7])  # wraps around: the two oldest of the first push are gone
    torch.testing.assert_close(q.ordered(), keys[2:7])
    q.push(keys[:12])  # more than fit: the last five
    torch.testing.assert_close(q.ordered(), keys[7:12])
    assert q.keys.shape == (5, 2) and int(q.ptr) == (7 + 5) % 5


def test_grouped_batch_norm_uses_contiguous_or_strided_groups() -> None:
    bn, x = nn.BatchNorm1d(3).train(), torch.randn(6, 3)
    plain = torch.cat([bn(x[:3]), bn(x[3:])])
    torch.testing.assert_close(grouped(bn, x, 2, strided=False), plain)
    strided = grouped(bn, x, 2, strided=True)
    torch.testing.assert_close(strided[0::2], bn(x[0::2]))
    torch.testing.assert_close(strided[1::2], bn(x[1::2]))
    lin = nn.Linear(3, 2)  # a per-sample function is unchanged by the grouping
    torch.testing.assert_close(grouped(lin, x[:5], 3, strided=True), lin(x[:5]))


# ------------------------------------------------------------------ 1 vs 2 processes
def _run(name: str, model: nn.Module, method: Method, v1: torch.Tensor, v2: torch.Tensor,
         world: int) -> dict[str, object]:
    """One SGD step of ``model`` (``method``, maybe DDP-wrapped) in eval mode (batch norm with
    running statistics, so every image's loss depends on that image only); numpy results."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    loss = model(v1, v2)
    loss.backward()
    grads = [p.grad.clone() for p in method.parameters() if p.requires_grad]
    opt.step()
    method.after_step(0, 10)
    mean = loss.detach().clone()
    if world > 1:
        dist.all_reduce(mean)
    state = {k: v.numpy().copy() for k, v in method.state_dict().items()}
    return {"loss": mean.item() / world, "grads": [g.numpy() for g in grads], "state": state}


def _worker(rank: int, world: int, port: int, out: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        v1, v2 = views()
        n = len(v1) // world
        rows = slice(rank * n, (rank + 1) * n)
        results = {}
        for name in METHODS:
            method = tiny(name).eval()
            ddp = nn.parallel.DistributedDataParallel(method)
            results[name] = _run(name, ddp, method, v1[rows], v2[rows], world)
        out.put((rank, results))
    except Exception:  # report instead of leaving the parent waiting on the queue
        out.put((rank, {"error": traceback.format_exc()}))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(free_port: Callable[[], int]) -> None:
    """Loss, gradients and the state after the step (weights, momentum encoders, MoCo's
    queue: every process's keys once, in rank order) equal one process's on the global batch."""
    world = 2
    ctx = mp.get_context("fork")  # children inherit the imports: much faster than spawn
    out, port = ctx.SimpleQueue(), free_port()
    procs = [ctx.Process(target=_worker, args=(rank, world, port, out)) for rank in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get() for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in range(world):
        assert "error" not in results[rank], results[rank].get("error")
    v1, v2 = views()
    for name in METHODS:
        method = tiny(name).eval()
        want = _run(name, method, method, v1, v2, 1)
        for rank in range(world):
            got = results[rank][name]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), name
            for g, w in zip(got["grads"], want["grads"], strict=True):
                torch.testing.assert_close(torch.from_numpy(g), torch.from_numpy(w),
                                           rtol=1e-4, atol=1e-6, msg=name)
            assert got["state"].keys() == want["state"].keys()
            for key, w in want["state"].items():
                torch.testing.assert_close(torch.from_numpy(got["state"][key]),
                                           torch.from_numpy(w), rtol=1e-4, atol=1e-6,
                                           msg=f"{name} {key}")
    queue = tiny("moco").eval()  # the queue after one step: the 8 keys of the global batch
    queue(v1, v2)
    keys = queue._keys
    ordered = results[1]["moco"]["state"]["queue.keys"]
    ptr = int(results[1]["moco"]["state"]["queue.ptr"])
    torch.testing.assert_close(torch.from_numpy(ordered[ptr - 8:ptr]), keys)


# ------------------------------------------------------------------ views, config, files
def test_byol_views_are_asymmetric_and_others_symmetric() -> None:
    first, second = METHODS["byol"].view_params
    assert (first["blur_p"], first["solarize_p"]) == (1.0, 0.0)
    assert (second["blur_p"], second["solarize_p"]) == (0.1, 0.2)
    augs = tiny("byol").augments(32)
    assert augs[0].solarize_p == 0.0 and augs[1].solarize_p == 0.2
    for name in ("simclr", "moco", "simsiam"):
        a, b = tiny(name).augments(32)
        assert a == b and a.solarize_p == 0.0


@pytest.mark.parametrize("name", list(METHODS))
def test_build_from_config_and_checkpoint_round_trip(name: str, tmp_path) -> None:
    cfg = apply(Config(), {"train.method": name, "model.width": 0.125, "model.proj_dim": 16,
                           "method.moco.queue_size": 32})
    torch.manual_seed(0)
    method = build_method(cfg)
    assert method.name == name and method.params is getattr(cfg.method, name)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    loss = method(*method.views(images, method.augments(32), torch.Generator().manual_seed(0)))
    loss.backward()
    method.after_step(0, 4)  # the momentum encoders and MoCo's queue move off their start
    path = str(tmp_path / "encoder.pt")
    wrapper = nn.Module()
    wrapper.module = method  # what DDP looks like: the method saves through its wrapper
    save_encoder(path, wrapper, cfg, meta={"epoch": 1})
    encoder = load_encoder(str(tmp_path))
    assert encoder.spec == method.encoder.spec and not encoder.training
    x = torch.randn(3, 3, 32, 32)
    method.eval()
    for feature in ("projection", "backbone"):
        torch.testing.assert_close(encoder.embed(x, feature), method.encoder.embed(x, feature))
    whole = load_method(path)
    assert type(whole) is type(method) and whole.spec == method.spec
    for key, value in method.state_dict().items():
        torch.testing.assert_close(whole.state_dict()[key], value, msg=key)


def test_bare_encoders_save_and_load_method_refuses_them(tmp_path) -> None:
    encoder = build_model("resnet10", width=0.125, proj_dim=8).eval()
    save_encoder(str(tmp_path / "e.pt"), encoder)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_encoder(str(tmp_path / "e.pt"))(x), encoder(x))
    with pytest.raises(SasRayError, match="holds no method"):
        load_method(str(tmp_path / "e.pt"))


def test_method_keys_live_in_their_own_section() -> None:
    cfg = apply(Config(), {"method": {"moco": {"queue_size": 64, "temperature": 0.1}}})
    assert (cfg.method.moco.queue_size, cfg.method.moco.temperature) == (64, 0.1)
    with pytest.raises(ConfigError, match=r"belongs to method moco; set method\.moco\.queue_size"):
        apply(Config(), {"method.simclr.queue_size": 64})
    with pytest.raises(ConfigError, match="belongs to method moco and byol"):
        apply(Config(), {"method": {"simsiam": {"tau_base": 0.9}}})
    with pytest.raises(ConfigError, match="must be >= 1"):
        apply(Config(), {"method.moco.queue_size": 0})
    with pytest.raises(ConfigError, match="simclr, moco, byol, simsiam"):
        apply(Config(), {"train.method": "dino"})
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["method"])) == set(METHODS)
    assert set(typing.get_type_hints(MethodConfig)) == set(METHODS)



def test_fingerprints_cover_the_trained_method_section_only() -> None:
    from sas_ray.config import method_settings
    from sas_ray.stages.sweep import train_settings

    base = Config()
    assert method_settings(base) == {"temperature": 0.5}
    other = apply(Config(), {"method.moco.queue_size": 8})  # not the method trained
    assert train_settings(other) == train_settings(base)
    moco = apply(Config(), {"train.method": "moco"})
    assert train_settings(moco) != train_settings(base)
    smaller = apply(Config(), {"train.method": "moco", "method.moco.queue_size": 8})
    assert train_settings(smaller) != train_settings(moco)
