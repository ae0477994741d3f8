"""Self-supervised methods, one module each, behind a registry (``train.method``).

| method  | module   | needs                                        |
|---------|----------|----------------------------------------------|
| simclr  | simclr   | large batches (negatives from the batch)     |
| moco    | moco     | a momentum key encoder, a queue of negatives |
| byol    | byol     | a predictor, a momentum target               |
| simsiam | simsiam  | a predictor, a stop-gradient                 |
"""

from __future__ import annotations

from sas_ray.core.methods.base import Method
from sas_ray.core.methods.registry import (
    METHODS,
    build_method,
    load_method,
    method_class,
    method_from_spec,
)

__all__ = ["METHODS", "Method", "build_method", "load_method", "method_class",
           "method_from_spec"]
