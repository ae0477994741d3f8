"""``open_clip:<arch>``: an open_clip CLIP's image tower as an encoder, its text tower for
zero-shot latent classes (``pip install sas-ray[clip]``).

The model is ``open_clip.create_model(arch)`` (a built-in config, e.g. ``ViT-B-32``), or, for
a weights directory holding ``open_clip_config.json`` (the Hugging Face layout of open_clip
models: that file plus ``open_clip_model.safetensors``), the config in that file. The weights
(a state dict of the whole CLIP, ``.safetensors``/``.pt``/``.bin``, or OpenAI's TorchScript
``.pt``) load strictly after open_clip's own conversions (old text layouts, position
embeddings of another size). Preprocessing: the model's ``preprocess_cfg`` (size, mean, std;
OpenAI's mean/std by default).

Encoder: ``backbone`` = ``visual`` with a ViT's ``proj`` taken out (the pooled token, width
``d``), ``head`` = that projection (``(N, d) -> (N, embed_dim)``, the space the text tower
shares); a tower without ``proj`` (ModifiedResNet, timm towers) is the backbone whole, with the
identity as head. With ``weights=None`` and ``allow_download``, ``arch`` may name a pretrained
tag, ``ViT-B-32@openai`` (default: the first tag open_clip lists for the arch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sas_ray.core.data.files import Files
from sas_ray.core.models.encoders.base import LinearProjection, pretrained_encoder
from sas_ray.core.models.encoders.weights import (
    Weights,
    downloaded,
    fit,
    read_weights,
    require,
    state_dict,
)
from sas_ray.core.models.heads import Encoder
from sas_ray.errors import SasRayError

CONFIG_FILE = "open_clip_config.json"
FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")


def _config(weights: str, files: Files) -> dict[str, Any] | None:
    """The ``open_clip_config.json`` of a weights directory, or None."""
    path = f"{weights.rstrip('/')}/{CONFIG_FILE}"
    if weights.endswith(FILE_NAMES) or not files.exists(path):
        return None
    try:
        return json.loads(files.read_bytes(path))
    except ValueError as err:
        raise SasRayError(f"{path} is not valid JSON ({err}); fix or remove it") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs on the root logger that a model it builds has random weights (they are
    loaded next): silence warnings meanwhile."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _create(arch: str, config: dict[str, Any] | None) -> nn.Module:
    """A randomly initialised CLIP of the built-in ``arch`` or of ``config``."""
    open_clip = require("open_clip", "clip")
    if config is None:
        if open_clip.get_model_config(arch) is None:
            raise SasRayError(f"open_clip has no model config {arch!r}; use one of "
                              "open_clip.list_models() (e.g. ViT-B-32) or a weights directory "
                              f"with {CONFIG_FILE}")
        with _quiet():
            return open_clip.create_model(arch, pretrained=None, load_weights=False)
    if "model_cfg" not in config:
        raise SasRayError(f"{CONFIG_FILE} has no 'model_cfg'; pass an open_clip model directory")
    with tempfile.TemporaryDirectory(prefix="sas-ray-clip-") as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f)
        with _quiet():
            return open_clip.create_model(f"local-dir:{tmp}", load_weights=False)


def _fit(model: nn.Module, read: Weights, name: str) -> None:
    """Load the CLIP weights in ``read`` into ``model`` (open_clip's conversions, strict)."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed

    expected = f"the weights of the whole {name} (an open_clip or OpenAI CLIP checkpoint)"
    state = state_dict(read, expected)
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's extras
        state.pop(key, None)
    try:
        state = convert_state_dict(model, state)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(state, model)
    except Exception as err:  # a conversion that meets a foreign file
        raise SasRayError(f"weights {read.path} do not fit {name} ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]}); pass {expected}") from None
    fit(model, state, read.path, name)


def load_clip(arch: str, weights: str | None, files: Files,
              allow_download: bool) -> tuple[nn.Module, Weights | None]:
    """The whole CLIP (both towers), eval mode, CPU, and the weights it was read from."""
    name = f"open_clip:{arch}"
    if weights is None:
        open_clip = require("open_clip", "clip")
        model_name, _, tag = arch.partition("@")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if not (tag or tags):
            raise SasRayError(f"open_clip lists no pretrained weights for {model_name!r}; pass "
                              "--proxy.weights PATH")
        model = downloaded(name, lambda: open_clip.create_model(model_name,
                                                                pretrained=tag or tags[0]))
        return model.eval(), None
    config = _config(weights, files)
    model = _create(arch, config)
    read = read_weights(weights, files, FILE_NAMES, f"the weights of {name}")
    _fit(model, read, name)
    return model.eval(), read


def image_encoder(model: nn.Module, name: str, read: Weights | None) -> Encoder:
    """The image tower of a CLIP ``model`` as an :class:`Encoder` (module docstring)."""
    visual = model.visual
    head = None
    if isinstance(getattr(visual, "proj", None), nn.Parameter):
        head = LinearProjection(visual.proj)
        visual.proj = None
    pp = visual.preprocess_cfg
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][-1]
    return pretrained_encoder(visual, name, size, pp["mean"], pp["std"], read, head=head)


def load(arch: str, weights: str | None, files: Files, allow_download: bool) -> Encoder:
    """``open_clip:<arch>``'s image tower (module docstring), CPU."""
    model, read = load_clip(arch, weights, files, allow_download)
    return image_encoder(model, f"open_clip:{arch}", read)


@dataclass
class TextTower:
    """A CLIP's text tower: ``encode(prompts)`` -> ``(P, embed_dim)`` text embeddings in the
    space of the image tower's projections (not normalised)."""

    model: nn.Module
    tokenize: Callable[[list[str]], torch.Tensor]
    device: torch.device

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(prompts).to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.model.encode_text(tokens).float()


def load_text(arch: str, weights: str | None, files: Files, allow_download: bool,
              device: str = "cpu") -> TextTower:
    """The text tower of ``open_clip:<arch>`` (the same weights as :func:`load`) on ``device``,
    with the arch's tokenizer (CLIP's BPE, shipped with open_clip; Hugging Face tokenizers are
    fetched only when ``allow_download``)."""
    open_clip = require("open_clip", "clip")
    model, _ = load_clip(arch, weights, files, allow_download)
    text_cfg = (_config(weights, files) or {}).get("model_cfg", {}).get("text_cfg") \
        if weights is not None else None
    text_cfg = text_cfg or (open_clip.get_model_config(arch.partition("@")[0]) or {}).get(
        "text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") and not allow_download:
        raise SasRayError(f"open_clip:{arch} uses the Hugging Face tokenizer "
                          f"{text_cfg['hf_tokenizer_name']}, which would be downloaded; set "
                          "--proxy.allow_download true (once; it is cached)")
    if text_cfg.get("hf_tokenizer_name"):
        tokenizer = downloaded(f"the tokenizer of open_clip:{arch}", lambda: open_clip.
                               HFTokenizer(text_cfg["hf_tokenizer_name"],
                                           context_length=text_cfg.get("context_length", 77)))
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    model.visual = None  # the image tower is not needed here
    dev = torch.device(device)
    return TextTower(model.to(dev), tokenizer, dev)
