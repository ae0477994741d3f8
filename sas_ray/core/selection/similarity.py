"""Similarities of proxy embeddings, computed by blocked matrix products.

Rows of ``x`` (n, d) are the *mean unit-normalised view embeddings* the embed stage writes, so
``s_ij = x_i . x_j`` is the expected cosine similarity of augmented views of i and j (for
``views = 0``, the plain cosine). An optional floor clips every similarity below it,
``s_ij = max(x_i . x_j, floor)`` (the reference code uses cosine with floor 0).

Nothing here forms more than ``block_size`` rows of the n x n matrix at once unless asked to
(``similarity_matrix``), so memory stays O(block_size * n + n * d).
"""

from __future__ import annotations

import numpy as np

from sas_ray.errors import SasRayError


def as_compute(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float array of at least float32 precision (float16 is upcast)."""
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    return np.ascontiguousarray(x, dtype=dtype)


def check_embeddings(x: np.ndarray, what: str = "embeddings") -> None:
    """Raise a one-line :class:`SasRayError` unless ``x`` is a finite, non-empty (n, d) array."""
    if x.ndim != 2:
        raise SasRayError(f"{what} must be a 2-D array (n, d), got shape {x.shape}; pass one "
                          "embedding row per example")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise SasRayError(f"{what} are empty (shape {x.shape}); embed the dataset first "
                          "(sas-ray embed) and check that it has examples")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise SasRayError(f"{what}: {int(bad.sum())} of {x.shape[0]} rows hold NaN or inf "
                          f"(first at row {int(np.flatnonzero(bad)[0])}); re-run the embed stage "
                          "with a finite proxy checkpoint (float32, not a diverged run)")


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Unit-normalise each row: ``x_i / max(||x_i||, eps)`` (zero rows stay zero)."""
    x = as_compute(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def similarity_block(x: np.ndarray, rows: slice | np.ndarray, floor: float | None) -> np.ndarray:
    """Rows ``rows`` of the similarity matrix: ``max(x[rows] @ x.T, floor)``, shape (b, n)."""
    block = x[rows] @ x.T
    if floor is not None:
        np.maximum(block, floor, out=block)
    return block


def similarity_matrix(x: np.ndarray, floor: float | None) -> np.ndarray:
    """The full (n, n) similarity matrix ``max(x @ x.T, floor)``; O(n^2) memory."""
    return similarity_block(x, slice(None), floor)


def row_sums(x: np.ndarray, floor: float | None, block_size: int = 4096) -> np.ndarray:
    """``sum_j s_ij`` for every i (diagonal included), float64, shape (n,).

    Without a floor the sum is linear in x_j, so ``S 1 = x (x^T 1)``: O(n d) time and memory.
    With a floor the clipped matrix has no such factorisation; it is summed in row blocks of
    ``block_size``: O(n^2 d) time, O(block_size * n) memory.
    """
    x64 = x.astype(np.float64, copy=False)
    if floor is None:
        return x64 @ x64.sum(axis=0)
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        out[start:stop] = similarity_block(x, slice(start, stop), floor).sum(axis=1,
                                                                             dtype=np.float64)
    return out


def self_similarity(x: np.ndarray, floor: float | None) -> np.ndarray:
    """The diagonal ``s_ii = max(||x_i||^2, floor)``, float64, shape (n,)."""
    diag = np.einsum("ij,ij->i", x, x).astype(np.float64)
    return diag if floor is None else np.maximum(diag, floor)


class Columns:
    """Columns ``s[:, e]`` of one class's similarity matrix: precomputed when the (n, n)
    matrix fits in ``matrix_mb`` MiB, else computed on demand as ``max(x @ x_e, floor)``."""

    def __init__(self, x: np.ndarray, floor: float | None, matrix_mb: float):
        self.x, self.floor = x, floor
        n = x.shape[0]
        fits = n * n * x.dtype.itemsize <= matrix_mb * 2**20
        self.matrix = similarity_matrix(x, floor) if fits else None

    def __call__(self, e: int) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix[e]  # symmetric: row e == column e
        col = self.x @ self.x[e]
        return col if self.floor is None else np.maximum(col, self.floor, out=col)
