"""``timm:<name>``: any timm model (e.g. ``timm:vit_small_patch14_dinov2.lvd142m``), without
its classifier (``pip install sas-ray[timm]``).

The model is ``timm.create_model(name, pretrained=False, num_classes=0)``: its forward gives
the pooled pre-logits features ``(N, num_features)`` (DINOv2: the normalised class token).
The weights file (a timm/Hugging Face ``model.safetensors`` or ``pytorch_model.bin``, or a
timm training checkpoint) loads strictly once the classifier's keys (``pretrained_cfg
["classifier"]``, e.g. ``head.*``) are dropped. Input size and mean/std are timm's data config
of the model (``timm.data.resolve_model_data_config``).
"""

from __future__ import annotations

from sas_ray.core.data.files import Files
from sas_ray.core.models.encoders.base import pretrained_encoder
from sas_ray.core.models.encoders.weights import downloaded, fit, read_weights, require, state_dict
from sas_ray.core.models.heads import Encoder
from sas_ray.errors import SasRayError

FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


def load(arch: str, weights: str | None, files: Files, allow_download: bool) -> Encoder:
    """``timm:<arch>`` (module docstring), CPU."""
    timm = require("timm", "timm")
    if not timm.is_model(arch):
        raise SasRayError(f"timm has no model {arch!r}; see timm.list_models() (a pretrained "
                          "tag may follow the name: vit_small_patch14_dinov2.lvd142m)")
    name = f"timm:{arch}"
    read = None
    if weights is None:
        model = downloaded(name, lambda: timm.create_model(arch, pretrained=True, num_classes=0))
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        expected = f"a timm checkpoint of {arch} (.safetensors or .pth)"
        read = read_weights(weights, files, FILE_NAMES, expected)
        state = state_dict(read, expected)
        classifier = model.pretrained_cfg.get("classifier") or ""
        heads = classifier if isinstance(classifier, list | tuple) else [classifier]
        state = {k: v for k, v in state.items()
                 if not any(h and (k == h or k.startswith(h + ".")) for h in heads)}
        fit(model, state, read.path, name)
    data = timm.data.resolve_model_data_config(model)
    return pretrained_encoder(model, name, data["input_size"][-1], data["mean"], data["std"],
                              read)
