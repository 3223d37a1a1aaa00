"""CSR rebuild after a topology change: drop the entries whose keep flag is 0 and insert new
positions.

``rebuild_csr`` merges the kept entries of W with a row-sorted list of new positions, row by row
(each thread owns its rows), and carries the values and one state array (momentum) in the same
pass; only when more states need it does it record, for every output slot, where its value
comes from (``src``), which ``gather`` then applies to each further state array.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint64_t

import numpy as np

from ._types cimport floating, index_t
from ._checks import check_pattern, check_threads

cdef extern from "rebuild.hh" nogil:
    int sk_merge_row[T, I](const I* indices, const uint8_t* keep, const I* new_cols,
                           const T* data, const T* new_vals, Py_ssize_t a, Py_ssize_t a_end,
                           Py_ssize_t b, Py_ssize_t b_end, Py_ssize_t p, Py_ssize_t p_end,
                           I* out_idx, T* out_data, int64_t* src, const T* st_in, T* st_out)

cdef extern from "bits.hh":
    float sk_pick_f(float a, float b, int64_t pick_b) nogil
    double sk_pick_d(double a, double b, int64_t pick_b) nogil


cdef inline floating _pick(floating a, floating b, int64_t pick_b) noexcept nogil:
    if floating is float:
        return sk_pick_f(a, b, pick_b)
    else:
        return sk_pick_d(a, b, pick_b)


def rebuild_csr(const index_t[::1] indptr, const index_t[::1] indices, const uint8_t[::1] keep,
                const index_t[::1] new_rows, const index_t[::1] new_cols, Py_ssize_t n_cols,
                const floating[::1] data, const floating[::1] new_vals, bint want_src,
                int num_threads=0, state=None):
    """W after dropping ``keep == 0`` and inserting the new positions, values merged in the
    same pass: ``(indptr, indices, data, src, state)`` or ``None`` when the new positions are
    not sorted by (row, col) (the caller sorts them and calls again).

    ``state`` (optional, an array aligned with ``data`` of its dtype, e.g. momentum) is carried
    along in the same pass, 0 at new slots.

    ``src`` (when ``want_src``) maps each output slot to its origin, ``k`` for old slot k and
    ``-1 - j`` for new position j, for :func:`gather` to permute the other state arrays.  Raises
    ``ValueError`` when a new position is kept already or repeats.
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, data)
    cdef Py_ssize_t m = new_rows.shape[0], nnz = indices.shape[0]
    if keep.shape[0] != nnz:
        raise ValueError(f"keep_mask has {keep.shape[0]} entries, expected nnz={nnz}")
    if new_cols.shape[0] != m or new_vals.shape[0] != m:
        raise ValueError("new_rows, new_cols and new_vals must have the same length")
    cdef int nt = check_threads(num_threads)
    new_ptr_a = np.zeros(n_rows + 1, dtype=np.int64)
    out_ptr_a = np.empty(n_rows + 1, dtype=np.asarray(indices).dtype)
    cdef int64_t[::1] new_ptr = new_ptr_a
    cdef index_t[::1] out_ptr = out_ptr_a
    cdef int64_t[::1] row_kept = np.empty(n_rows, dtype=np.int64)
    cdef Py_ssize_t j, r, k
    cdef int64_t kept, rj, cj, rp, cp
    cdef int out_of_bounds = 0, unsorted = 0
    with nogil:
        # Bounds and strict (row, col) order against the previous entry, branch-free (a repeat
        # is unsorted here: the caller sorts and then reports it).
        for j in prange(m, schedule="static", num_threads=nt if m >= 65536 else 1):
            rj = new_rows[j]
            cj = new_cols[j]
            rp = new_rows[j - 1] if j else -1
            cp = new_cols[j - 1] if j else -1
            out_of_bounds |= (rj < 0) | (rj >= n_rows) | (cj < 0) | (cj >= n_cols)
            unsorted |= (rj < rp) | ((rj == rp) & (cj <= cp))
    if out_of_bounds:
        raise ValueError(f"new positions must lie in [0, {n_rows}) x [0, {n_cols})")
    if unsorted:
        return None
    with nogil:
        # Sorted rows: the last entry of row r sets new_ptr[r + 1] (each slot written once, so
        # in parallel), then rows without new entries take their predecessor's.
        for j in prange(m, schedule="static", num_threads=nt if m >= 65536 else 1):
            if j == m - 1 or new_rows[j + 1] != new_rows[j]:
                new_ptr[new_rows[j] + 1] = j + 1
        for r in range(n_rows):
            new_ptr[r + 1] = new_ptr[r + 1] if new_ptr[r + 1] > new_ptr[r] else new_ptr[r]
        # kept per row (in parallel), then the offsets (a serial prefix over rows)
        for r in prange(n_rows, schedule="static", num_threads=nt if nnz >= 65536 else 1):
            kept = 0
            for k in range(indptr[r], indptr[r + 1]):
                kept = kept + keep[k]
            row_kept[r] = kept
        out_ptr[0] = 0
        for r in range(n_rows):
            out_ptr[r + 1] = <index_t>(out_ptr[r] + row_kept[r] + new_ptr[r + 1] - new_ptr[r])
    cdef Py_ssize_t total = out_ptr[n_rows]
    out_idx_a = np.empty(total, dtype=np.asarray(indices).dtype)
    out_data_a = np.empty(total, dtype=np.asarray(data).dtype)
    src_a = np.empty(total if want_src else 1, dtype=np.int64)
    cdef index_t[::1] out_idx = out_idx_a
    cdef floating[::1] out_data = out_data_a
    cdef int64_t[::1] src = src_a
    cdef bint has_state = state is not None
    cdef const floating[::1] st_in
    cdef floating[::1] st_out
    if has_state:
        st_in = state
        if st_in.shape[0] != nnz:
            raise ValueError(f"state has {st_in.shape[0]} entries, expected nnz={nnz}")
        st_out_a = np.empty(total, dtype=np.asarray(data).dtype)
    else:
        st_in = data
        st_out_a = np.empty(1, dtype=np.asarray(data).dtype)
    st_out = st_out_a
    # Raw pointers for the merge (sk_merge_row in rebuild.hh); NULL where not wanted or empty.
    cdef const index_t* ip = &indices[0] if nnz else NULL
    cdef const uint8_t* kp = &keep[0] if nnz else NULL
    cdef const floating* dp = &data[0] if nnz else NULL
    cdef const floating* sip = &st_in[0] if (nnz and has_state) else NULL
    cdef const index_t* ncp = &new_cols[0] if m else NULL
    cdef const floating* nvp = &new_vals[0] if m else NULL
    cdef index_t* oip = &out_idx[0] if total else NULL
    cdef floating* odp = &out_data[0] if total else NULL
    cdef int64_t* srp = &src[0] if (total and want_src) else NULL
    cdef floating* sop = &st_out[0] if (total and has_state) else NULL
    cdef Py_ssize_t bad = 0
    if total:
        with nogil:
            for r in prange(n_rows, schedule="guided", num_threads=nt):
                bad += sk_merge_row(ip, kp, ncp, dp, nvp, indptr[r], indptr[r + 1], new_ptr[r],
                                    new_ptr[r + 1], out_ptr[r], out_ptr[r + 1], oip, odp, srp,
                                    sip, sop)
    if bad:
        raise ValueError("rebuild: a new position is already present or repeats")
    return (out_ptr_a, out_idx_a, out_data_a, (src_a if want_src else None),
            (st_out_a if has_state else None))


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
    if old.shape[0] == 0:  # every slot is new: no old value to load
        out[:] = np.asarray(nv)[-1 - np.asarray(src)] if has_new else 0
        return out
    cdef Py_ssize_t n_old = old.shape[0]
    cdef floating vo, vn
    with nogil:
        for p in prange(n, schedule="static", num_threads=nt):
            # Branch-free (kept and new slots interleave at random): both loads are clamped
            # into bounds, then one is chosen.
            s = src[p]
            vo = old[s & ~(s >> 63)]  # s, or 0 for a new slot
            vn = nv[((-1 - s) & (s >> 63)) if has_new else 0]
            res[p] = _pick(vo, vn, <int64_t>(<uint64_t>s >> 63))
    return out
