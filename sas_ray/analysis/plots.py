"""The report's plots (matplotlib, Agg backend, written as PNG).

* :func:`accuracy_plot`: test accuracy vs the percentage of the pool kept, one line per
  strategy and one panel per metric; with several SSL methods one row of panels per method
  (a strategy keeps its colour across rows). Strategies get their own colour and marker and are
  shifted by a small x offset (:data:`X_OFFSET` percentage points apart), so lines that lie
  on each other stay visible; error bars are the std over seeds (when a cell has several).
  Full data is a dashed line with the tolerance as a thin band around it. The y axis spans
  the data (at least :data:`MIN_SPAN` points) inside [0, 100].
* :func:`curves_plot`: the training loss per epoch of every trial (from its run's
  ``metrics.json`` history), coloured by strategy, dashed by fraction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from sas_ray.analysis.records import FULL, METRICS

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
X_OFFSET = 0.8  # percentage points between neighbouring strategies' markers
MIN_SPAN = 10.0  # accuracy points the y axis shows at least
LINESTYLES = ("-", "--", ":", "-.")
FULL_COLOUR = "black"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strategy_styles(strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Colour and marker per strategy (full data: black), stable in the given order."""
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {s: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)]}
              for i, s in enumerate(s for s in strategies if s != FULL)}
    styles[FULL] = {"color": FULL_COLOUR, "marker": "*"}
    return styles


def y_limits(values: Sequence[float]) -> tuple[float, float]:
    """Limits spanning ``values`` with a margin, at least :data:`MIN_SPAN` wide, in [0, 100]."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return 0.0, 100.0
    lo, hi = min(finite), max(finite)
    pad = max(1.0, 0.1 * (hi - lo), (MIN_SPAN - (hi - lo)) / 2)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < MIN_SPAN:  # pushed against 0 or 100: extend the other way
        lo, hi = (0.0, max(hi, MIN_SPAN)) if lo == 0.0 else (min(lo, 100.0 - MIN_SPAN), 100.0)
    return lo, hi


def accuracy_plot(cells: pd.DataFrame, path: str, *, title: str, tolerance: float) -> None:
    """Accuracy vs % of the pool kept (see the module docstring); ``cells`` as in
    :class:`~sas_ray.analysis.report.Report` (its ``method`` column, when there is one, picks
    the row of panels)."""
    plt = _pyplot()
    methods = list(dict.fromkeys(cells["method"])) if "method" in cells else []
    by_method = [cells[cells["method"] == m] for m in methods] if len(methods) > 1 else [cells]
    fig, axes = plt.subplots(len(by_method), len(METRICS),
                             figsize=(5.8 * len(METRICS), 4.4 * len(by_method)), squeeze=False)
    strategies = [s for s in dict.fromkeys(cells["strategy"]) if s != FULL]
    styles = strategy_styles(strategies)
    for row, panel_cells in zip(axes, by_method, strict=True):
        method = str(panel_cells["method"].iloc[0]) if len(by_method) > 1 else ""
        for ax, m in zip(row, METRICS, strict=True):
            _accuracy_panel(ax, panel_cells, m, method, strategies, styles, tolerance)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _accuracy_panel(ax: Any, cells: pd.DataFrame, m: str, method: str,
                    strategies: Sequence[str], styles: Mapping[str, Mapping[str, Any]],
                    tolerance: float) -> None:
    """One panel: metric ``m`` of ``cells`` (those of ``method``; "": the only one)."""
    name = METRICS[m]
    full = cells[cells["strategy"] == FULL]
    shown: list[float] = []
    for i, strategy in enumerate(strategies):
        group = cells[cells["strategy"] == strategy]
        if group.empty:
            continue
        std = group[f"{m}_std"].fillna(0.0)
        x = 100 * group["fraction"] + (i - (len(strategies) - 1) / 2) * X_OFFSET
        ax.errorbar(x, group[f"{m}_mean"], yerr=std if (group["seeds"] > 1).any() else None,
                    capsize=3, linewidth=1.5, markersize=6, label=strategy, **styles[strategy])
        shown += [*(group[f"{m}_mean"] - std), *(group[f"{m}_mean"] + std)]
    if not full.empty:
        acc = float(full[f"{m}_mean"].iloc[0])
        ax.axhline(acc, color=FULL_COLOUR, linestyle="--", linewidth=1,
                   label=f"full data ({acc:.1f})")
        ax.axhspan(acc - tolerance, acc + tolerance, color="grey", alpha=0.25, linewidth=0,
                   label=f"full data ± {tolerance:g} points")
        shown.append(acc)
    ax.set_ylim(*y_limits(shown))
    ax.set_xlabel("% of the training pool kept")
    ax.set_ylabel(f"{name} test accuracy (%)")
    ax.set_title(f"{name}, {method}" if method else name)
    ax.grid(alpha=0.3)
    if cells.empty:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize="small")


def curves_plot(curves: Mapping[tuple[str, float, int], Sequence[Mapping[str, Any]]],
                path: str, *, title: str) -> None:
    """Training loss per epoch, one line per trial ``(strategy, fraction, seed) -> history``
    (entries with ``epoch`` and ``loss``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = strategy_styles(list(dict.fromkeys(s for s, _, _ in curves)))
    fractions = sorted({f for _, f, _ in curves})
    for (strategy, fraction, seed), history in curves.items():
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["loss"] for h in history], color=styles[strategy]["color"],
                marker=styles[strategy]["marker"], markersize=4, linewidth=1.2,
                linestyle=LINESTYLES[fractions.index(fraction) % len(LINESTYLES)],
                label=f"{strategy} {fraction:.0%}" + (f" s{seed}" if seed else ""))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="x-small", ncol=2)
    else:
        ax.text(0.5, 0.5, "no training history found", ha="center", transform=ax.transAxes)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
