"""A truly sparse fully connected layer: CSR weights, bias, and their optimizer state."""

from __future__ import annotations

import numpy as np

from ..backends import Backend, get_backend
from .csr import CSR
from .init import erdos_renyi


class SparseLayer:
    """``z_ob = W @ x_ib + b`` with W a :class:`~sparsekit.nn.csr.CSR` of shape (n_out, n_in).

    The optimizer's per-connection state lives with the layer, in named slots: ``state_w[name]``
    is aligned with ``w.data`` and ``state_b[name]`` with ``b`` (momentum SGD registers
    ``"momentum"``, Adam ``"exp_avg"`` and ``"exp_avg_sq"``; see :meth:`ensure_state`).  Every
    topology change — :meth:`rebuild`, :meth:`set_topology`, :meth:`compact` — carries every
    slot along: kept connections keep their state, new ones start at 0.

    ``w_forward`` (default None) is a hook for Top-KAST: when set to a CSR whose pattern is a
    subset of ``w``'s, the forward pass and the gradient to the inputs use it, while the weight
    gradient still covers every entry of ``w``.  Its owner keeps its values in step with ``w``;
    any topology change here clears it.

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
        self.state_w: dict[str, object] = {}  # optimizer slots aligned with w.data
        self.state_b: dict[str, object] = {}  # ... and with b
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

    # --- optimizer state and topology changes --------------------------------------------------
    def ensure_state(self, slots) -> None:
        """Hold exactly the optimizer slots ``slots``: existing ones are kept, missing ones start
        at zero, others are dropped (a different optimizer took over)."""
        xp = self.backend.xp
        self.state_w = {k: self.state_w[k] if k in self.state_w else xp.zeros_like(self.w.data)
                        for k in slots}
        self.state_b = {k: self.state_b[k] if k in self.state_b else xp.zeros_like(self.b)
                        for k in slots}

    def set_topology(self, w: CSR, state_w: dict | None = None) -> None:
        """Install a new pattern with its aligned optimizer state (``None``: every slot 0)."""
        if state_w is None:
            state_w = {k: self.backend.xp.zeros_like(w.data) for k in self.state_w}
        if set(state_w) != set(self.state_w):
            raise ValueError(f"state_w must hold the slots {sorted(self.state_w)}, "
                             f"got {sorted(state_w)}")
        for name, arr in state_w.items():
            if arr.shape != w.data.shape:
                raise ValueError(f"optimizer state {name!r} must be aligned with the new weights")
        self.w, self.state_w, self.w_forward = w, dict(state_w), None

    def rebuild(self, keep_mask, new_rows, new_cols, new_vals) -> None:
        """Drop the entries where ``keep_mask`` is false and insert ``(new_rows, new_cols)``
        with values ``new_vals`` (:meth:`Backend.rebuild`); every optimizer slot is permuted
        alike, with 0 at the new connections."""
        names = list(self.state_w)
        new_w, states = self.backend.rebuild(self.w, keep_mask, new_rows, new_cols, new_vals,
                                             *self.state_w.values())
        self.set_topology(new_w, dict(zip(names, states)))

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
        self.state_w = {k: v[keep] for k, v in self.state_w.items()}
        self.b = self.b[rm]
        self.state_b = {k: v[rm] for k, v in self.state_b.items()}
        self.w_forward = None

    def __repr__(self) -> str:
        return f"SparseLayer({self.in_features} -> {self.out_features}, nnz={self.nnz})"
