"""CSR rebuild after a topology change, on the GPU.

The twin of :mod:`sparsekit._cython.rebuild`, launching ``kernels/rebuild.cu``.  :func:`merge`
merges the kept entries of W with a list of new positions sorted by (row, col) and records for
every output slot where its value comes from (``src``); :func:`gather` then permutes the values
and every aligned state array by that one map.  Unlike the CPU's row-per-thread merge, each
entry computes its own output slot from ranks, so a dense row of 10^6 entries costs no more
than many short ones.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from . import _module as km
from ._checks import check_pattern, check_vector, to_host


def merge(indptr, indices, keep, new_rows, new_cols, n_cols: int, out_indptr, out_indices, src):
    """Merge the kept entries of a CSR pattern with new positions sorted by (row, col).

    Writes the new pattern into ``out_indptr``/``out_indices`` and into ``src`` the origin of
    each slot: ``src[p] = k`` for old slot k, ``-1 - j`` for new position j.  Returns 0 for a
    valid result and 1 when a new position collides with a kept one or repeats.
    """
    n_rows = check_pattern(indptr, indices, None)
    nnz = indices.shape[0]
    check_vector("keep", keep, (np.bool_,), nnz)
    check_vector("new_rows", new_rows, (np.int64,))
    m = new_rows.shape[0]
    check_vector("new_cols", new_cols, (np.int64,), m)
    check_vector("out_indptr", out_indptr, (indices.dtype,), n_rows + 1)
    check_vector("out_indices", out_indices, (indices.dtype,))
    check_vector("src", src, (np.int64,), out_indices.shape[0])
    xp = array_module(indices)
    ckeep = xp.zeros(nnz + 1, dtype=xp.int64)
    ckeep[1:] = xp.cumsum(keep, dtype=xp.int64)
    # One synchronisation for every check that needs device data.
    facts = [ckeep[-1]]
    if m:
        facts += [new_rows.min() < 0, new_rows.max() >= n_rows, new_cols.min() < 0,
                  new_cols.max() >= n_cols]
        if m > 1:
            r, c = new_rows, new_cols
            facts.append(xp.any((r[1:] < r[:-1]) | ((r[1:] == r[:-1]) & (c[1:] < c[:-1]))))
    facts = [int(v) for v in to_host(xp.stack([xp.asarray(f, dtype=xp.int64) for f in facts]))]
    n_kept = facts[0]
    if m:
        if facts[1] or facts[2]:
            raise ValueError(f"new_rows must lie in [0, {n_rows})")
        if facts[3] or facts[4]:
            raise ValueError(f"new_cols must lie in [0, {n_cols})")
        if m > 1 and facts[5]:
            raise ValueError("new positions must be sorted by (row, col)")
    if out_indices.shape[0] != n_kept + m:
        raise ValueError(f"out_indices/src have {out_indices.shape[0]} entries, expected "
                         f"{n_kept + m}")
    new_ptr = xp.zeros(n_rows + 1, dtype=xp.int64)
    if m:
        new_ptr[1:] = xp.cumsum(xp.bincount(new_rows, minlength=n_rows))
    kept_per_row = ckeep[indptr[1:]] - ckeep[indptr[:-1]]
    out_indptr[0] = 0
    out_indptr[1:] = xp.cumsum(kept_per_row + (new_ptr[1:] - new_ptr[:-1])).astype(
        out_indptr.dtype)
    bad = xp.zeros(1, dtype=xp.int32)
    index_t = km.c_type(km.INDEX_TYPES, indices.dtype, "indices")
    if nnz and n_kept:
        km.launch(km.get_kernel("rebuild.cu", "sk_place_old", index_t), nnz, km.BLOCK,
                  (indptr, indices, keep, ckeep, new_ptr, new_cols, out_indptr, out_indices, src,
                   bad, np.int64(n_rows), np.int64(nnz)))
    if m:
        km.launch(km.get_kernel("rebuild.cu", "sk_place_new", index_t), m, km.BLOCK,
                  (indptr, indices, keep, ckeep, new_ptr, new_rows, new_cols, out_indptr,
                   out_indices, src, bad, np.int64(m)))
    return int(to_host(bad)[0])


def gather(src, old, new_vals=None):
    """``out[p] = old[src[p]]`` for kept slots, ``new_vals[-1 - src[p]]`` (or 0) for new ones."""
    check_vector("src", src, (np.int64,))
    check_vector("old", old)
    xp = array_module(old)
    n = src.shape[0]
    has_new = new_vals is not None
    if has_new:
        new_vals = xp.ascontiguousarray(new_vals.astype(old.dtype, copy=False))
    if n:
        lo, hi = (int(v) for v in to_host(xp.stack([src.min(), src.max()])))
        n_new = new_vals.shape[0] if has_new else 0
        if hi >= old.shape[0] or (lo < 0 and has_new and -1 - lo >= n_new):
            raise ValueError("src refers past the end of the old or new value arrays")
    out = xp.empty(n, dtype=old.dtype)
    if n == 0:
        return out
    if np.dtype(old.dtype) not in km.GATHER_TYPES:  # flags, small ints: CuPy's own indexing
        kept = src >= 0
        out[...] = 0
        out[kept] = old[src[kept]]
        if has_new:
            out[~kept] = new_vals[-1 - src[~kept]]
        return out
    fn = km.get_kernel("rebuild.cu", "sk_gather", km.GATHER_TYPES[np.dtype(old.dtype)])
    km.launch(fn, n, km.BLOCK,
              (src, old, new_vals if has_new else old, np.int32(has_new), out, np.int64(n)))
    return out
