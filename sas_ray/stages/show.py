"""``sas-ray show SUBSET``: what a ranking keeps and drops at a fraction, as one PNG.

The same picture as the report page's per-strategy gallery
(:mod:`sas_ray.analysis.gallery`): for the largest, a middle and the smallest latent class
of the ranking, its first-ranked (kept) and last-ranked (dropped) images, framed by their
kind where the shards tag kinds. The images come from ``--data`` (default: the shards a
pipeline under ``run.storage`` trains on), which must be the shards the ranking was computed
on.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from sas_ray.analysis.gallery import write_gallery
from sas_ray.analysis.kinds import read_kinds
from sas_ray.config import Config
from sas_ray.errors import SasRayError
from sas_ray.io import storage
from sas_ray.io.artifacts import StoredRanking, load_ranking


def default_data(cfg: Config) -> str:
    """The shards a pipeline under ``run.storage`` trains on: ``pool/`` when
    ``data.pool_size`` is set, else ``shards/``."""
    return storage.join(storage.absolute(cfg.run.storage),
                        "pool" if cfg.data.pool_size else "shards")


def show_fraction(ranking: StoredRanking, fraction: float | None, cfg: Config) -> float:
    """``fraction``; by default the ranking's own (non-nested) or the smallest of
    ``sweep.fractions``."""
    if fraction is None:
        fraction = ranking.ranking.fraction or min(cfg.sweep.fractions)
    if not 0 < fraction <= 1:
        raise SasRayError(f"--fraction {fraction} is out of range (0, 1]; pass e.g. 0.5")
    return fraction


def show(cfg: Config, subset: str, *, fraction: float | None = None, data: str | None = None,
         out: str | None = None, classes: int = 3, per_row: int = 8) -> str:
    """Write the gallery of the ranking at ``subset`` to ``out`` (local or s3://; default
    ``<strategy>-f<fraction>.png`` here); returns where it went."""
    ranking = load_ranking(subset)
    data = data or default_data(cfg)
    ranking.check_shards(storage.require_manifest(data, "shards")["fingerprint"], data)
    fraction = show_fraction(ranking, fraction, cfg)
    out = out or f"{ranking.strategy}-f{fraction:.2f}.png"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gallery.png")
        write_gallery(ranking, fraction, data, read_kinds(data), path, classes=classes,
                      per_row=per_row,
                      title=f"{ranking.strategy} at {fraction:.0%} of {ranking.ids.size:,} images")
        with open(path, "rb") as f:
            storage.write_bytes_atomic(out, f.read())
    return out


def cli_show(cfg: Config, args: argparse.Namespace) -> None:
    """``sas-ray show SUBSET [--fraction F] [--data SHARDS] [--out PNG]``."""
    out = show(cfg, args.subset, fraction=args.fraction, data=args.data, out=args.out,
               classes=args.classes, per_row=args.per_row)
    print(f"wrote {out}")
