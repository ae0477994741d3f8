"""Strategy name -> selector; every selector has one signature.

``SELECTORS[name](embeddings, latent, fraction, seed, cfg, labels=None) -> Ranking`` with
``embeddings`` (n, d) mean unit view embeddings, ``latent`` (n,) int latent classes,
``fraction`` in (0, 1] or None (nested strategies rank everything and ignore it, beyond
checking it), ``cfg`` the :class:`~sas_ray.config.SelectConfig`, ``labels`` (n,) int64 with
-1 for unknown (only the supervised strategies use them). A keyword-only ``map_classes``
lets the Ray layer run the per-class work in parallel tasks; the result is the same.
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

import numpy as np

from sas_ray.config import SelectConfig
from sas_ray.core.selection.baselines import (
    select_kcenter,
    select_prototypes,
    select_random,
    select_random_balanced,
    select_semdedup,
)
from sas_ray.core.selection.dbp import select_dbp
from sas_ray.core.selection.hkmeans import select_hkmeans
from sas_ray.core.selection.ranking import ClassMap, Ranking, map_serial
from sas_ray.core.selection.reference import select_sas_reference
from sas_ray.core.selection.sas import select_sas
from sas_ray.core.selection.supervised import select_el2n, select_forgetting
from sas_ray.errors import SasRayError


class Selector(Protocol):
    def __call__(self, embeddings: np.ndarray, latent: np.ndarray, fraction: float | None,
                 seed: int, cfg: SelectConfig, labels: np.ndarray | None = None, *,
                 map_classes: ClassMap = map_serial) -> Ranking: ...


SELECTORS: dict[str, Selector] = {
    "sas": select_sas,
    "sas-reference": select_sas_reference,
    "random": select_random,
    "random-balanced": select_random_balanced,
    "prototypes-easy": partial(select_prototypes, hardest_first=False),
    "prototypes-hard": partial(select_prototypes, hardest_first=True),
    "kcenter": select_kcenter,
    "semdedup": select_semdedup,
    "forgetting-least": partial(select_forgetting, most_first=False),
    "forgetting-most": partial(select_forgetting, most_first=True),
    "el2n-easy": partial(select_el2n, hardest_first=False),
    "el2n-hard": partial(select_el2n, hardest_first=True),
    "hkmeans": select_hkmeans,
    "dbp": select_dbp,
}

NEEDS_LABELS = frozenset({"forgetting-least", "forgetting-most", "el2n-easy", "el2n-hard"})
RANK_LIMITED = frozenset({"sas"})  # read select.rank_limit (nested up to it only)

# one line per strategy (``sas-ray select --help``)
DESCRIPTIONS: dict[str, str] = {
    "sas": "SAS: greedy submodular coverage of each latent class (nested)",
    "sas-reference": "SAS as the reference code ranks it, per latent class (nested)",
    "random": "uniform random order of all rows",
    "random-balanced": "uniform random order within each latent class, class-proportional",
    "prototypes-easy": "rows closest to their class's k-means prototypes first",
    "prototypes-hard": "rows farthest from their class's k-means prototypes first",
    "kcenter": "greedy k-center (farthest point) order within each latent class",
    "semdedup": "SemDeDup: least duplicated rows first within each latent class",
    "forgetting-least": "fewest forgetting events of a head trained on embeddings (needs labels)",
    "forgetting-most": "most forgetting events of a head trained on embeddings (needs labels)",
    "el2n-easy": "lowest EL2N of a briefly trained head first (needs labels)",
    "el2n-hard": "highest EL2N of a briefly trained head first (needs labels)",
    "hkmeans": "hierarchical k-means, balanced sampling over its clusters (Vo et al. 2024)",
    "dbp": "density-based pruning: cluster budgets by complexity (Abbas et al. 2024)",
}


def get_selector(name: str) -> Selector:
    """The selector called ``name``; a clear error listing the names otherwise."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise SasRayError(f"unknown selection strategy '{name}'; use one of: "
                          f"{', '.join(SELECTORS)}") from None


def is_nested(name: str, cfg: SelectConfig) -> bool:
    """Whether ``name`` ranks once for every fraction (False: one ranking per fraction)."""
    get_selector(name)
    return not (name == "sas" and cfg.double_greedy)
