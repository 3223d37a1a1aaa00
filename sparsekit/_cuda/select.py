"""Selections on the GPU: the indices of the k largest or smallest values.

The twin of :mod:`sparsekit._cython.select`.  The k-th value comes from CuPy's radix sort rather
than a custom kernel; ties go to the lowest indices as on the CPU, so the result is the same.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from ._checks import check_vector


def select(values, k: int, largest: bool = True):
    """Indices of the ``k`` largest (or smallest) values, in increasing index order.

    The k-th value comes from one radix sort of the keys (CuPy's sort, O(n) passes); one pass
    then collects the indices.  Ties at the threshold go to the lowest indices, so the result is
    the CPU backend's, bit for bit.
    """
    check_vector("values", values, (np.float32, np.float64))
    xp = array_module(values)
    n = values.shape[0]
    if k < 0 or k > n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    if k == 0:
        return xp.empty(0, dtype=xp.int64)
    if k == n:
        return xp.arange(n, dtype=xp.int64)
    keys = -values if largest else values
    t = xp.sort(keys)[k - 1]
    mask = keys < t
    n_tie = k - int(xp.count_nonzero(mask))
    mask[xp.flatnonzero(keys == t)[:n_tie]] = True
    return xp.flatnonzero(mask).astype(xp.int64)
