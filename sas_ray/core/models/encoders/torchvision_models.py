"""``torchvision:<name>``: any torchvision classification model, without its classifier.

The model is ``torchvision.models.get_model(name)`` with the whole state dict of the weights
file loaded strictly (a torchvision ``*.pth`` file, or any file of the same keys); then the
last ``nn.Linear`` in its module tree (the logits layer: ResNet's ``fc``, ViT's
``heads.head``, ConvNeXt's ``classifier.2``, ...) becomes the identity, so the encoder gives
the features that layer reads, ``(N, in_features)``. Input size and mean/std are those of the
name's default torchvision weights (their ``transforms()``: crop size, ImageNet mean/std).
"""

from __future__ import annotations

import difflib

from torch import nn

from sas_ray.core.data.files import Files
from sas_ray.core.models.encoders.base import pretrained_encoder
from sas_ray.core.models.encoders.weights import downloaded, fit, read_weights, state_dict
from sas_ray.core.models.heads import Encoder
from sas_ray.errors import SasRayError


def _names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def drop_classifier(model: nn.Module, name: str) -> int:
    """Replace the last ``nn.Linear`` of ``model`` by the identity; -> its ``in_features``."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SasRayError(f"torchvision:{name} has no linear classifier to remove; use a model "
                          "with one (resnet, vit, convnext, efficientnet, ...)")
    path, layer = linears[-1]
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return layer.in_features


def load(arch: str, weights: str | None, files: Files, allow_download: bool) -> Encoder:
    """``torchvision:<arch>`` (module docstring), CPU."""
    import torchvision

    names = _names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise SasRayError(f"torchvision has no classification model {arch!r}"
                          f"{'; did you mean ' + ', '.join(close) + '?' if close else ''}; "
                          "see torchvision.models.list_models()")
    default = torchvision.models.get_model_weights(arch).DEFAULT
    expected = f"the state dict of torchvision's {arch} (e.g. its .pth file)"
    read = None
    if weights is None:
        model = downloaded(f"torchvision:{arch}",
                           lambda: torchvision.models.get_model(arch, weights=default))
    else:
        model = torchvision.models.get_model(arch, weights=None)
        read = read_weights(weights, files, [], expected)
        fit(model, state_dict(read, expected), read.path, f"torchvision:{arch}")
    drop_classifier(model, arch)
    transform = default.transforms()
    return pretrained_encoder(model, f"torchvision:{arch}", transform.crop_size[0],
                              transform.mean, transform.std, read)
