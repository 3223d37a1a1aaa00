"""Positions absent from a CSR pattern: membership (``contains``) and uniform sampling without
replacement (``sample_absent_uniform``).

Sampling draws per row with counter-based random streams (one per row or row block, keyed from
the caller's NumPy generator; C side in streams.hh, NumPy side in ``sparsekit._streams``), so a
seed gives the same positions whatever the thread count, and the same as the host twin
``sparsekit.backends.host.sample_uniform_rows``.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint64_t

import numpy as np

from ._types cimport index_t
from .._streams import row_blocks
from ._checks import check_pattern, check_threads

cdef extern from "sampling.hh":
    Py_ssize_t sk_grow_row[I](const I* pat, Py_ssize_t n_pat, const I* old, Py_ssize_t n_old,
                              Py_ssize_t x, uint64_t key, uint64_t row, int64_t n_cols,
                              I* out) nogil

cdef extern from "streams.hh":
    uint64_t sk_mix64(uint64_t z) nogil
    uint64_t sk_below(uint64_t* s, uint64_t n) nogil


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


def sample_absent_uniform(const index_t[::1] indptr, const index_t[::1] indices,
                          Py_ssize_t n_cols, Py_ssize_t m, rng, int num_threads=0):
    """``m`` distinct positions absent from the CSR pattern, uniform, sorted by (row, col).

    Returns ``(rows, cols)`` of the index dtype.  Exactly uniform without replacement: each
    round draws the missing count as i.i.d. uniform positions among those still free (how many
    fall in each row by a fixed partition of the rows into blocks, then per row), and keeps the
    distinct ones; duplicates are drawn again in the next round.  The procedure commutes with
    every permutation of the free positions, so the m-subset it returns is uniform.  Per row
    the draws are sorted and mapped to columns against the row's indices (sampling.hh: a
    vectorised count on short rows, a merge on long ones), so a round costs about
    O(n_rows + nnz + m) and writes the result already in CSR order.
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef int nt = check_threads(num_threads)
    idt = np.asarray(indices).dtype
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    free_a = n_cols - np.diff(np.asarray(indptr)).astype(np.int64)
    if n_rows and free_a.min() < 0:
        raise ValueError("indptr gives a row longer than n_cols")
    total_free = int(free_a.sum())
    if m > total_free:
        raise ValueError(f"cannot sample m={m} absent positions: only {total_free} are free")
    lens_a = np.zeros(n_rows, dtype=np.int64)
    ptr_a = np.zeros(n_rows + 1, dtype=np.int64)
    cols_a = np.empty(0, dtype=idt)
    rows_a = np.empty(0, dtype=idt)
    cdef Py_ssize_t need = m, rounds = 0
    while need > 0:
        rounds += 1
        if rounds > 10_000:  # pragma: no cover - each round keeps a positive share on average
            raise RuntimeError("sample_absent_uniform did not converge")
        counts_a = _row_counts(free_a - lens_a, need, rng, nt)
        new_ptr_a = np.empty(n_rows + 1, dtype=np.int64)
        new_cols_a = np.empty(m, dtype=idt)
        new_rows_a = np.empty(m, dtype=idt)
        new_lens_a = np.empty(n_rows, dtype=np.int64)
        need = m - _grow_rows(indptr, indices, ptr_a, lens_a, cols_a, counts_a,
                              int(rng.integers(0, 1 << 63, dtype=np.uint64)), n_cols, new_ptr_a,
                              new_lens_a, new_cols_a, new_rows_a, nt)
        ptr_a, lens_a, cols_a, rows_a = new_ptr_a, new_lens_a, new_cols_a, new_rows_a
    return rows_a, cols_a


def _row_counts(const int64_t[::1] avail, Py_ssize_t need, rng, int nt):
    """How many of ``need`` i.i.d. draws over the free positions fall in each row.

    The rows are cut into at most 64 blocks (a partition fixed by the sizes alone), the draws
    are split over blocks by one multinomial, and each block places its draws on its rows with
    its own random stream, so the result does not depend on the thread count.  Within a block a
    row is drawn by rejection: a uniform row, kept with probability avail / (block's max avail),
    which on a layer at most a quarter full keeps at least 3 draws in 4 and costs O(1).
    """
    cdef Py_ssize_t n_rows = avail.shape[0]
    counts_a = np.zeros(n_rows, dtype=np.int64)
    if need == 0 or n_rows == 0:
        return counts_a
    bounds_a, per_block_a, top_a = row_blocks(np.asarray(avail), need, rng)
    cdef Py_ssize_t n_blocks = per_block_a.shape[0]
    cdef const int64_t[::1] bounds = bounds_a
    cdef const int64_t[::1] per_block = per_block_a
    cdef const int64_t[::1] top = top_a
    cdef int64_t[::1] counts = counts_a
    cdef uint64_t key = int(rng.integers(0, 1 << 63, dtype=np.uint64))
    cdef Py_ssize_t b, j, r0, r
    cdef uint64_t state, n_b, top_b
    cdef int64_t left
    with nogil:
        # Consecutive blocks per thread: dealt out in turn, neighbouring blocks' rows shared
        # the cache lines at every block boundary between the cores (10 000 rows, 2 threads:
        # 0.54 ms against 0.40 so).  The blocks draw about equally, so a static split is even.
        # No more threads than blocks: a later round's few draws are one block, and waking a
        # thread with nothing to do took longer than the draws (10 000 x 10 000 layer, 2
        # threads: 180 us against 60 on one).
        for b in prange(n_blocks, schedule="static",
                        num_threads=nt if n_blocks >= nt else <int>n_blocks):
            r0 = bounds[b]
            n_b = <uint64_t>(bounds[b + 1] - r0)
            top_b = <uint64_t>top[b]
            state = sk_mix64(key ^ sk_mix64(<uint64_t>b + 1))
            left = per_block[b]
            while left > 0:
                r = r0 + <Py_ssize_t>sk_below(&state, n_b)
                if <int64_t>sk_below(&state, top_b) < avail[r]:
                    counts[r] += 1
                    left = left - 1
    return counts_a


def _grow_rows(const index_t[::1] indptr, const index_t[::1] indices,
               const int64_t[::1] old_ptr, const int64_t[::1] old_len, const index_t[::1] old_cols,
               const int64_t[::1] extra, uint64_t key, Py_ssize_t n_cols,
               int64_t[::1] new_ptr, int64_t[::1] new_len, index_t[::1] new_cols,
               index_t[::1] new_rows, int nt):
    """One round per row: ``extra[r]`` i.i.d. draws among the row's free columns (neither in
    the pattern nor already chosen), deduplicated and merged with the chosen ones into the
    slice ``new_ptr[r]:new_ptr[r + 1]`` (length old + extra, offsets written here; ``new_len[r]``
    of it used).  Returns the number of positions chosen so far (the sum of ``new_len``), so a
    round costs no NumPy pass besides the kernels.  The row's work is ``sk_grow_row``
    (sampling.hh), on raw pointers."""
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1, r, j
    cdef Py_ssize_t total = 0, n
    if n_rows == 0:
        return 0
    # Pointers of possibly empty arrays: a zero-length row never reads its pointer.
    cdef const index_t* pat = &indices[0] if indices.shape[0] else NULL
    cdef const index_t* old = &old_cols[0] if old_cols.shape[0] else NULL
    cdef index_t* out = &new_cols[0] if new_cols.shape[0] else NULL
    with nogil:
        new_ptr[0] = 0
        for r in range(n_rows):
            new_ptr[r + 1] = new_ptr[r] + old_len[r] + extra[r]
        for r in prange(n_rows, schedule="guided", num_threads=nt):
            n = sk_grow_row(pat + indptr[r], indptr[r + 1] - indptr[r], old + old_ptr[r],
                            old_len[r], extra[r], key, <uint64_t>r, n_cols, out + new_ptr[r])
            new_len[r] = n
            total += n
            for j in range(new_ptr[r], new_ptr[r + 1]):
                new_rows[j] = <index_t>r
    return total
