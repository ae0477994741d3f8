"""Heads built from blocks, and the encoder: a backbone with its projection head.

A head is a stack of blocks, in the layout of lightly's ``ProjectionHead(blocks)``; the block
``(in_dim, out_dim, norm, relu)`` is::

    Linear(in_dim, out_dim, bias = norm == "none") -> norm -> ReLU (if relu)

with ``norm`` one of "bn" (``BatchNorm1d``), "bn-plain" (``BatchNorm1d(affine=False)``) or
"none"; a linear layer followed by a batch norm needs no bias. :func:`mlp` writes the blocks
of the usual heads: ``mlp([d, h, o], "bn", "bn-plain")`` is the SimCLR projection head of the
SAS reference code, ``z = BN_noaffine(W2 · ReLU(BN(W1 · h)))``, ``h: (N, d) -> z: (N, o)``.

An :class:`Encoder` maps images ``(N, 3, H, W)`` to projections ``(N, out_dim)``; its ``spec``
(arch, width, stem, image_size, head: the blocks) rebuilds it (:func:`encoder_from_spec`), so
a checkpoint of any method loads as an encoder without knowing the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from sas_ray.core.data.augment import IMAGENET_MEAN, IMAGENET_STD
from sas_ray.core.models.backbones import build_backbone, resolve_stem
from sas_ray.errors import SasRayError

Feature = Literal["projection", "backbone"]
Norm = Literal["bn", "bn-plain", "none"]
Block = tuple[int, int, Norm, bool]  # (in_dim, out_dim, norm, relu)
# (backbone feature dim d, hidden width or None for d, output dim) -> the projection head
Projector = Callable[[int, int | None, int], list[Block]]


def mlp(dims: Sequence[int], hidden_norm: Norm, out_norm: Norm) -> list[Block]:
    """Blocks of an MLP through ``dims = [d0, d1, ..., dk]``: the hidden layers get
    ``hidden_norm`` and a ReLU, the last ``out_norm`` and no ReLU."""
    last = len(dims) - 2
    return [(dims[i], dims[i + 1], out_norm if i == last else hidden_norm, i != last)
            for i in range(len(dims) - 1)]


class ProjectionHead(nn.Sequential):
    """The layers of ``blocks`` (module docstring) in order; ``blocks`` is kept as given."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        layers: list[nn.Module] = []
        for in_dim, out_dim, norm, relu in blocks:
            if norm not in ("bn", "bn-plain", "none"):
                raise SasRayError(f"unknown head norm {norm!r}; use bn, bn-plain or none")
            layers.append(nn.Linear(in_dim, out_dim, bias=norm == "none"))
            if norm != "none":
                layers.append(nn.BatchNorm1d(out_dim, affine=norm == "bn"))
            if relu:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.blocks = [(int(i), int(o), n, bool(r)) for i, o, n, r in blocks]


def simclr_projector(d: int, hidden: int | None, out: int) -> list[Block]:
    """``Linear - BN - ReLU - Linear - BN(affine=False)``, hidden ``hidden or d`` (the SAS
    reference recipe)."""
    return mlp([d, hidden or d, out], "bn", "bn-plain")


class Encoder(nn.Module):
    """Backbone + projection head. ``forward(x)`` gives projections ``(N, out_dim)``.

    ``spec`` holds what rebuilds the same encoder (:func:`encoder_from_spec`); checkpoints
    store it. ``backbone`` is any module mapping images to ``(N, feature_dim)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = dict(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the normalisation its inputs get (ImageNet's unless the spec
        names one: a pretrained encoder's own, :mod:`sas_ray.core.models.encoders`)."""
        return tuple(self.spec.get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std of that normalisation."""
        return tuple(self.spec.get("std", IMAGENET_STD))

    def embed(self, x: torch.Tensor, feature: Feature = "projection") -> torch.Tensor:
        """Backbone features ``(N, feature_dim)`` or projections ``(N, out_dim)`` of ``x``."""
        if feature == "backbone":
            return self.backbone(x)
        if feature == "projection":
            return self(x)
        raise SasRayError(f"unknown feature {feature!r}; use 'projection' or 'backbone'")


def build_model(arch: str = "resnet18", width: float = 1.0, stem: str = "cifar",
                proj_hidden: int | None = None, proj_dim: int = 128, image_size: int = 32,
                projector: Projector = simclr_projector) -> Encoder:
    """A ResNet (:mod:`~sas_ray.core.models.backbones`) with the head ``projector(d,
    proj_hidden, proj_dim)`` for its feature dim ``d``; ``stem="auto"`` picks the stem from
    ``image_size``."""
    stem = resolve_stem(stem, image_size)
    backbone = build_backbone(arch, width=width, stem=stem)
    blocks = projector(backbone.feature_dim, proj_hidden, proj_dim)
    spec = {"arch": arch, "width": width, "stem": stem, "image_size": image_size,
            "head": [list(b) for b in blocks]}
    return Encoder(backbone, ProjectionHead(blocks), spec)


def encoder_from_spec(spec: dict[str, Any]) -> Encoder:
    """The (freshly initialised) encoder that ``spec`` (an :class:`Encoder`'s) describes."""
    blocks: list[Block] = [tuple(b) for b in spec["head"]]  # type: ignore[misc]
    return build_model(spec["arch"], spec["width"], spec["stem"], image_size=spec["image_size"],
                       projector=lambda *_: blocks)
