"""Significance tests over seeds, with numpy and math only (no scipy).

* Welch's t-test of mean(a) - mean(b): ``t = (ma - mb) / sqrt(va/na + vb/nb)`` with the
  Welch-Satterthwaite degrees of freedom ``(va/na + vb/nb)^2 / ((va/na)^2/(na-1) +
  (vb/nb)^2/(nb-1))`` (v: sample variances, ddof 1).
* Paired t-test of the differences d_i = a_i - b_i (same seed on both sides):
  ``t = mean(d) / (sd(d) / sqrt(n))`` with n - 1 degrees of freedom, and the confidence
  interval ``mean(d) +- t*_{n-1} sd(d) / sqrt(n)`` (t*: the two-sided critical value).
* Spearman's rho: the Pearson correlation of average ranks (ties share their mean rank),
  p from ``t = rho sqrt((n - 2) / (1 - rho^2))`` with n - 2 degrees of freedom.

Two-sided p-values of Student's t come from the regularised incomplete beta function:
``p = I_{df / (df + t^2)}(df / 2, 1 / 2)``, evaluated by its continued fraction (modified
Lentz, Numerical Recipes 6.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

NAN = math.nan


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return NAN
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, level: float = 0.95) -> float:
    """The t* with ``P(|T| > t*) = 1 - level`` for Student's t with ``df`` degrees of freedom:
    :func:`t_pvalue` falls monotonically in t, so bisection on it (60 halvings of an interval
    doubled until it brackets t*) gives t* to double precision."""
    if math.isnan(df) or df <= 0:
        return NAN
    alpha, lo, hi = 1.0 - level, 0.0, 1.0
    while t_pvalue(hi, df) > alpha:
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_pvalue(mid, df) > alpha else (lo, mid)
    return 0.5 * (lo + hi)


def _t_from(gap: float, se2: float, df: float) -> dict[str, float]:
    """t, df and p for a difference ``gap`` with squared standard error ``se2``."""
    if se2 == 0:
        t = math.copysign(math.inf, gap) if gap else 0.0
        return {"t": t, "df": df, "p": 0.0 if gap else 1.0}
    t = gap / math.sqrt(se2)
    return {"t": t, "df": df, "p": t_pvalue(t, df)}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Welch's t-test of mean(a) - mean(b): ``gap``, ``t``, ``df``, two-sided ``p`` (NaN
    with fewer than 2 values on a side)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    gap = float(x.mean() - y.mean()) if x.size and y.size else NAN
    if x.size < 2 or y.size < 2:
        return {"gap": gap, "t": NAN, "df": NAN, "p": NAN}
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1)) if va + vb else \
        float(x.size + y.size - 2)
    return {"gap": gap, **_t_from(gap, float(va + vb), float(df))}


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Paired t-test of ``a[i] - b[i]``: ``gap`` (mean difference), ``t``, ``df``, ``p``,
    ``n`` and the ``level`` confidence interval ``low``..``high`` of the mean difference
    (NaN statistics with fewer than 2 pairs)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    gap = float(d.mean()) if d.size else NAN
    if d.size < 2:
        return {"gap": gap, "t": NAN, "df": NAN, "p": NAN, "n": int(d.size), "low": NAN,
                "high": NAN}
    se2, df = float(d.var(ddof=1) / d.size), float(d.size - 1)
    half = t_critical(df, level) * math.sqrt(se2)
    return {"gap": gap, **_t_from(gap, se2, df), "n": int(d.size), "low": gap - half,
            "high": gap + half}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (n,), ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
             ) -> dict[str, Any]:
    """Spearman's ``rho`` of two equally long vectors, its two-sided ``p`` and ``n``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = int(x.size)
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    rho = float((rx * ry).sum() / denom) if denom > 0 else NAN
    if math.isnan(rho) or n < 3:
        return {"rho": rho, "p": NAN, "n": n}
    if abs(rho) >= 1.0:
        return {"rho": rho, "p": 0.0, "n": n}
    return {"rho": rho, "p": t_pvalue(rho * math.sqrt((n - 2) / (1 - rho * rho)), n - 2),
            "n": n}
