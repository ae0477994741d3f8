"""Checkpoints: one file holding the method, the architecture, the weights and the config.

``save_encoder(path, model, cfg)`` writes, with ``torch.save`` and atomically (a reader never
sees half a file; local files, :func:`encoder_bytes` for elsewhere)::

    {"format": "sas-ray-encoder", "version": 2,
     "spec": the encoder's spec (arch, width, stem, image_size, head blocks),
     "method": the method's spec ({"name", "params"}), or None for a bare encoder,
     "state_dict": the method's weights and buffers (momentum encoder, queue, predictor;
                   the encoder's under "encoder."), "config": cfg.to_dict(), "meta": ...}

``model`` is a :class:`~sas_ray.core.methods.base.Method` (possibly DDP-wrapped) or a bare
:class:`~sas_ray.core.models.heads.Encoder`. ``load_encoder(path)`` accepts

- that file of any method, or a version-1 file (SimCLR only,
  spec with proj_hidden/proj_dim, the encoder's weights unprefixed),
- a directory holding it as ``encoder.pt`` (a Ray Train checkpoint or a run directory),
- a torchvision ResNet state dict (e.g. ``resnet18-f37072fd.pth``): the backbone gets the
  weights with the ImageNet stem; the projection head is freshly initialised, so use
  ``feature="backbone"`` with such an encoder.

and returns the :class:`~sas_ray.core.models.heads.Encoder` on the CPU in eval mode (the whole
method: :func:`sas_ray.core.methods.load_method`). Only tensors and plain containers are
unpickled (``torch.load(weights_only=True)``). Files are read through a
:class:`~sas_ray.core.data.files.Files` (local paths by default; callers in the stages pass the
storage layer's ``FILES``, which reaches ``s3://``): the core does not import the I/O layer.
Other pretrained encoders (torchvision, timm, open_clip): :mod:`sas_ray.core.models.encoders`.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import torch
from torch import nn

from sas_ray.config import Config
from sas_ray.core.data.files import LOCAL_FILES, Files
from sas_ray.core.models.backbones import ARCHS
from sas_ray.core.models.heads import Encoder, build_model, encoder_from_spec
from sas_ray.errors import SasRayError

ENCODER_FILE = "encoder.pt"
FORMAT = "sas-ray-encoder"


def _unwrap(model: nn.Module) -> nn.Module:
    """The method or encoder inside a DDP wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    if not isinstance(getattr(inner, "encoder", inner), Encoder):
        raise TypeError(f"expected a method or an Encoder, got {type(inner).__name__}")
    return inner


def encoder_payload(model: nn.Module, cfg: Config | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`save_encoder` writes, as a dict (weights copied to the CPU)."""
    inner = _unwrap(model)
    bare = isinstance(inner, Encoder)
    state = inner.state_dict(prefix="encoder." if bare else "")
    return {
        "format": FORMAT,
        "version": 2,
        "spec": dict(inner.spec if bare else inner.encoder.spec),
        "method": None if bare else inner.spec,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "config": cfg.to_dict() if cfg is not None else None,
        "meta": meta or {},
    }


def encoder_bytes(model: nn.Module, cfg: Config | None = None,
                  meta: dict[str, Any] | None = None) -> bytes:
    """The file :func:`save_encoder` writes, as bytes (to store elsewhere, e.g. on S3)."""
    buf = io.BytesIO()
    torch.save(encoder_payload(model, cfg, meta), buf)
    return buf.getvalue()


def save_encoder(path: str, model: nn.Module, cfg: Config | None = None,
                 meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (a method, possibly DDP-wrapped, or an encoder) to the local ``path``
    atomically (for ``s3://``: the storage layer's ``write_bytes_atomic`` of
    :func:`encoder_bytes`)."""
    if "://" in path:
        raise SasRayError(f"save_encoder writes local files, not {path}; write "
                          "encoder_bytes(...) through sas_ray.io.storage.write_bytes_atomic")
    data = encoder_bytes(model, cfg, meta)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read(path: str, files: Files) -> bytes:
    """The checkpoint file's bytes: ``path``, or ``path/encoder.pt`` for a directory."""
    inner = f"{path.rstrip('/')}/{ENCODER_FILE}"
    if not path.endswith((".pt", ".pth")) and files.exists(inner):
        path = inner
    if not files.exists(path) or os.path.isdir(path):
        raise SasRayError(f"checkpoint {path} does not exist; pass a sas-ray checkpoint file, "
                          f"a directory holding {ENCODER_FILE}, or torchvision weights")
    return files.read_bytes(path)


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


def _from_torchvision(state: dict[str, torch.Tensor], arch: str | None) -> Encoder:
    arch = arch or _torchvision_arch(state)
    model = build_model(arch, width=1.0, stem="imagenet", image_size=224)
    backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.backbone.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise SasRayError(f"weights do not fit a torchvision {arch} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); pass weights of a torchvision ResNet")
    return model


def read_checkpoint(path: str, files: Files = LOCAL_FILES) -> Any:
    """The unpickled contents of the file at ``path`` (module docstring), any format, read
    through ``files`` (local paths by default; the storage layer's ``FILES`` reaches S3)."""
    data = _read(path, files)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise SasRayError(f"checkpoint {path} is not a readable PyTorch file "
                          f"({type(err).__name__}); pass a sas-ray checkpoint or torchvision "
                          "weights, or retrain") from err


def is_sas_ray(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def _encoder_weights(payload: dict[str, Any]) -> tuple[Encoder, dict[str, torch.Tensor]]:
    """A fresh encoder of a sas-ray payload's spec and its weights (unprefixed)."""
    spec = payload["spec"]
    if payload.get("version", 1) == 1:  # SimCLR, weights of the encoder alone
        return build_model(**spec), payload["state_dict"]
    prefix = "encoder."
    return encoder_from_spec(spec), {k[len(prefix):]: v for k, v in
                                     payload["state_dict"].items() if k.startswith(prefix)}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str,
               spec: dict[str, Any]) -> None:
    """``model.load_state_dict(state)``, a damaged file as a clear error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise SasRayError(f"checkpoint {path} has weights that do not match its "
                          f"architecture {spec}; the file is damaged, retrain") from err


def load_encoder(path: str, arch: str | None = None, files: Files = LOCAL_FILES) -> Encoder:
    """The encoder stored at ``path`` (see the module docstring), CPU, eval mode, read through
    ``files`` (:func:`read_checkpoint`).

    ``arch`` names the ResNet of a torchvision weights file when it cannot be inferred.
    """
    payload = read_checkpoint(path, files)
    if is_sas_ray(payload):
        model, state = _encoder_weights(payload)
        load_state(model, state, path, payload["spec"])
    elif isinstance(payload, dict) and payload and all(
            isinstance(v, torch.Tensor) for v in payload.values()):
        model = _from_torchvision(payload, arch)
    else:
        raise SasRayError(f"checkpoint {path} is neither a sas-ray encoder nor a torchvision "
                          "ResNet state dict; pass one of those")
    return model.eval()
