"""``sas-ray evaluate``: linear probe and kNN accuracy of a trained encoder on a shard dataset.

Reads the labelled train and test splits, decodes them at the encoder's input size and runs
the Ray-free evaluation of :mod:`sas_ray.core.evaluation` in this process.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from sas_ray.config import Config
from sas_ray.core.data.images import decode_images
from sas_ray.core.evaluation import evaluate_encoder
from sas_ray.core.models.checkpoint import load_encoder
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.io.artifacts import encoder_file
from sas_ray.io.shards import read_table


def load_split(data: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images ``(N, size, size, 3)`` and labels of one split of a shard dataset."""
    table = read_table(data, split=split, columns=["image", "label"])
    if table.column("label").null_count:
        raise SasRayError(f"the {split} split of {data} has unlabelled images; evaluation "
                          "needs labels for every train and test image")
    labels = table.column("label").to_numpy()
    try:
        images = decode_images(table.column("image").to_pylist(), size=size)
    except ValueError as err:
        raise SasRayError(f"cannot decode the {split} images of {data} ({err}); rebuild the "
                          "shards with `sas-ray ingest`") from err
    return images, labels


def evaluate_checkpoint(checkpoint: str, data: str, cfg: Config) -> dict[str, Any]:
    """Load an encoder, read the labelled train/test splits of ``data`` and evaluate."""
    model = load_encoder(encoder_file(checkpoint), files=storage.FILES)
    size = model.spec["image_size"]
    train_images, train_labels = load_split(data, "train", size)
    test_images, test_labels = load_split(data, "test", size)
    result = evaluate_encoder(model, train_images, train_labels, test_images, test_labels,
                              cfg.eval, seed=cfg.run.seed)
    result.update(checkpoint=checkpoint, data=data)
    return result


def eval_path(out: str) -> str:
    """``out`` itself when it names a ``.json`` file, else ``out/eval.json``."""
    return out if out.endswith(".json") else storage.join(out, "eval.json")


def cli_evaluate(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray evaluate --checkpoint C --data D [--out O]``."""
    torch.manual_seed(cfg.run.seed)
    result = evaluate_checkpoint(args.checkpoint, args.data, cfg)
    print(f"linear probe ({result['probe']}, l2={result['probe_l2']:g}): "
          f"{result['linear_acc']:.2f}%   kNN (k={result['knn_k']}, t={result['knn_t']:g}): "
          f"{result['knn_acc']:.2f}%   [{result['n_train']} train / {result['n_test']} test "
          f"images, {result['feature_dim']}-d features]")
    if args.out:
        path = eval_path(args.out)
        storage.write_json_atomic(path, result)
        print(f"wrote {path}")
