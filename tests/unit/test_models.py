"""Backbones, heads from blocks, optimisers (LARS exclusions) and encoder checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sas_ray.config import Config, TrainConfig
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.models import build_model
from sas_ray.core.models.backbones import build_backbone
from sas_ray.core.models.checkpoint import load_encoder, save_encoder
from sas_ray.core.models.heads import ProjectionHead, encoder_from_spec, mlp
from sas_ray.core.models.optim import LARS, build_optimizer, lr_factor, param_groups
from sas_ray.errors import SasRayError


@pytest.mark.parametrize(("arch", "width", "dim", "convs"), [
    ("resnet10", 0.25, 128, 1 + 4 * 2 + 3),  # stem + 2 convs per block + 3 downsamples
    ("resnet18", 0.5, 256, 1 + 8 * 2 + 3),
    ("resnet50", 0.125, 2048 // 8, 1 + 16 * 3 + 4),
])
def test_backbone_shapes_width_and_depth(arch: str, width: float, dim: int, convs: int) -> None:
    net = build_backbone(arch, width=width, stem="cifar").eval()
    assert net.feature_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == convs
    assert net.conv1.out_channels == round(64 * width)


def test_cifar_stem_keeps_resolution_imagenet_stem_reduces_it() -> None:
    cifar = build_backbone("resnet10", width=0.25, stem="cifar")
    imagenet = build_backbone("resnet10", width=0.25, stem="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    # layer1 output: 32x32 with the CIFAR stem, 8x8 after 7x7/2 conv + max-pool
    assert cifar.layer1(cifar.maxpool(cifar.relu(cifar.bn1(cifar.conv1(x))))).shape[-1] == 32
    assert imagenet.layer1(imagenet.maxpool(imagenet.relu(imagenet.bn1(imagenet.conv1(x))))
                           ).shape[-1] == 8


def test_wider_network_has_more_parameters() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(build_backbone("resnet18", 0.25)) < count(build_backbone("resnet18", 0.5))


def test_unknown_arch_is_a_clear_error() -> None:
    with pytest.raises(SasRayError, match="resnet10, resnet18"):
        build_backbone("vgg16")


def test_projection_head_layout_and_output() -> None:
    head = ProjectionHead(mlp([64, 32, 16], "bn", "bn-plain"))  # the SimCLR head
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert not head[4].affine and head[1].affine
    assert head[0].bias is None and head[3].bias is None  # a batch norm follows each
    z = head.train()(torch.randn(8, 64))
    assert z.shape == (8, 16)
    # the affine-free final BN standardises each output dimension over the batch
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_heads_from_blocks() -> None:
    assert mlp([8, 6, 6, 4], "bn", "none") == [(8, 6, "bn", True), (6, 6, "bn", True),
                                               (6, 4, "none", False)]
    moco = ProjectionHead(mlp([8, 6, 4], "none", "none"))  # Linear - ReLU - Linear, biases
    assert [type(m) for m in moco] == [nn.Linear, nn.ReLU, nn.Linear]
    assert moco[0].bias is not None and moco[2].bias is not None
    with pytest.raises(SasRayError, match="bn, bn-plain or none"):
        ProjectionHead([(4, 4, "ln", False)])  # type: ignore[list-item]


def test_simclr_model_embed_features() -> None:
    cfg = Config()
    cfg.model.arch, cfg.model.width, cfg.model.proj_dim = "resnet10", 0.25, 32
    model = model_from_config(cfg).eval()
    x = torch.randn(3, 3, 32, 32)
    assert model.embed(x, "backbone").shape == (3, 128)
    assert model.embed(x, "projection").shape == (3, 32)
    assert model.spec["stem"] == "cifar"
    assert model.spec["head"] == [[128, 128, "bn", True], [128, 32, "bn-plain", False]]
    rebuilt = encoder_from_spec(model.spec)
    assert rebuilt.spec == model.spec
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(SasRayError, match="projection"):
        model.embed(x, "logits")  # type: ignore[arg-type]


def test_param_groups_put_bn_and_bias_apart() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    decay, plain = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[0].bias), id(model[1].weight),
                                                  id(model[1].bias)}
    assert plain["weight_decay"] == 0.0 and not plain["lars"] and decay["lars"]


def test_lars_adapts_weights_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = TrainConfig(optimizer="lars", lr=0.5, momentum=0.0, weight_decay=0.01)
    opt, _ = build_optimizer(model, cfg, steps_per_epoch=10)
    assert isinstance(opt, LARS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 2.0)
    opt.step()
    eta, lr = 0.02, opt.param_groups[0]["lr"]
    w0 = before["0.weight"]
    d = torch.full_like(w0, 2.0) + 0.01 * w0
    expected_w = w0 - lr * eta * w0.norm() / d.norm() * d
    torch.testing.assert_close(model[0].weight.detach(), expected_w)
    for name in ("0.bias", "1.weight", "1.bias"):  # plain SGD step, no decay, no trust ratio
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(),
                                   before[name] - lr * 2.0)


def test_schedules() -> None:
    assert [lr_factor(s, 2, 10, cosine=True) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(10, 2, 10, cosine=True) == pytest.approx(0.0)
    assert lr_factor(6, 2, 10, cosine=True) == pytest.approx(0.5)
    assert lr_factor(9, 0, 10, cosine=False) == 1.0
    model = nn.Linear(2, 2)
    opt, sched = build_optimizer(model, TrainConfig(optimizer="sgd", lr=1.0, epochs=2,
                                                    warmup_epochs=1), steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[7] < 0.2
    opt, sched = build_optimizer(model, TrainConfig(optimizer="adam"), steps_per_epoch=4)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    with pytest.raises(SasRayError, match="adam, sgd or lars"):
        build_optimizer(model, TrainConfig(optimizer="rmsprop"), steps_per_epoch=1)


def test_checkpoint_roundtrip(tmp_path) -> None:
    cfg = Config()
    model = build_model("resnet10", width=0.25, proj_dim=16).eval()
    path = str(tmp_path / "enc" / "encoder.pt")
    save_encoder(path, model, cfg, meta={"epoch": 3})
    for where in (path, str(tmp_path / "enc")):  # the file or a directory holding it
        loaded = load_encoder(where)
        assert loaded.spec == model.spec and not loaded.training
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(loaded(x), model(x))
    assert [p.name for p in (tmp_path / "enc").iterdir()] == ["encoder.pt"]  # no temp files


def test_version_1_checkpoints_still_load(tmp_path) -> None:
    """Files written before the method registry: SimCLR spec, the encoder's weights alone."""
    model = build_model("resnet10", width=0.25, proj_dim=16).eval()
    spec = {"arch": "resnet10", "width": 0.25, "stem": "cifar", "proj_hidden": 128,
            "proj_dim": 16, "image_size": 32}
    torch.save({"format": "sas-ray-encoder", "version": 1, "spec": spec,
                "state_dict": model.state_dict(), "config": None, "meta": {}},
               tmp_path / "old.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_encoder(str(tmp_path / "old.pt"))(x), model(x))


def test_torchvision_weights_load_into_the_backbone(tmp_path) -> None:
    from torchvision.models import resnet18

    tv = resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = load_encoder(str(path))
    assert model.spec["arch"] == "resnet18" and model.spec["stem"] == "imagenet"
    x = torch.randn(1, 3, 64, 64)
    tv.fc = nn.Identity()
    torch.testing.assert_close(model.embed(x, "backbone"), tv(x))


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(SasRayError, match="does not exist"):
        load_encoder(str(tmp_path / "nope.pt"))
    with pytest.raises(SasRayError, match="does not exist"):
        load_encoder(str(tmp_path))  # a directory without encoder.pt
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(SasRayError, match="not a readable PyTorch file"):
        load_encoder(str(bad))
    model = build_model("resnet10", width=0.25)
    good = tmp_path / "good.pt"
    save_encoder(str(good), model)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(SasRayError, match="not a readable PyTorch file"):
        load_encoder(str(tmp_path / "cut.pt"))
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(SasRayError, match="neither a sas-ray encoder"):
        load_encoder(str(tmp_path / "other.pt"))
