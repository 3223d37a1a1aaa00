"""A truly sparse fully connected layer: CSR weights, bias, and their optimizer state."""

from __future__ import annotations

import numpy as np

from ..backends import Backend, get_backend
from .csr import CSR
from .init import erdos_renyi


class SparseLayer:
    """``z_ob = W @ x_ib + b`` with W a :class:`~sparsekit.nn.csr.CSR` of shape (n_out, n_in).

    The momentum buffers ``vel_w`` (aligned with ``w.data``) and ``vel_b`` live with the layer so
    that every topology change can carry them along.

    ``w_forward`` (default None) is a hook for Top-KAST: when set to a CSR whose pattern is a
    subset of ``w``'s, the forward pass and the gradient to the inputs use it, while the weight
    gradient still covers every entry of ``w``.  Its owner keeps its values in step with ``w``;
    any topology change here (``set_topology``, ``compact``) clears it.

    Parameters
    ----------
    w : CSR
        Weights of shape ``(n_out, n_in)`` on the backend's device.
    bias : array of shape (n_out,), optional
        Zeros by default.
    backend : str or Backend, optional
        Where the layer lives; default as :func:`sparsekit.get_backend`.
    """

    def __init__(self, w: CSR, bias=None, backend: Backend | str | None = None) -> None:
        self.backend = get_backend(backend)
        xp = self.backend.xp
        self.backend.check_array("w.data", w.data)
        self.w = w
        self.b = (xp.zeros(w.shape[0], dtype=w.dtype) if bias is None
                  else self.backend.asarray(bias, dtype=w.dtype))
        if self.b.shape != (w.shape[0],):
            raise ValueError(f"bias has shape {self.b.shape}, expected ({w.shape[0]},)")
        self.vel_w = xp.zeros_like(w.data)
        self.vel_b = xp.zeros_like(self.b)
        self.w_forward: CSR | None = None

    @classmethod
    def random(cls, n_in: int, n_out: int, epsilon: float = 20.0, *, rng=None, backend=None,
               dtype=np.float32, init: str = "he_uniform", fan_in: str = "dense") -> SparseLayer:
        """An Erdős–Rényi layer (see :func:`sparsekit.nn.init.erdos_renyi`) with zero bias."""
        be = get_backend(backend)
        w = erdos_renyi(n_out, n_in, epsilon, rng=rng, backend=be, dtype=dtype, init=init,
                        fan_in=fan_in)
        return cls(w, backend=be)

    @property
    def in_features(self) -> int:
        """Number of inputs (columns of W)."""
        return self.w.shape[1]

    @property
    def out_features(self) -> int:
        """Number of output neurons (rows of W)."""
        return self.w.shape[0]

    @property
    def nnz(self) -> int:
        """Number of connections."""
        return self.w.nnz

    # Interop (sparsekit.io.interop does the work): W as (n_out, n_in), as torch.nn.Linear.weight.
    def to_scipy(self):
        """W as a ``scipy.sparse.csr_matrix`` host copy (see :func:`sparsekit.io.interop.to_scipy`)."""
        from ..io.interop import to_scipy

        return to_scipy(self)

    def to_torch(self):
        """W as a ``torch.sparse_csr_tensor`` copy (see :func:`sparsekit.io.interop.to_torch`)."""
        from ..io.interop import to_torch

        return to_torch(self)

    @classmethod
    def from_scipy(cls, matrix, bias=None, *, backend=None, dtype=None) -> SparseLayer:
        """A layer from a ``scipy.sparse`` W (see :func:`sparsekit.io.interop.from_scipy`)."""
        from ..io.interop import from_scipy

        return from_scipy(matrix, bias, backend=backend, dtype=dtype)

    @classmethod
    def from_torch(cls, tensor, bias=None, *, backend=None, dtype=None) -> SparseLayer:
        """A layer from a sparse torch W (see :func:`sparsekit.io.interop.from_torch`)."""
        from ..io.interop import from_torch

        return from_torch(tensor, bias, backend=backend, dtype=dtype)

    def forward(self, x_ib):
        """Pre-activation without the bias (hidden layers fuse the bias into the activation)."""
        return self.backend.matmul(x_ib, self.w if self.w_forward is None else self.w_forward)

    def backward(self, x_ib, dz_ob, need_dx: bool = True):
        """``(dx_ib or None, grad_w, grad_b)`` for the upstream gradient ``dz_ob``."""
        if self.w_forward is not None:  # inputs saw w_forward; the gradient covers all of w
            dx = self.backend.matmul_t(dz_ob, self.w_forward) if need_dx else None
            return dx, self.backend.weight_grad(x_ib, dz_ob, self.w), dz_ob.sum(axis=1)
        dx, gw = self.backend.backward(x_ib, dz_ob, self.w, need_dx)
        return dx, gw, dz_ob.sum(axis=1)

    def set_topology(self, w: CSR, vel_w) -> None:
        """Install a new pattern and its aligned velocity (from ``Backend.rebuild``)."""
        if vel_w.shape != w.data.shape:
            raise ValueError("velocity must be aligned with the new weights")
        self.w, self.vel_w, self.w_forward = w, vel_w, None

    def compact(self, row_mask=None, col_mask=None) -> None:
        """Drop output neurons (rows) and/or inputs (columns) where the masks are false."""
        xp = self.backend.xp
        w = self.w
        rm = xp.ones(w.shape[0], bool) if row_mask is None else self.backend.asarray(row_mask)
        cm = xp.ones(w.shape[1], bool) if col_mask is None else self.backend.asarray(col_mask)
        keep = rm[w.row_ids()] & cm[w.indices]
        new_row = xp.cumsum(rm) - 1
        new_col = xp.cumsum(cm) - 1
        rows = new_row[w.row_ids()[keep]]
        n_rows, n_cols = int(rm.sum()), int(cm.sum())
        idt = w.indices.dtype
        indptr = xp.zeros(n_rows + 1, dtype=idt)
        indptr[1:] = xp.cumsum(xp.bincount(rows, minlength=n_rows)).astype(idt)
        self.w = CSR(indptr, new_col[w.indices[keep]].astype(idt), w.data[keep],
                     (n_rows, n_cols), check=False)
        self.vel_w = self.vel_w[keep]
        self.b, self.vel_b = self.b[rm], self.vel_b[rm]
        self.w_forward = None

    def __repr__(self) -> str:
        return f"SparseLayer({self.in_features} -> {self.out_features}, nnz={self.nnz})"
