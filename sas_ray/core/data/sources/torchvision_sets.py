"""torchvision data sets by class name (``torchvision:NAME[:ROOT]``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sas_ray.config import DataConfig
from sas_ray.core.data.files import Files
from sas_ray.core.data.sources import Item, Source, register_source
from sas_ray.errors import SasRayError

TORCHVISION_SPLITS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    **{name: [("train", {"train": True}), ("test", {"train": False})]
       for name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST")},
    "STL10": [("train", {"split": "train"}), ("test", {"split": "test"}),
              ("unlabeled", {"split": "unlabeled"})],
}


def _torchvision_arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W[, 3])`` uint8 pixels and ``(N,)`` labels (-1 = none) of a torchvision set."""
    data = np.asarray(ds.data)
    if data.ndim == 4 and data.shape[1] == 3:  # STL10 stores (N, 3, H, W)
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return np.ascontiguousarray(data, dtype=np.uint8), np.asarray(labels).astype(np.int64)


@register_source("torchvision")
def torchvision_spec(arg: str, data: DataConfig, seed: int, files: Files) -> Source:
    """``NAME[:ROOT]`` (ROOT default ``data``)."""
    name, _, root = arg.partition(":")
    return torchvision_source(name, root or "data", data.download)


def torchvision_source(name: str, root: str, download: bool) -> Source:
    """A torchvision data set by class name, loaded from ``root`` (downloaded only if asked)."""
    if name not in TORCHVISION_SPLITS:
        raise SasRayError(f"unknown torchvision data set '{name}'; use one of "
                          f"{', '.join(TORCHVISION_SPLITS)}")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)
    items, class_names, shape = [], [], None
    for split, kwargs in TORCHVISION_SPLITS[name]:
        try:
            ds = cls(root, download=download, **kwargs)
        except Exception as err:
            if download:
                raise SasRayError(f"downloading torchvision {name} into {root} failed "
                                  f"({type(err).__name__}: {err}); check the network, or put "
                                  f"the files under {root}") from err
            raise SasRayError(f"torchvision {name} ({split}) is not under {root}; pass "
                              f"--data.download true to fetch it, or torchvision:{name}:ROOT "
                              "pointing at a copy") from err
        pixels, labels = _torchvision_arrays(ds)
        class_names = list(ds.classes)
        shape = pixels.shape[1:]
        items += [Item(f"{split}/{i:06d}", split, None if y < 0 else int(y), pixels[i])
                  for i, y in enumerate(labels)]
    return Source(f"torchvision:{name}", "pixels", class_names, items, pixel_shape=shape)
