"""Kernels for topology changes: selection, membership, CSR rebuild.

A rebuild merges the kept entries of W with a row-sorted list of new positions, row by row (each
thread owns its rows), and records for every output slot where its value comes from, so the
values and every aligned state array (momentum, ...) are permuted by one shared map.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t
from libcpp.algorithm cimport nth_element

import numpy as np

from ._types cimport floating, index_t
from ._checks import check_pattern, check_threads


def select(const floating[::1] values, Py_ssize_t k, bint largest=True):
    """Indices of the ``k`` largest (or smallest) values, in increasing index order.

    O(n) on average: ``std::nth_element`` (introselect) finds the k-th value, one pass collects
    the indices.  Ties at the threshold go to the lowest indices, so the result is deterministic.
    """
    cdef Py_ssize_t n = values.shape[0], i, n_strict = 0, n_tie, j = 0
    if k < 0 or k > n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    out = np.empty(k, dtype=np.int64)
    if k == 0:
        return out
    if k == n:
        out[:] = np.arange(n)
        return out
    buf_a = np.array(values, copy=True)
    cdef floating[::1] buf = buf_a
    cdef int64_t[::1] res = out
    cdef floating t
    cdef bint lg = largest
    with nogil:
        if lg:
            for i in range(n):
                buf[i] = -buf[i]
        nth_element(&buf[0], &buf[0] + (k - 1), &buf[0] + n)
        t = -buf[k - 1] if lg else buf[k - 1]
        for i in range(n):
            if (values[i] > t) if lg else (values[i] < t):
                n_strict = n_strict + 1
        n_tie = k - n_strict
        for i in range(n):
            if (values[i] > t) if lg else (values[i] < t):
                res[j] = i
                j = j + 1
            elif values[i] == t and n_tie > 0:
                res[j] = i
                j = j + 1
                n_tie = n_tie - 1
    return out


def contains(const index_t[::1] indptr, const index_t[::1] indices,
             const int64_t[::1] rows, const int64_t[::1] cols,
             int num_threads=0):
    """Boolean mask: is position ``(rows[j], cols[j])`` present in the CSR pattern?"""
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef Py_ssize_t m = rows.shape[0], j, lo, hi, mid
    if cols.shape[0] != m:
        raise ValueError(f"rows has {m} entries but cols has {cols.shape[0]}")
    if m and (np.asarray(rows).min() < 0 or np.asarray(rows).max() >= n_rows):
        raise ValueError(f"rows must lie in [0, {n_rows})")
    cdef int nt = check_threads(num_threads)
    out = np.zeros(m, dtype=np.uint8)
    cdef uint8_t[::1] found = out
    cdef int64_t c
    if m == 0 or indices.shape[0] == 0:
        return out.view(bool)
    with nogil:
        for j in prange(m, schedule="static", num_threads=nt):
            lo = indptr[rows[j]]
            hi = indptr[rows[j] + 1]
            c = cols[j]
            while lo < hi:
                mid = (lo + hi) >> 1
                if indices[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            found[j] = lo < indptr[rows[j] + 1] and indices[lo] == c
    return out.view(bool)


def merge(const index_t[::1] indptr, const index_t[::1] indices, const uint8_t[::1] keep,
          const int64_t[::1] new_rows, const int64_t[::1] new_cols, Py_ssize_t n_cols,
          index_t[::1] out_indptr, index_t[::1] out_indices, int64_t[::1] src,
          int num_threads=0):
    """Merge the kept entries of a CSR pattern with new positions sorted by (row, col).

    Writes the new pattern into ``out_indptr``/``out_indices`` and into ``src`` the origin of
    each slot: ``src[p] = k`` for old slot k, ``-1 - j`` for new position j.  Returns the number
    of rows where a new position collides with a kept one or repeats (0 means a valid result).
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef Py_ssize_t m = new_rows.shape[0], nnz = indices.shape[0]
    if keep.shape[0] != nnz:
        raise ValueError(f"keep_mask has {keep.shape[0]} entries, expected nnz={nnz}")
    if new_cols.shape[0] != m:
        raise ValueError(f"new_rows has {m} entries but new_cols has {new_cols.shape[0]}")
    if out_indptr.shape[0] != n_rows + 1:
        raise ValueError("out_indptr has the wrong length")
    if m:
        nr, nc = np.asarray(new_rows), np.asarray(new_cols)
        if nr.min() < 0 or nr.max() >= n_rows:
            raise ValueError(f"new_rows must lie in [0, {n_rows})")
        if nc.min() < 0 or nc.max() >= n_cols:
            raise ValueError(f"new_cols must lie in [0, {n_cols})")
        if m > 1 and np.any((nr[1:] < nr[:-1]) | ((nr[1:] == nr[:-1]) & (nc[1:] < nc[:-1]))):
            raise ValueError("new positions must be sorted by (row, col)")
    cdef int nt = check_threads(num_threads)
    new_ptr_a = np.zeros(n_rows + 1, dtype=np.int64)
    cdef int64_t[::1] new_ptr = new_ptr_a
    cdef Py_ssize_t r, k, j, kept_total = 0, p, a, a_end, b, b_end, bad = 0
    with nogil:
        for j in range(m):
            new_ptr[new_rows[j] + 1] += 1
        for r in range(n_rows):
            new_ptr[r + 1] += new_ptr[r]
        out_indptr[0] = 0
        for r in range(n_rows):
            a = 0
            for k in range(indptr[r], indptr[r + 1]):
                a = a + keep[k]
            out_indptr[r + 1] = <index_t>(out_indptr[r] + a + new_ptr[r + 1] - new_ptr[r])
    if out_indptr[n_rows] != out_indices.shape[0] or src.shape[0] != out_indices.shape[0]:
        raise ValueError("out_indices/src have the wrong length")
    with nogil:
        for r in prange(n_rows, schedule="guided", num_threads=nt):
            bad += _merge_row(indices, keep, new_cols, indptr[r], indptr[r + 1], new_ptr[r],
                              new_ptr[r + 1], out_indptr[r], out_indices, src)
    return bad


cdef Py_ssize_t _merge_row(const index_t[::1] indices, const uint8_t[::1] keep,
                           const int64_t[::1] new_cols, Py_ssize_t a, Py_ssize_t a_end,
                           Py_ssize_t b, Py_ssize_t b_end, Py_ssize_t p,
                           index_t[::1] out_indices, int64_t[::1] src) noexcept nogil:
    cdef Py_ssize_t bad = 0
    cdef int64_t last = -1
    while a < a_end and not keep[a]:
        a = a + 1
    while a < a_end or b < b_end:
        if b >= b_end or (a < a_end and indices[a] < new_cols[b]):
            out_indices[p] = indices[a]
            src[p] = a
            a = a + 1
            while a < a_end and not keep[a]:
                a = a + 1
        else:
            out_indices[p] = <index_t>new_cols[b]
            src[p] = -1 - b
            b = b + 1
        if out_indices[p] == last:
            bad = 1
        last = out_indices[p]
        p = p + 1
    return bad


def gather(const int64_t[::1] src, const floating[::1] old, new_vals=None, int num_threads=0):
    """``out[p] = old[src[p]]`` for kept slots, ``new_vals[-1 - src[p]]`` (or 0) for new ones."""
    cdef Py_ssize_t n = src.shape[0], p
    cdef int64_t s
    cdef int nt = check_threads(num_threads)
    if n:
        s_np = np.asarray(src)
        hi, lo = s_np.max(), s_np.min()
        n_new = 0 if new_vals is None else len(new_vals)
        if hi >= old.shape[0] or (lo < 0 and new_vals is not None and -1 - lo >= n_new):
            raise ValueError("src refers past the end of the old or new value arrays")
    dtype = np.asarray(old).dtype
    out = np.empty(n, dtype=dtype)
    cdef floating[::1] res = out
    cdef floating[::1] nv
    cdef bint has_new = new_vals is not None
    if has_new:
        nv = np.ascontiguousarray(new_vals, dtype=dtype)
    else:
        nv = np.zeros(1, dtype=dtype)
    if n == 0:
        return out
    with nogil:
        for p in prange(n, schedule="static", num_threads=nt):
            s = src[p]
            if s >= 0:
                res[p] = old[s]
            elif has_new:
                res[p] = nv[-1 - s]
            else:
                res[p] = 0
    return out
