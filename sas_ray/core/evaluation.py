"""Frozen-encoder evaluation: linear probe and weighted kNN accuracy.

Features are the backbone outputs of the un-augmented, normalised images, with the encoder
in eval mode. Both classifiers are fitted on the labelled train split and scored on the
held-out test split; nothing is ever selected on the test split (the probe's L2, when a
grid is given, is chosen on a validation split carved from train).

- Linear probe: multinomial logistic regression on standardised features,
  ``min_W,b  mean_i CE(W x_i + b, y_i) + l2/2 ||W||^2``, fitted full-batch with L-BFGS
  (strong-Wolfe line search) or with mini-batch momentum SGD and a cosine schedule.
- kNN (Wu et al. 2018, InstDisc; as in solo-learn): cosine similarity to every train
  feature, the ``k`` most similar vote for their label with weight ``exp(sim / t)``.

Accuracies are reported in percent. Plain PyTorch here; :mod:`sas_ray.stages.evaluate` reads
the shards and checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sas_ray.config import EvalConfig
from sas_ray.core.data.augment import SimCLRAugment, to_nchw
from sas_ray.core.models.heads import Encoder, Feature
from sas_ray.errors import SasRayError


@torch.no_grad()
def extract_features(model: Encoder, images: np.ndarray, batch_size: int = 512,
                     feature: Feature = "backbone", device: torch.device | None = None
                     ) -> torch.Tensor:
    """Features ``(N, d)`` float32 (CPU) of uint8 images ``(N, H, W, 3)``, model in eval mode.

    Images are resized to the model's ``spec["image_size"]`` and normalised as in training.
    The model's train/eval mode is restored afterwards.
    """
    device = device or next(model.parameters()).device
    prepare = SimCLRAugment(size=model.spec["image_size"])
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare.plain(to_nchw(images[start:start + batch_size]).to(device))
        out.append(model.embed(x, feature).float().cpu())
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.backbone.feature_dim)
    return torch.cat(out)


def _standardise(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train_x, *others)]


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
               method: str = "lbfgs", epochs: int = 100, batch_size: int = 512,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (see module docstring); returns ``W (d, C)``, ``b (C,)``.

    ``lbfgs``: full batch, at most ``epochs`` iterations; ``sgd``: ``epochs`` passes of
    momentum SGD (lr 0.1, cosine to 0) over mini-batches of ``batch_size``.
    """
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(xb @ w + b, yb) + 0.5 * l2 * (w * w).sum()

    if method == "lbfgs":
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = objective(x, y)
            loss.backward()
            return loss

        opt.step(closure)
    elif method == "sgd":
        opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
        steps = epochs * max(1, -(-len(x) // batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                opt.zero_grad()
                objective(x[idx], y[idx]).backward()
                opt.step()
                sched.step()
    else:
        raise SasRayError(f"unknown probe {method!r}; set --eval.probe to lbfgs or sgd")
    return w.detach(), b.detach()


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1) == y).float().mean().item() if len(y) else float("nan")


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, cfg: EvalConfig, seed: int = 0
                 ) -> dict[str, float]:
    """Fit on train, report test accuracy (%). With ``cfg.probe_l2_grid``, the L2 with the
    best accuracy on a stratified ``cfg.val_fraction`` of train is chosen, then refitted on
    all of train."""
    train_x, test_x = _standardise(train_x, test_x)
    fit = dict(method=cfg.probe, epochs=cfg.probe_epochs, batch_size=cfg.batch_size, seed=seed)
    out: dict[str, float] = {}
    l2 = cfg.probe_l2
    if cfg.probe_l2_grid:
        fit_idx, val_idx = stratified_split(train_y.numpy(), cfg.val_fraction, seed)
        val_acc = {}
        for cand in cfg.probe_l2_grid:
            w, b = fit_linear(train_x[fit_idx], train_y[fit_idx], num_classes, cand, **fit)
            val_acc[cand] = _accuracy(train_x[val_idx] @ w + b, train_y[val_idx])
        l2 = max(val_acc, key=lambda c: (val_acc[c], -c))  # ties: the smaller L2
        out["probe_val_acc"] = val_acc[l2]
    w, b = fit_linear(train_x, train_y, num_classes, l2, **fit)
    out.update(linear_acc=_accuracy(test_x @ w + b, test_y),
               linear_train_acc=_accuracy(train_x @ w + b, train_y), probe_l2=l2)
    return out


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, val)``: ``fraction`` of each class (at least one) goes to val."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        val.extend(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, k: int = 200, t: float = 0.1,
                 chunk: int = 1024) -> float:
    """Weighted kNN accuracy (%) of ``test_x (M, d)`` against ``train_x (N, d)``.

    ``score_c(q) = sum over the k nearest train points j (cosine) with y_j = c of
    exp(cos(q, x_j) / t)``; the prediction is ``argmax_c score_c``.
    """
    train_u = F.normalize(train_x, dim=1)
    k = min(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), chunk):
        q = F.normalize(test_x[start:start + chunk], dim=1)
        sim, idx = (q @ train_u.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(1) == test_y[start:start + chunk]).sum().item()
    return 100.0 * correct / len(test_x) if len(test_x) else float("nan")


def _labels(labels: np.ndarray, what: str) -> torch.Tensor:
    y = np.asarray(labels)
    if len(y) == 0:
        raise SasRayError(f"the {what} split is empty; evaluation needs labelled train and test "
                          "images (ingest a source with both splits)")
    if y.dtype == object or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise SasRayError(f"the {what} split has missing or invalid labels; evaluation needs "
                          "labelled train and test images")
    return torch.from_numpy(y.astype(np.int64))


def evaluate_encoder(model: Encoder, train_images: np.ndarray, train_labels: np.ndarray,
                     test_images: np.ndarray, test_labels: np.ndarray, cfg: EvalConfig,
                     seed: int = 0, device: torch.device | None = None) -> dict[str, Any]:
    """Linear-probe and kNN test accuracy (%) of ``model``'s frozen backbone features.

    Images are uint8 ``(N, H, W, 3)``; labels int ``(N,)``. Returns ``linear_acc``,
    ``knn_acc``, ``linear_train_acc``, ``probe_l2`` (+ ``probe_val_acc`` with an L2 grid),
    and the sizes, feature dim and settings used.
    """
    train_y, test_y = _labels(train_labels, "train"), _labels(test_labels, "test")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    start = time.perf_counter()
    train_x = extract_features(model, train_images, cfg.batch_size, device=device)
    test_x = extract_features(model, test_images, cfg.batch_size, device=device)
    if not (torch.isfinite(train_x).all() and torch.isfinite(test_x).all()):
        raise SasRayError("the encoder produces NaN/inf features; the checkpoint is broken "
                          "(diverged training?) - retrain with a lower --train.lr")
    feature_s = time.perf_counter() - start
    result: dict[str, Any] = linear_probe(train_x, train_y, test_x, test_y, num_classes, cfg,
                                          seed)
    result["knn_acc"] = knn_accuracy(train_x, train_y, test_x, test_y, num_classes,
                                     cfg.knn_k, cfg.knn_t)
    result.update(n_train=len(train_y), n_test=len(test_y), num_classes=num_classes,
                  feature_dim=train_x.shape[1], probe=cfg.probe, knn_k=cfg.knn_k,
                  knn_t=cfg.knn_t, feature_seconds=feature_s,
                  seconds=time.perf_counter() - start)
    return result
