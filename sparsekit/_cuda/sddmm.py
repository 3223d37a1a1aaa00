"""Weight gradients restricted to a set of positions (SDDMM), on the GPU.

The twin of :mod:`sparsekit._cython.sddmm`:
``grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]`` on W's own pattern (:func:`weight_grad`,
one warp per row of W) or on an arbitrary candidate list (:func:`sampled_grad`, one warp per
group of 32 candidates), launching the kernels of ``kernels/sddmm.cu``.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from . import _module as km
from ._checks import check_batch_operand, check_pattern, check_vector, to_host


def weight_grad(indptr, indices, x_ib, dy_ob, n_cols: int):
    """Gradient of W on its own CSR pattern, in W's CSR order.

    Parameters
    ----------
    indptr, indices : cupy.ndarray
        Validated CSR pattern of W, shape (n_out, n_in).
    x_ib : cupy.ndarray of shape (n_in, n_batch)
        Layer input, feature-major, C-contiguous.
    dy_ob : cupy.ndarray of shape (n_out, n_batch)
        Gradient of the loss with respect to the layer output, same dtype as ``x_ib``.
    n_cols : int
        Number of columns of W (= n_in).

    Returns
    -------
    grad : cupy.ndarray of shape (nnz,)
    """
    n_rows = check_pattern(indptr, indices, None)
    n_batch = x_ib.shape[1] if getattr(x_ib, "ndim", 0) == 2 else -1
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch, x_ib.dtype)
    value_t = km.c_type(km.VALUE_TYPES, x_ib.dtype, "x_ib")
    index_t = km.c_type(km.INDEX_TYPES, indices.dtype, "indices")
    xp = array_module(x_ib)
    nnz = indices.shape[0]
    if nnz == 0 or n_batch == 0:
        return xp.zeros(nnz, dtype=x_ib.dtype)
    grad = xp.empty(nnz, dtype=x_ib.dtype)  # every slot lies in some row: all are written
    fn = km.get_kernel("sddmm.cu", "sk_weight_grad", value_t, index_t)
    km.launch(fn, n_rows, km.WARPS_PER_BLOCK,
              (indptr, indices, x_ib, dy_ob, grad, np.int64(n_rows), np.int64(n_batch)))
    return grad


def sampled_grad(x_ib, dy_ob, rows, cols):
    """Gradient at an arbitrary list of (row, col) positions (candidate connections).

    ``rows`` index output neurons (rows of ``dy_ob``) and ``cols`` input neurons (rows of
    ``x_ib``); both int32 or both int64.  Bounds are checked with one device reduction (a
    single synchronisation), since the list comes from the caller, not from a validated CSR.
    """
    n_batch = x_ib.shape[1] if getattr(x_ib, "ndim", 0) == 2 else -1
    check_batch_operand("x_ib", x_ib, None, n_batch)
    check_batch_operand("dy_ob", dy_ob, None, n_batch, x_ib.dtype)
    value_t = km.c_type(km.VALUE_TYPES, x_ib.dtype, "x_ib")
    check_vector("rows", rows, (np.int32, np.int64))
    check_vector("cols", cols, (rows.dtype,))
    index_t = km.c_type(km.INDEX_TYPES, rows.dtype, "rows")
    m = rows.shape[0]
    if cols.shape[0] != m:
        raise ValueError(f"rows has {m} entries but cols has {cols.shape[0]}")
    _check_candidates(x_ib, dy_ob, rows, cols)
    xp = array_module(x_ib)
    if m == 0 or n_batch == 0:
        return xp.zeros(m, dtype=x_ib.dtype)
    grad = xp.empty(m, dtype=x_ib.dtype)
    fn = km.get_kernel("sddmm.cu", "sk_sampled_grad", value_t, index_t)
    km.launch(fn, -(-m // 32), km.WARPS_PER_BLOCK,
              (x_ib, dy_ob, rows, cols, grad, np.int64(m), np.int64(n_batch)))
    return grad


def _check_candidates(x_ib, dy_ob, rows, cols) -> None:
    """Raise ValueError unless every row indexes ``dy_ob`` and every col ``x_ib`` (one sync)."""
    if rows.shape[0] == 0:
        return
    xp = array_module(rows)
    lo_r, hi_r, lo_c, hi_c = (int(v) for v in to_host(
        xp.stack([rows.min(), rows.max(), cols.min(), cols.max()]).astype(xp.int64)))
    if lo_r < 0 or hi_r >= dy_ob.shape[0]:
        raise ValueError(f"rows must lie in [0, {dy_ob.shape[0]})")
    if lo_c < 0 or hi_c >= x_ib.shape[0]:
        raise ValueError(f"cols must lie in [0, {x_ib.shape[0]})")
