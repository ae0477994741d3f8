"""Scores from supervised training, for baselines that need labels.

Both scorers are generic over an input tensor (n, ...) and a model factory, so the same code
scores images with a small CNN or proxy embeddings with a linear/MLP head (the default for
the selectors, ``select.supervised_model``). Training is plain minibatch SGD (momentum 0.9)
with cross-entropy, seeded.

* Forgetting events (Toneva et al. 2019): each time an example is in a minibatch, record
  whether the model (at that step, before the update) classifies it correctly; a forgetting
  event is a transition correct -> incorrect. Examples never classified correctly count as
  ``epochs`` events, more than any learned example can reach (at most epochs / 2).
* EL2N (Paul et al. 2021): after ``el2n_epochs`` epochs (early in training),
  ``|| softmax(f(x)) - onehot(y) ||_2`` per example, averaged over ``el2n_seeds`` runs.

Selectors rank within each latent class: ``forgetting-least`` (fewest events first, the
"unforgettable" examples), ``forgetting-most``, ``el2n-easy`` (lowest first), ``el2n-hard``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from sas_ray.config import SelectConfig
from sas_ray.core.selection.ranking import (
    ClassJob,
    ClassMap,
    ClassOrder,
    Ranking,
    check_inputs,
    class_jobs,
    map_serial,
)
from sas_ray.errors import SasRayError

ModelFactory = Callable[[], nn.Module]
BatchHook = Callable[[torch.Tensor, torch.Tensor], None]  # (indices, logits) per minibatch


def train_classifier(inputs: torch.Tensor, targets: torch.Tensor, model_factory: ModelFactory,
                     *, epochs: int, batch_size: int, lr: float, seed: int,
                     on_batch: BatchHook | None = None) -> nn.Module:
    """Train ``model_factory()`` (built under ``seed``) with SGD for ``epochs`` epochs.

    ``on_batch(indices, logits)`` sees every minibatch's forward pass before its update.
    The global torch RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory().to(inputs.device)
        order_rng = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(inputs.shape[0], generator=order_rng).split(batch_size):
                idx = idx.to(inputs.device)
                logits = model(inputs[idx])
                if on_batch is not None:
                    on_batch(idx, logits.detach())
                loss = nn.functional.cross_entropy(logits, targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model


def forgetting_events(inputs: torch.Tensor, targets: torch.Tensor, model_factory: ModelFactory,
                      *, epochs: int, batch_size: int, lr: float, seed: int) -> np.ndarray:
    """Forgetting events per example, shape (n,) int64 (see the module docstring)."""
    n = inputs.shape[0]
    correct = torch.zeros(n, dtype=torch.bool, device=inputs.device)
    learned = torch.zeros_like(correct)
    events = torch.zeros(n, dtype=torch.int64, device=inputs.device)

    def track(idx: torch.Tensor, logits: torch.Tensor) -> None:
        now = logits.argmax(dim=1) == targets[idx]
        events[idx] += (correct[idx] & ~now).long()
        correct[idx] = now
        learned[idx] |= now

    train_classifier(inputs, targets, model_factory, epochs=epochs, batch_size=batch_size,
                     lr=lr, seed=seed, on_batch=track)
    events[~learned] = epochs
    return events.cpu().numpy()


@torch.no_grad()
def el2n(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         batch_size: int = 4096) -> np.ndarray:
    """``|| softmax(model(x)) - onehot(y) ||_2`` per example, shape (n,) float64."""
    model.eval()
    out = []
    for idx in torch.arange(inputs.shape[0], device=inputs.device).split(batch_size):
        probs = model(inputs[idx]).softmax(dim=1)
        onehot = nn.functional.one_hot(targets[idx], probs.shape[1]).to(probs.dtype)
        out.append((probs - onehot).norm(dim=1))
    return torch.cat(out).double().cpu().numpy()


def el2n_scores(inputs: torch.Tensor, targets: torch.Tensor, model_factory: ModelFactory, *,
                epochs: int, batch_size: int, lr: float, seeds: list[int]) -> np.ndarray:
    """EL2N after ``epochs`` epochs, averaged over one training run per seed, shape (n,)."""
    runs = [el2n(train_classifier(inputs, targets, model_factory, epochs=epochs,
                                  batch_size=batch_size, lr=lr, seed=s), inputs, targets)
            for s in seeds]
    return np.mean(runs, axis=0)


# ---------------------------------------------------------------- selectors on embeddings
def mlp_head(dim: int, num_classes: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def embedding_head(kind: str, dim: int, num_classes: int) -> ModelFactory:
    """Factory of the classifier trained on embeddings: ``linear`` or ``mlp`` (one hidden
    layer of 256 ReLU units)."""
    if kind == "linear":
        return partial(nn.Linear, dim, num_classes)
    if kind == "mlp":
        return partial(mlp_head, dim, num_classes)
    raise SasRayError(f"unknown select.supervised_model '{kind}'; use linear or mlp")


def supervised_inputs(embeddings: np.ndarray, labels: np.ndarray | None,
                      strategy: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Embeddings and contiguous targets as tensors, and the number of label classes."""
    if labels is None or (labels < 0).any():
        missing = embeddings.shape[0] if labels is None else int((labels < 0).sum())
        raise SasRayError(f"strategy '{strategy}' trains a classifier on labels but {missing} "
                          "rows have none; use a label-free strategy (sas, random, "
                          "prototypes-easy, kcenter, semdedup) or embed a labeled split")
    values, targets = np.unique(labels, return_inverse=True)
    if values.size < 2:
        raise SasRayError(f"strategy '{strategy}' needs at least 2 label classes, got "
                          f"{values.size}; use a label-free strategy")
    x = torch.from_numpy(np.array(embeddings, dtype=np.float32))  # a writable copy
    return x, torch.from_numpy(targets.astype(np.int64)), int(values.size)


def score_class_order(x: np.ndarray, job: ClassJob, *, scores: np.ndarray,
                      descending: bool) -> ClassOrder:
    """Sort one class by a precomputed per-row score (ties: lowest row)."""
    own = scores[job.rows]
    order = np.argsort(-own if descending else own, kind="stable")
    return ClassOrder(order=order, scores=own[order].astype(np.float64))


def rank_by_scores(embeddings: np.ndarray, latent: np.ndarray, scores: np.ndarray, seed: int,
                   descending: bool) -> Ranking:
    """Per-class order by ``scores``, interleaved by quota (a sort: always in-process)."""
    jobs = class_jobs(latent, seed)
    fn = partial(score_class_order, scores=scores, descending=descending)
    return Ranking.from_class_orders(latent, jobs, map_serial(fn, embeddings, jobs),
                                     nested=True)


def select_forgetting(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                      seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                      map_classes: ClassMap = map_serial, most_first: bool = False) -> Ranking:
    """Rank each class by forgetting events of a head trained on embeddings and labels;
    the training runs in this process (``map_classes`` is not needed)."""
    check_inputs(embeddings, latent, fraction, labels)
    strategy = "forgetting-most" if most_first else "forgetting-least"
    x, y, num_classes = supervised_inputs(embeddings, labels, strategy)
    events = forgetting_events(x, y, embedding_head(cfg.supervised_model, x.shape[1], num_classes),
                               epochs=cfg.supervised_epochs, batch_size=cfg.supervised_batch_size,
                               lr=cfg.supervised_lr, seed=seed)
    return rank_by_scores(embeddings, latent, events.astype(np.float64), seed, most_first)


def select_el2n(embeddings: np.ndarray, latent: np.ndarray, fraction: float | None, seed: int,
                cfg: SelectConfig, labels: np.ndarray | None = None, *,
                map_classes: ClassMap = map_serial, hardest_first: bool = False) -> Ranking:
    """Rank each class by EL2N of a head trained briefly on embeddings and labels; the
    training runs in this process (``map_classes`` is not needed)."""
    check_inputs(embeddings, latent, fraction, labels)
    strategy = "el2n-hard" if hardest_first else "el2n-easy"
    x, y, num_classes = supervised_inputs(embeddings, labels, strategy)
    scores = el2n_scores(x, y, embedding_head(cfg.supervised_model, x.shape[1], num_classes),
                         epochs=cfg.el2n_epochs, batch_size=cfg.supervised_batch_size,
                         lr=cfg.supervised_lr, seeds=[seed + i for i in range(cfg.el2n_seeds)])
    return rank_by_scores(embeddings, latent, scores, seed, hardest_first)
