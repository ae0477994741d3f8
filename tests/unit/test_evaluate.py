"""Linear probe and kNN: high accuracy on separable features, chance on random labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sas_ray.config import EvalConfig
from sas_ray.core.evaluation import evaluate_encoder, knn_accuracy, linear_probe
from sas_ray.core.models import build_model
from sas_ray.errors import SasRayError

CLASSES = 4


def clustered(n_per_class: int, seed: int, spread: float = 0.6
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around 4 fixed centres in 16-d (centres from seed 0)."""
    centres = torch.randn(CLASSES, 16, generator=torch.Generator().manual_seed(0)) * 2
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), 16, generator=gen), y


def noise(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features that carry no information about their (uniformly random) labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)


@pytest.mark.parametrize("probe", ["lbfgs", "sgd"])
def test_probe_separable_and_random(probe: str) -> None:
    cfg = EvalConfig(probe=probe, probe_epochs=50)
    train_x, train_y = clustered(100, seed=1)
    test_x, test_y = clustered(100, seed=2)
    assert linear_probe(train_x, train_y, test_x, test_y, CLASSES, cfg)["linear_acc"] > 95
    acc = linear_probe(*noise(400, 3), *noise(400, 4), CLASSES, cfg)["linear_acc"]
    assert 15 < acc < 35  # chance is 25%


def test_knn_separable_and_random() -> None:
    train_x, train_y = clustered(100, seed=1)
    test_x, test_y = clustered(100, seed=2)
    assert knn_accuracy(train_x, train_y, test_x, test_y, CLASSES, k=20, t=0.1) > 95
    acc = knn_accuracy(*noise(400, 3), *noise(400, 4), CLASSES, k=200, t=0.1)
    assert 15 < acc < 35


def test_knn_weighting_by_similarity() -> None:
    # one very close neighbour of class 1 outvotes two distant ones of class 0 at small t
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.2]])
    assert knn_accuracy(train_x, train_y, query, torch.tensor([1]), 2, k=3, t=0.1) == 100.0
    assert knn_accuracy(train_x, train_y, query, torch.tensor([0]), 2, k=3, t=100.0) == 100.0


def test_l2_grid_is_chosen_on_a_validation_split() -> None:
    train_x, train_y = clustered(50, seed=1)
    extra_x, _ = clustered(100, seed=4)  # class 0 three times as frequent in train
    train_x, train_y = torch.cat([train_x, extra_x[:100]]), torch.cat([train_y, torch.zeros(
        100, dtype=torch.long)])
    test_x, test_y = clustered(50, seed=2)
    cfg = EvalConfig(probe_l2_grid=[1e4, 1e-4], probe_epochs=50)
    out = linear_probe(train_x, train_y, test_x, test_y, CLASSES, cfg)
    # a huge L2 pins W at ~0, so the unpenalised bias predicts the majority class everywhere
    assert out["probe_l2"] == 1e-4
    assert out["probe_val_acc"] > 90 and out["linear_acc"] > 90
    only_huge = linear_probe(train_x, train_y, test_x, test_y, CLASSES,
                             EvalConfig(probe_l2=1e4, probe_epochs=50))
    assert only_huge["linear_acc"] == pytest.approx(25.0)


def test_evaluate_encoder_end_to_end() -> None:
    rng = np.random.default_rng(0)
    # class = which colour channel is bright: separable even for a random encoder
    labels = rng.integers(0, 3, 120)
    imgs = rng.integers(0, 60, (120, 16, 16, 3)).astype(np.uint8)
    imgs[np.arange(120), :, :, labels] += 180
    model = build_model("resnet10", width=0.125, proj_dim=8, image_size=16)
    cfg = EvalConfig(probe_epochs=30, knn_k=10)
    out = evaluate_encoder(model, imgs[:80], labels[:80], imgs[80:], labels[80:], cfg)
    assert out["n_train"] == 80 and out["n_test"] == 40 and out["num_classes"] == 3
    assert out["feature_dim"] == model.backbone.feature_dim
    assert out["linear_acc"] > 80 and out["knn_acc"] > 80
    assert model.training  # the model's mode is restored


def test_unlabelled_splits_are_clear_errors() -> None:
    model = build_model("resnet10", width=0.125, image_size=8)
    imgs = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(SasRayError, match="train split is empty"):
        evaluate_encoder(model, imgs[:0], np.zeros(0, int), imgs, np.zeros(4, int), EvalConfig())
    with pytest.raises(SasRayError, match="missing or invalid labels"):
        evaluate_encoder(model, imgs, np.array([0, -1, 1, 0]), imgs, np.zeros(4, int),
                         EvalConfig())
