"""Weight files of pretrained encoders: find, read, hash and fit them, each failure one line.

A weights location is a file or a directory (local or, through a
:class:`~sas_ray.core.data.files.Files` that reaches it, ``s3://``):

- ``*.safetensors``: read with ``safetensors.torch.load``;
- anything else (``.pt``, ``.pth``, ``.bin``, ``.ckpt``): ``torch.load(weights_only=True)``
  (only tensors and plain containers are unpickled), or a TorchScript archive (OpenAI's
  original CLIP files) whose ``state_dict()`` is taken;
- a directory: the first of the kind's file names that it holds (e.g. open_clip's
  ``open_clip_model.safetensors``, timm's ``model.safetensors``), else its one weights file.

A checkpoint dict is unwrapped to its state dict (``state_dict``, ``model`` or
``state_dict_ema`` key) and a DDP ``module.`` prefix is dropped. The fingerprint of weights is
the sha256 of the bytes read (:attr:`Weights.sha256`).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from sas_ray.core.data.files import Files
from sas_ray.errors import SasRayError

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema")


def require(module: str, extra: str) -> ModuleType:
    """``import module``; when it is missing, one line naming the pip command of the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SasRayError(f"{module} is not installed ({err}); install it with "
                          f"`pip install sas-ray[{extra}]`") from None


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def _is_dir(uri: str, files: Files) -> bool:
    """Whether ``uri`` is a directory (a URI: something lists below it that is not ``uri``)."""
    if "://" not in uri:
        return os.path.isdir(uri)
    if uri.endswith(SUFFIXES):
        return False
    try:
        return any(f != uri for f in files.list_files(uri))
    except (OSError, NotADirectoryError, SasRayError):
        return False


@dataclass(frozen=True)
class Weights:
    """The bytes of one weights file and where they came from."""

    path: str  # the file read (inside the directory the user named, if any)
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def find_file(uri: str, files: Files, names: Sequence[str], expected: str) -> str:
    """The weights file at ``uri``: ``uri`` itself, or in a directory the first of ``names``
    it holds, else its only file with a weights suffix."""
    if not _is_dir(uri, files):
        if not files.exists(uri):
            raise SasRayError(f"weights {uri} do not exist; pass {expected}")
        return uri
    for name in names:
        if files.exists(_join(uri, name)):
            return _join(uri, name)
    found = [f for f in files.list_files(uri) if f.endswith(SUFFIXES)]
    if len(found) != 1:
        what = "no weights file" if not found else f"{len(found)} weights files"
        raise SasRayError(f"directory {uri} holds {what} (looked for "
                          f"{', '.join(names) or 'one ' + '/'.join(SUFFIXES)}); pass {expected}")
    return found[0]


def read_weights(uri: str, files: Files, names: Sequence[str], expected: str) -> Weights:
    """The bytes of the weights file at ``uri`` (:func:`find_file`)."""
    path = find_file(uri, files, names, expected)
    return Weights(path, files.read_bytes(path))


def _unwrap(obj: Any) -> Any:
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    return obj


def state_dict(weights: Weights, expected: str) -> dict[str, torch.Tensor]:
    """The state dict in ``weights`` (module docstring); anything else is one error line."""
    try:
        if weights.path.endswith(".safetensors"):
            from safetensors.torch import load

            obj: Any = load(weights.data)
        elif _is_torchscript(weights.data):
            obj = torch.jit.load(io.BytesIO(weights.data), map_location="cpu").state_dict()
        else:
            obj = torch.load(io.BytesIO(weights.data), map_location="cpu", weights_only=True)
    except Exception as err:
        kind = "safetensors" if weights.path.endswith(".safetensors") else "PyTorch"
        raise SasRayError(f"weights {weights.path} are not a readable {kind} file "
                          f"({type(err).__name__}); pass {expected}") from None
    obj = _unwrap(obj)
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise SasRayError(f"weights {weights.path} hold no state dict (a mapping of names to "
                          f"tensors, got {type(obj).__name__}); pass {expected}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip whose members include ``<root>/code/``."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any("/code/" in n for n in z.namelist()[:64])
    except zipfile.BadZipFile:
        return False


def _examples(keys: Sequence[str]) -> str:
    return ", ".join(list(keys)[:3]) + (", ..." if len(keys) > 3 else "")


def fit(model: nn.Module, state: dict[str, torch.Tensor], path: str, expected: str) -> None:
    """``model.load_state_dict(state)`` (strict); missing, unexpected or misshapen keys are
    one error line naming ``path`` and ``expected``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {what} ({_examples(keys)})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("keys of another shape", shapes)) if keys]
    if problems:
        raise SasRayError(f"weights {path} do not fit {expected}: {'; '.join(problems)}; pass "
                          "weights of that architecture")
    model.load_state_dict(state)


def downloaded(what: str, load: Any) -> Any:
    """``load()`` (a library fetching pretrained weights); a failure is one line."""
    try:
        return load()
    except Exception as err:
        text = " ".join(str(err).split())[:200]
        raise SasRayError(f"downloading the pretrained weights of {what} failed "
                          f"({type(err).__name__}: {text}); offline, download them elsewhere "
                          "and pass --proxy.weights PATH") from None
