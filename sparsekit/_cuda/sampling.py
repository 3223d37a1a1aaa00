"""Positions absent from a CSR pattern, on the GPU: membership tests.

The twin of :mod:`sparsekit._cython.sampling`, launching ``kernels/sampling.cu``.  The uniform
sampler itself runs on the host (:func:`sparsekit.backends.host.sample_uniform_rows`), drawing
the same counter-based streams as the CPU kernel, so a seed gives the same positions.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from . import _module as km
from ._checks import check_pattern, check_vector, to_host


def contains(indptr, indices, rows, cols):
    """Boolean mask: is position ``(rows[j], cols[j])`` present in the CSR pattern?

    ``rows`` and ``cols`` are int64; rows are bounds-checked (one synchronisation), columns need
    not be (an out-of-range column is simply absent).
    """
    n_rows = check_pattern(indptr, indices, None)
    check_vector("rows", rows, (np.int64,))
    check_vector("cols", cols, (np.int64,))
    m = rows.shape[0]
    if cols.shape[0] != m:
        raise ValueError(f"rows has {m} entries but cols has {cols.shape[0]}")
    xp = array_module(indices)
    if m:
        lo, hi = (int(v) for v in to_host(xp.stack([rows.min(), rows.max()])))
        if lo < 0 or hi >= n_rows:
            raise ValueError(f"rows must lie in [0, {n_rows})")
    found = xp.zeros(m, dtype=bool)
    if m == 0 or indices.shape[0] == 0:
        return found
    fn = km.get_kernel("sampling.cu", "sk_contains",
                       km.c_type(km.INDEX_TYPES, indices.dtype, "indices"))
    km.launch(fn, m, km.BLOCK, (indptr, indices, rows, cols, found, np.int64(m)))
    return found
