"""Encoder checkpoints: one file holding the architecture, the weights and the config.

``save_encoder(path, model, cfg)`` writes ``{"format": "sas-ray-encoder", "spec": model.spec,
"state_dict": ..., "config": cfg.to_dict(), "meta": ...}`` (spec: arch, width, stem,
proj_hidden, proj_dim, image_size) with ``torch.save``, atomically: a reader never sees
half a file. ``load_encoder(path)`` accepts

- that file (local path or ``s3://`` URI),
- a directory holding it as ``encoder.pt`` (a Ray Train checkpoint or a run directory),
- a torchvision ResNet state dict (e.g. ``resnet18-f37072fd.pth``): the backbone gets the
  weights with the ImageNet stem; the projection head is freshly initialised, so use
  ``feature="backbone"`` with such an encoder.

and returns the :class:`~sas_ray.core.models.heads.SimCLR` model on the CPU in eval mode.
Only tensors and plain containers are unpickled (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import torch
from torch import nn

from sas_ray.config import Config
from sas_ray.core.models.backbones import ARCHS
from sas_ray.core.models.heads import SimCLR, build_model
from sas_ray.errors import SasRayError

ENCODER_FILE = "encoder.pt"
FORMAT = "sas-ray-encoder"


def _unwrap(model: nn.Module) -> SimCLR:
    """The SimCLR model inside a DDP wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, SimCLR):
        raise TypeError(f"expected a SimCLR model, got {type(inner).__name__}")
    return inner


def encoder_payload(model: nn.Module, cfg: Config | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`save_encoder` writes, as a dict (weights copied to the CPU)."""
    inner = _unwrap(model)
    return {
        "format": FORMAT,
        "version": 1,
        "spec": dict(inner.spec),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "config": cfg.to_dict() if cfg is not None else None,
        "meta": meta or {},
    }


def save_encoder(path: str, model: nn.Module, cfg: Config | None = None,
                 meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (a SimCLR model, possibly DDP-wrapped) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(encoder_payload(model, cfg, meta), buf)
    data = buf.getvalue()
    if path.startswith("s3://"):
        from sas_ray.io import storage  # pyarrow/s3fs only when writing to S3

        storage.write_bytes_atomic(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read(path: str) -> bytes:
    if path.startswith("s3://"):
        from sas_ray.io import storage

        if not storage.exists(path):
            raise SasRayError(f"checkpoint {path} does not exist; pass a sas-ray checkpoint "
                              f"file, a directory holding {ENCODER_FILE}, or torchvision weights")
        if not path.endswith((".pt", ".pth")) and storage.exists(storage.join(path, ENCODER_FILE)):
            path = storage.join(path, ENCODER_FILE)
        return storage.read_bytes(path)
    if os.path.isdir(path):
        path = os.path.join(path, ENCODER_FILE)
    if not os.path.isfile(path):
        raise SasRayError(f"checkpoint {path} does not exist; pass a sas-ray checkpoint file, "
                          f"a directory holding {ENCODER_FILE}, or torchvision weights")
    with open(path, "rb") as f:
        return f.read()


def _torchvision_arch(state: dict[str, torch.Tensor]) -> str:
    """Name the torchvision ResNet a state dict belongs to, from its block counts."""
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
              for i in range(1, 5)]
    bottleneck = any(".conv3." in k for k in state)
    for name, (block, layers) in ARCHS.items():
        if layers == blocks and (block.expansion == 4) == bottleneck:
            return name
    raise SasRayError(f"torchvision weights with blocks {blocks} match none of "
                      f"{', '.join(ARCHS)}; pass weights of one of those ResNets")


def _from_torchvision(state: dict[str, torch.Tensor], arch: str | None) -> SimCLR:
    arch = arch or _torchvision_arch(state)
    model = build_model(arch, width=1.0, stem="imagenet", image_size=224)
    backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.backbone.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise SasRayError(f"weights do not fit a torchvision {arch} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); pass weights of a torchvision ResNet")
    return model


def load_encoder(path: str, arch: str | None = None) -> SimCLR:
    """The SimCLR model stored at ``path`` (see the module docstring), CPU, eval mode.

    ``arch`` names the ResNet of a torchvision weights file when it cannot be inferred.
    """
    data = _read(path)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise SasRayError(f"checkpoint {path} is not a readable PyTorch file "
                          f"({type(err).__name__}); pass a sas-ray checkpoint or torchvision "
                          "weights, or retrain") from err
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        spec = payload["spec"]
        model = build_model(**spec)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise SasRayError(f"checkpoint {path} has weights that do not match its "
                              f"architecture {spec}; the file is damaged, retrain") from err
    elif isinstance(payload, dict) and payload and all(
            isinstance(v, torch.Tensor) for v in payload.values()):
        model = _from_torchvision(payload, arch)
    else:
        raise SasRayError(f"checkpoint {path} is neither a sas-ray encoder nor a torchvision "
                          "ResNet state dict; pass one of those")
    return model.eval()
