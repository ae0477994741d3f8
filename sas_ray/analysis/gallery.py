"""What a subset keeps and drops, as a picture: thumbnails of a ranking cut at a fraction.

For a few latent classes of a ranking (the largest, one of middle size and the smallest: a
head and a tail class), two rows each: the class's first-ranked images (kept at the
fraction) and its last-ranked images (dropped at the fraction; the ranking's lowest first).
A thumbnail's frame tells its kind where the source tagged one (``meta.kinds`` of the
shards): grey clean, orange near-duplicate, red junk (blank, noise or off-class). One PNG
(matplotlib, Agg), used by the report page and by ``sas-ray show``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sas_ray.analysis.kinds import Kinds
from sas_ray.core.data.images import decode_images
from sas_ray.core.data.sources.synthetic import JUNK
from sas_ray.io.artifacts import StoredRanking
from sas_ray.io.shards import read_table

THUMB = 64  # thumbnail side in pixels
GAP = 4  # pixels between thumbnails (the frame is drawn inside it)
LABEL_WIDTH = 230  # pixels left of the thumbnails for the row labels
FRAME = {"clean": (200, 200, 200), "duplicate": (245, 150, 20), "junk": (220, 30, 30)}


@dataclass(frozen=True)
class Row:
    """One row of thumbnails: its label and the ids shown, in rank order."""

    label: str
    ids: np.ndarray


def pick_classes(latent: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` latent classes spread over the sizes: largest, ..., smallest."""
    values, sizes = np.unique(latent, return_counts=True)
    by_size = values[np.argsort(-sizes, kind="stable")]
    picks = np.linspace(0, by_size.size - 1, min(count, by_size.size)).round().astype(int)
    return [int(by_size[i]) for i in dict.fromkeys(picks.tolist())]


def gallery_rows(ranking: StoredRanking, fraction: float | None, classes: int = 3,
                 per_row: int = 8) -> list[Row]:
    """Kept and dropped rows of :func:`pick_classes` classes of ``ranking`` at ``fraction``."""
    kept = np.zeros(ranking.ids.size, bool)
    kept[ranking.ranking.cut(fraction)] = True
    latent = ranking.ranking.latent
    rows = []
    for c in pick_classes(latent, classes):
        members = np.flatnonzero(latent == c)  # rank order
        keep, drop = members[kept[members]], members[~kept[members]]
        head = f"latent class {c} ({members.size} images)"
        rows.append(Row(f"{head}\nkept: first {min(per_row, keep.size)} of {keep.size}",
                        ranking.ids[keep[:per_row]]))
        rows.append(Row(f"dropped: last {min(per_row, drop.size)} of {drop.size}",
                        ranking.ids[drop[::-1][:per_row]]))
    return rows


def kind_of(kinds: Kinds) -> dict[int, str]:
    """id -> frame group ("duplicate" | "junk") for the tagged ids; others are clean."""
    out = {int(i): "duplicate" for i in kinds.get("duplicate", ())}
    out.update({int(i): "junk" for k in JUNK for i in kinds.get(k, ())})
    return out


def read_thumbnails(shards: str, ids: np.ndarray) -> dict[int, np.ndarray]:
    """id -> ``(THUMB, THUMB, 3)`` uint8 of the train images ``ids`` of the shards."""
    table = read_table(shards, split="train", columns=["id", "image"], ids=ids)
    pixels = decode_images(table.column("image").to_pylist(), size=THUMB)
    return dict(zip(table.column("id").to_pylist(), pixels, strict=True))


def compose(rows: Sequence[Row], thumbs: Mapping[int, np.ndarray], kinds: Mapping[int, str],
            per_row: int) -> np.ndarray:
    """The thumbnails on a white ``(H, W, 3)`` uint8 canvas, each in its kind's frame."""
    cell = THUMB + 2 * GAP
    canvas = np.full((cell * len(rows), LABEL_WIDTH + cell * per_row, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for j, i in enumerate(row.ids.tolist()):
            y, x = r * cell, LABEL_WIDTH + j * cell
            canvas[y + 1:y + cell - 1, x + 1:x + cell - 1] = FRAME[kinds.get(i, "clean")]
            canvas[y + GAP:y + GAP + THUMB, x + GAP:x + GAP + THUMB] = thumbs[i]
    return canvas


def render(rows: Sequence[Row], thumbs: Mapping[int, np.ndarray], kinds: Mapping[int, str],
           path: str, *, title: str, per_row: int = 8) -> None:
    """Write the gallery of ``rows`` as a PNG at ``path`` (local)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvas = compose(rows, thumbs, kinds, per_row)
    dpi, top = 100, 60
    h, w = canvas.shape[:2]
    fig = plt.figure(figsize=(w / dpi, (h + top) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, h / (h + top)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    cell = THUMB + 2 * GAP
    for r, row in enumerate(rows):
        ax.text(6, r * cell + cell / 2, row.label, va="center", ha="left", fontsize=9)
    legend = "frame: grey clean, orange near-duplicate, red junk (blank / noise / off-class)"
    fig.text(0.01, 1 - 22 / (h + top), title, fontsize=11, weight="bold", va="center")
    fig.text(0.01, 1 - 46 / (h + top), legend, fontsize=8.5, va="center", color="#444")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_gallery(ranking: StoredRanking, fraction: float | None, shards: str, kinds: Kinds,
                  path: str, *, title: str, classes: int = 3, per_row: int = 8) -> None:
    """The kept/dropped gallery of ``ranking`` at ``fraction`` (images from ``shards``) as a
    PNG at the local ``path``."""
    rows = gallery_rows(ranking, fraction, classes, per_row)
    ids = np.concatenate([r.ids for r in rows]) if rows else np.empty(0, np.int64)
    render(rows, read_thumbnails(shards, ids), kind_of(kinds), path, title=title,
           per_row=per_row)
