"""The shared base of the self-supervised methods (in the style of solo-learn's methods).

A :class:`Method` is an ``nn.Module`` that holds

- ``encoder``: the backbone + projection head it trains (:class:`~sas_ray.core.models.heads.
  Encoder`), what checkpoints give back as the encoder of any method;
- its views: one augmentation per view (``view_params``, per-view overrides of
  :class:`~sas_ray.core.data.augment.SimCLRAugment`'s fields, e.g. BYOL's asymmetric
  blur/solarize);
- its loss: ``forward(*views) -> loss``, so that under DDP the method module is the wrapped one
  and its gradients are synchronised (DDP syncs only what its wrapped ``forward`` computes);
- its per-step hook: :meth:`after_step` ``(step, total_steps)``, called after every optimiser
  step (momentum-encoder updates, MoCo's queue); a no-op by default;
- its parameters: ``params``, the method's config section (``method.<name>`` in
  :mod:`sas_ray.config`), and its projection head (``projector (d, hidden, out) -> blocks``).

``spec`` (``{"name", "params"}``) and the encoder's spec rebuild the method; checkpoints store
both. A new method is one module here (a subclass with ``name``, ``config_type``, ``forward``
and whatever else it changes), a line in the registry, and its config dataclass in
:mod:`sas_ray.config` (a ``MethodConfig`` field, its name in ``MethodName``): the config is the
bottom layer, so it cannot import the methods.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from sas_ray.core.data.augment import Keys, SimCLRAugment, image_keys, view_keys
from sas_ray.core.models.heads import Encoder, Projector, simclr_projector


class Method(nn.Module):
    """See the module docstring; subclasses implement :meth:`forward`."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    view_params: ClassVar[tuple[dict[str, Any], ...]] = ({}, {})  # two SimCLR views
    # (d, hidden, out) -> the encoder's projection head; SimCLR's by default
    projector: ClassVar[Projector] = staticmethod(simclr_projector)

    def __init__(self, encoder: Encoder, params: Any) -> None:
        super().__init__()
        if not isinstance(params, self.config_type):
            raise TypeError(f"{self.name} takes {self.config_type.__name__} parameters, got "
                            f"{type(params).__name__}")
        self.encoder = encoder
        self.params = params

    @property
    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": dataclasses.asdict(self.params)}

    @property
    def out_dim(self) -> int:
        """The dimension of the encoder's projections."""
        return self.encoder.head.blocks[-1][1]

    def augments(self, size: int) -> list[SimCLRAugment]:
        """One augmentation per view, for images of side ``size``."""
        return [SimCLRAugment(size=size, **p) for p in self.view_params]

    def views(self, images: torch.Tensor, augments: list[SimCLRAugment],
              keys: Keys = None) -> list[torch.Tensor]:
        """The views of uint8 ``images (n, 3, H, W)``: one float ``(n, 3, s, s)`` per augment,
        view ``v`` drawn from ``view_keys(keys, v)`` (per-image keys, :func:`image_keys`)."""
        keys = image_keys(keys, images.shape[0], images.device)
        return [aug(images, view_keys(keys, v)) for v, aug in enumerate(augments)]

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        """The loss (a scalar) of one batch of views, each ``(n, 3, s, s)``."""
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimiser step ``step`` (0-based, global) of ``total_steps``."""
