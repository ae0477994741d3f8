"""Cutting per-class selection into balanced work units, shared by both executors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sas_ray.core.selection.ranking import ClassFn, ClassJob, ClassOrder, rank_classes


def rank_chunk(fn: ClassFn, x: np.ndarray, jobs: Sequence[ClassJob]) -> list[ClassOrder]:
    """One work unit: rank a group of classes, reading their rows from ``x`` (together
    where ``fn`` batches classes, see :func:`~sas_ray.core.selection.ranking.rank_classes`)."""
    return rank_classes(fn, x, jobs)


def own_rows(x: np.ndarray, jobs: Sequence[ClassJob]) -> tuple[np.ndarray, list[ClassJob]]:
    """The rows of ``jobs`` only, and the jobs renumbered into them: what a work unit needs
    shipped to another process (not all of ``x``). Class orders are positions within
    ``job.rows``, so results need no mapping back."""
    sizes = [job.rows.size for job in jobs]
    starts = np.cumsum([0, *sizes])
    sub = np.concatenate([x[job.rows] for job in jobs])
    return sub, [dataclasses.replace(job, rows=np.arange(a, a + s, dtype=np.int64))
                 for job, a, s in zip(jobs, starts, sizes, strict=False)]


def balanced_groups(jobs: Sequence[ClassJob], groups: int) -> list[list[ClassJob]]:
    """Split jobs into ``groups`` groups of similar cost (|V_k|^2), largest first."""
    bins: list[list[ClassJob]] = [[] for _ in range(groups)]
    load = [0] * groups
    for job in sorted(jobs, key=lambda j: (-j.rows.size, j.index)):
        i = load.index(min(load))
        bins[i].append(job)
        load[i] += job.rows.size ** 2
    return [b for b in bins if b]
