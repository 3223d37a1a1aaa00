"""Products through cuSPARSE: the forward and input-gradient SpMM of CuPy's ``cupyx``.

``GpuBackend(products="cusparse")`` runs the forward and input-gradient products through
``cupyx.cusparse.spmm`` (the weight gradient stays on the custom SDDMM kernel);
``products="cupy"`` also replaces the SDDMM by the generic gathered dot product of
:class:`~sparsekit.backends.base.Backend`, so no custom kernel runs at all.  Both exist so the
custom kernels can be A/B-tested against the vendor library on the same arrays (issue #5), and
as a fallback should a kernel misbehave on some device.

Layout: cuSPARSE's generic SpMM (as wrapped by CuPy) takes and returns column-major dense
matrices.  A feature-major, C-ordered ``x_ib`` of shape (n_in, B) is exactly the transpose of a
column-major (B, n_in) matrix, so ``spmm(W, x_ib.T, transb=True)`` reads it without a copy; the
(n_out, B) result comes back column-major and costs one copy into C order.
"""

from __future__ import annotations

import weakref

from ..nn.csr import CSR

# The cupyx matrix built for a CSR, and the value array it shares.  Built once per pattern (its
# constructor synchronises); the optimizer updates ``w.data`` in place, which the shared array
# sees, and a CSR with new values (``with_data``) is a new key.
_MATRICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cusparse_matrix(w: CSR):
    """A ``cupyx.scipy.sparse.csr_matrix`` view of ``w`` sharing its value array."""
    import cupyx.scipy.sparse as cusp

    hit = _MATRICES.get(w)
    if hit is not None and hit[0] is w.data:
        return hit[1]
    m = cusp.csr_matrix((w.data, w.indices, w.indptr), shape=w.shape)
    m.has_canonical_format = True  # validated by the CSR container: sorted, unique
    _MATRICES[w] = (w.data, m)
    return m


def matmul(w: CSR, x_ib):
    """``W @ x_ib`` through cuSPARSE SpMM."""
    import cupyx.cusparse

    xp = w.xp
    n_out, n_in = w.shape
    if n_out == 0 or n_in == 0 or x_ib.shape[1] == 0 or w.nnz == 0:
        return xp.zeros((n_out, x_ib.shape[1]), dtype=w.dtype)
    y = cupyx.cusparse.spmm(cusparse_matrix(w), x_ib.T, transb=True)
    return xp.ascontiguousarray(y)


def matmul_t(w: CSR, dy_ob):
    """``W.T @ dy_ob`` through cuSPARSE SpMM on the transposed operator."""
    import cupyx.cusparse

    xp = w.xp
    n_out, n_in = w.shape
    if n_out == 0 or n_in == 0 or dy_ob.shape[1] == 0 or w.nnz == 0:
        return xp.zeros((n_in, dy_ob.shape[1]), dtype=w.dtype)
    dx = cupyx.cusparse.spmm(cusparse_matrix(w), dy_ob.T, transa=True, transb=True)
    return xp.ascontiguousarray(dx)
