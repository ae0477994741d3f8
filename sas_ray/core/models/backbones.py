"""ResNet encoders on torchvision's ``ResNet``, with a CIFAR stem and a width multiplier.

``build_backbone("resnet18", width=0.25, stem="cifar")`` maps uint8-derived float images
``(N, 3, H, W)`` to features ``(N, feature_dim)`` (global average pool, no classifier).

- Blocks: resnet10 = BasicBlock [1, 1, 1, 1] (the SAS proxy), resnet18 = [2, 2, 2, 2],
  resnet34 = [3, 4, 6, 3], resnet50 = Bottleneck [3, 4, 6, 3].
- Width: stage widths are ``round(64 * width) * (1, 2, 4, 8)``; ``feature_dim`` is the last
  stage's width times the block expansion (512 * width for basic blocks, 2048 * width for
  bottlenecks). ``width=0.25`` gives a narrow network that trains on a CPU.
- Stem: "cifar" = 3x3 conv, stride 1, no max-pool (for inputs up to ~64 px);
  "imagenet" = torchvision's 7x7 conv, stride 2, then a 3x3 max-pool (the layout of
  torchvision's pretrained weights, whose state dicts load into it unchanged).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from sas_ray.errors import SasRayError

ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
STEMS = ("cifar", "imagenet")


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto`` -> "cifar" for images up to 64 px, else "imagenet"."""
    if stem == "auto":
        return "cifar" if image_size <= 64 else "imagenet"
    if stem not in STEMS:
        raise SasRayError(f"unknown stem {stem!r}; set --model.stem to auto, cifar or imagenet")
    return stem


class ResNetBackbone(ResNet):
    """torchvision's ResNet with scaled stage widths, a choice of stem and no classifier.

    ``ResNet.__init__`` hard-codes the widths 64..512, so this sets up the attributes its
    ``_make_layer`` and ``forward`` use and builds the stages itself.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 width: float = 1.0, stem: str = "cifar") -> None:
        nn.Module.__init__(self)
        if width <= 0:
            raise SasRayError(f"width multiplier {width} must be > 0; pass e.g. --model.width 0.25")
        widths = [max(1, round(64 * width)) * 2**i for i in range(4)]
        self._norm_layer = nn.BatchNorm2d
        self.dilation, self.groups, self.base_width = 1, 1, 64
        self.inplanes = widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            raise SasRayError(f"unknown stem {stem!r}; set --model.stem to cifar or imagenet")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = widths[3] * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_backbone(arch: str, width: float = 1.0, stem: str = "cifar") -> ResNetBackbone:
    """A ResNet encoder by name (see :data:`ARCHS`)."""
    if arch not in ARCHS:
        raise SasRayError(f"unknown architecture {arch!r}; set --model.arch to one of "
                          f"{', '.join(ARCHS)}")
    block, layers = ARCHS[arch]
    return ResNetBackbone(block, layers, width=width, stem=stem)
