"""The random-init baseline of runs/methods/run.sh: the same encoder architecture, untrained."""
import torch

from sas_ray import config
from sas_ray.core.methods.registry import model_from_config
from sas_ray.core.models.checkpoint import save_encoder

cfg = config.load(overrides={"model.arch": "resnet10", "model.width": 0.25,
                             "data.image_size": 32})
for seed in (0, 1, 2):
    torch.manual_seed(seed)
    save_encoder(f"runs/methods/random-init-s{seed}.pt", model_from_config(cfg), cfg)
