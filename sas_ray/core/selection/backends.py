"""Array backends for the SAS greedy: numpy on the CPU, torch on the CPU or a CUDA device.

The greedy (:mod:`~sas_ray.core.selection.sas`) is written once against arrays that support
``+ - * /``, comparison, slicing and fancy indexing (numpy arrays and torch tensors both do);
a backend supplies the rest: moving ``x`` to its device, similarity blocks
``max(a @ b.T, floor)``, row sums, row-wise argmax, top-k and copies back to numpy.

Same order on both: every step is ``e = argmax(g)`` then ``g -= s[e]``, with the gains g in
float64 and the similarities in the compute dtype of x (float32, or float64 for float64
input). Elementwise float64 arithmetic is exact IEEE arithmetic on every backend, and
``argmax`` returns the *first* maximal index in numpy and in torch (CPU and CUDA, documented
for ``torch.argmax``), so ties (equal gains, e.g. duplicate rows) go to the lowest position in
the class, i.e. the lowest row. The only source of difference is the rounding of the
similarity products themselves (numpy's BLAS and torch's MKL/cuBLAS may sum the d products
in different orders, about 1e-7 relative in float32): two gains closer than that may swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sas_ray.core.selection.similarity import as_compute, row_sums
from sas_ray.errors import SasRayError

Array = Any  # np.ndarray or torch.Tensor


class Backend(Protocol):
    name: str

    def asarray(self, x: np.ndarray) -> Array:
        """``x`` on the device in its compute dtype (:func:`as_compute`)."""

    def full(self, shape: tuple[int, ...], value: float, like: Array | None = None) -> Array:
        """A float64 array of ``value`` (``like``'s dtype when given)."""

    def arange(self, n: int) -> Array: ...

    def index(self, rows: np.ndarray) -> Array:
        """Host int64 indices as an index array on the device."""

    def gram(self, a: Array, b: Array, floor: float | None) -> Array:
        """``max(a @ b.T, floor)``, shape (len(a), len(b)), in the compute dtype."""

    def row_sums(self, x: Array, floor: float | None, block_size: int) -> Array:
        """``sum_j s_ij`` (diagonal included), float64 (see :func:`similarity.row_sums`)."""

    def matrix_row_sums(self, s: Array) -> Array:
        """Row sums of a similarity matrix in float64."""

    def argmax(self, g: Array) -> int:
        """Index of the first maximum of a vector."""

    def argmax_rows(self, g: Array) -> Array:
        """First maximum of each row, shape (rows,), on the device."""

    def top(self, g: Array, k: int) -> np.ndarray:
        """Indices of k largest entries (any order among equals), as numpy int64."""

    def copy(self, a: Array) -> Array: ...

    def numpy(self, a: Array) -> np.ndarray: ...


class NumpyBackend:
    """numpy arrays in this process (BLAS threads as configured)."""

    name = "numpy"

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return as_compute(x)

    def full(self, shape: tuple[int, ...], value: float, like: Array | None = None) -> Array:
        return np.full(shape, value, dtype=np.float64 if like is None else like.dtype)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n)

    def index(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def gram(self, a: np.ndarray, b: np.ndarray, floor: float | None) -> np.ndarray:
        out = a @ b.T
        return out if floor is None else np.maximum(out, floor, out=out)

    def row_sums(self, x: np.ndarray, floor: float | None, block_size: int) -> np.ndarray:
        return row_sums(x, floor, block_size)

    def matrix_row_sums(self, s: np.ndarray) -> np.ndarray:
        return s.sum(axis=1, dtype=np.float64)

    def argmax(self, g: np.ndarray) -> int:
        return int(g.argmax())

    def argmax_rows(self, g: np.ndarray) -> np.ndarray:
        return g.argmax(axis=1)

    def top(self, g: np.ndarray, k: int) -> np.ndarray:
        return np.argpartition(-g, k - 1)[:k] if k < g.shape[0] else np.arange(g.shape[0])

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)


@dataclass
class TorchBackend:
    """torch tensors on ``device`` (``cpu`` or ``cuda[:i]``)."""

    device: str
    name = "torch"

    def __post_init__(self) -> None:
        import torch

        self.torch = torch
        self.dev = torch.device(self.device)

    def asarray(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(as_compute(x)).to(self.dev)

    def full(self, shape: tuple[int, ...], value: float, like: Any = None) -> Any:
        dtype = self.torch.float64 if like is None else like.dtype
        return self.torch.full(shape, value, dtype=dtype, device=self.dev)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.dev)

    def index(self, rows: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.dev)

    def gram(self, a: Any, b: Any, floor: float | None) -> Any:
        out = a @ b.T
        return out if floor is None else out.clamp_(min=floor)

    def row_sums(self, x: Any, floor: float | None, block_size: int) -> Any:
        x64 = x.double()
        if floor is None:  # S 1 = x (x^T 1): O(n d)
            return x64 @ x64.sum(dim=0)
        return self.torch.cat([self.gram(x[i:i + block_size], x, floor).sum(dim=1,
                                                                           dtype=x64.dtype)
                               for i in range(0, x.shape[0], block_size)])

    def matrix_row_sums(self, s: Any) -> Any:
        return s.sum(dim=1, dtype=self.torch.float64)

    def argmax(self, g: Any) -> int:
        return int(g.argmax())

    def argmax_rows(self, g: Any) -> Any:
        return g.argmax(dim=1)

    def top(self, g: Any, k: int) -> np.ndarray:
        return g.topk(k, sorted=False).indices.cpu().numpy().astype(np.int64)

    def copy(self, a: Any) -> Any:
        return a.clone()

    def numpy(self, a: Any) -> np.ndarray:
        return a.cpu().numpy()


def cuda_available() -> bool:
    """Whether torch sees a CUDA device in this process (False without torch.cuda)."""
    import torch

    return torch.cuda.is_available()


def get_backend(name: str, device: str = "auto") -> Backend:
    """The backend for ``select.backend`` / ``select.device``.

    ``auto``: torch on the first CUDA device when this process sees one, else numpy.
    ``torch`` with device ``auto`` uses CUDA when visible, else the CPU.
    """
    if name == "auto":
        name = "torch" if cuda_available() else "numpy"
    if name == "numpy":
        return NumpyBackend()
    if name != "torch":
        raise SasRayError(f"unknown select.backend '{name}'; use auto, numpy or torch")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise SasRayError("select.device cuda but torch sees no CUDA device here; use "
                          "--select.device auto or cpu")
    return TorchBackend(device)
