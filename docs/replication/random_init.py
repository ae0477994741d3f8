"""Untrained encoders for the pilot's baseline: the trained runs' architecture, seeds 0-2.

    python docs/replication/random_init.py OUT_DIR --model.arch resnet10 --model.width 0.25

writes OUT_DIR/random-init-s{0,1,2}.pt, each evaluated with ``sas-ray evaluate``.
"""
import sys
from pathlib import Path

import torch

from sas_ray import config
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.models.checkpoint import save_encoder

out, flags = Path(sys.argv[1]), sys.argv[2:]
overrides = {flags[i].removeprefix("--"): flags[i + 1] for i in range(0, len(flags), 2)}
cfg = config.load(overrides={"data.image_size": 32, **overrides})
out.mkdir(parents=True, exist_ok=True)
for seed in (0, 1, 2):
    torch.manual_seed(seed)
    save_encoder(str(out / f"random-init-s{seed}.pt"), model_from_config(cfg), cfg)
