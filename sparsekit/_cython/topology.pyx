"""Kernels for topology changes: selection, membership, sampling of absent positions, CSR rebuild.

A rebuild merges the kept entries of W with a row-sorted list of new positions, row by row (each
thread owns its rows).  ``rebuild_csr`` (used by the CPU backend) carries the values and one
state array (momentum) in the same pass and records, only when more states need it, for every
output slot where its value comes from; ``merge`` + ``gather`` are the two-step form.

Selections (``select``, ``sign_prune_keep``) find their threshold by a radix step on the float
bits: one pass builds a 4096-bin histogram of the top bits of each key, a second pass copies
the keys of the one bin that holds the k-th value, and ``nth_element`` finishes on that copy
(typically well under 1 % of the values).  Every pass is split in fixed chunks; a result never
depends on the chunking, so it does not depend on the thread count.

Sampling (``sample_absent_uniform``) draws per row with counter-based random streams (one per
row or row block, keyed from the caller's NumPy generator), so a seed gives the same positions
whatever the thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.algorithm cimport nth_element, sort

import numpy as np

from ._types cimport floating, index_t
from .._streams import row_blocks
from ._checks import check_pattern, check_threads

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t sk_mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    /* Uniform integer in [0, n) for n >= 1 (Lemire's multiply-shift with rejection, so exactly
       uniform) from the splitmix64 stream whose state is *s. */
    static inline uint64_t sk_below(uint64_t *s, uint64_t n) {
        unsigned __int128 p;
        uint64_t lo, t;
        *s += 0x9E3779B97F4A7C15ULL;
        p = (unsigned __int128)sk_mix64(*s) * n;
        lo = (uint64_t)p;
        if (lo < n) {
            t = (0 - n) % n;
            while (lo < t) {
                *s += 0x9E3779B97F4A7C15ULL;
                p = (unsigned __int128)sk_mix64(*s) * n;
                lo = (uint64_t)p;
            }
        }
        return (uint64_t)(p >> 64);
    }
    /* a if pick_b == 0 else b (pick_b is 0 or 1), on the bits: GCC turns a float select into a
       branch, which mispredicts when kept and new entries interleave at random. */
    static inline uint64_t sk_bits32(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
    static inline uint64_t sk_bits64(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
    template <typename F, typename U> static inline F sk_pick(F a, F b, int64_t pick_b) {
        U ua, ub, m = (U)0 - (U)pick_b;
        F r;
        memcpy(&ua, &a, sizeof(F));
        memcpy(&ub, &b, sizeof(F));
        ua = (ua & ~m) | (ub & m);
        memcpy(&r, &ua, sizeof(F));
        return r;
    }
    static inline float sk_pick_f(float a, float b, int64_t p) { return sk_pick<float, uint32_t>(a, b, p); }
    static inline double sk_pick_d(double a, double b, int64_t p) { return sk_pick<double, uint64_t>(a, b, p); }
    """
    uint64_t sk_mix64(uint64_t z) nogil
    uint64_t sk_below(uint64_t* s, uint64_t n) nogil
    float sk_pick_f(float a, float b, int64_t pick_b) nogil
    uint64_t sk_bits32(float x) nogil
    uint64_t sk_bits64(double x) nogil
    double sk_pick_d(double a, double b, int64_t pick_b) nogil
    const uint64_t SIGN32 "0x80000000ULL"
    const uint64_t MASK32 "0xFFFFFFFFULL"
    const uint64_t SIGN64 "0x8000000000000000ULL"
    const uint64_t MAG32 "0x7FFFFFFFULL"
    const uint64_t INF32 "0x7F800000ULL"
    const uint64_t MAG64 "0x7FFFFFFFFFFFFFFFULL"
    const uint64_t INF64 "0x7FF0000000000000ULL"


cdef inline floating _pick(floating a, floating b, int64_t pick_b) noexcept nogil:
    if floating is float:
        return sk_pick_f(a, b, pick_b)
    else:
        return sk_pick_d(a, b, pick_b)


cdef enum:
    NBINS = 4096  # radix bins of the first selection pass (12 bits)


# --- selection --------------------------------------------------------------------------------
cdef inline uint64_t _bits(floating x) noexcept nogil:
    if floating is float:
        return sk_bits32(x)
    else:
        return sk_bits64(x)


cdef inline uint64_t _key(floating x, int mode, int* cls, int* valid) noexcept nogil:
    """Unsigned key of ``x``, its class (0 or 1) and whether it may be selected, branch-free
    (random signs would mispredict every branch).

    mode 0/1: one class, keys in increasing/decreasing order of value (-0.0 ties with 0.0);
    mode 2: class 0 holds the positive and class 1 the negative values, key = bits of |x|, so
    the smallest keys are the values closest to zero; zeros and NaN are not selectable.
    """
    cdef uint64_t b = _bits(x), mag, mask
    if floating is float:
        mag = b & MAG32
        if mode == 2:
            cls[0] = <int>(b >> 31)
            valid[0] = (mag - 1) < INF32  # 0 < |x| <= inf
            return mag
        b = b if mag else 0  # bits, not floats: the build ignores signed zeros
        mask = ((0 - (b >> 31)) & MASK32) | SIGN32
        b = b ^ mask
        cls[0] = 0
        valid[0] = 1
        return (b ^ MASK32) if mode == 1 else b
    else:
        mag = b & MAG64
        if mode == 2:
            cls[0] = <int>(b >> 63)
            valid[0] = (mag - 1) < INF64
            return mag
        b = b if mag else 0
        mask = (0 - (b >> 63)) | SIGN64
        b = b ^ mask
        cls[0] = 0
        valid[0] = 1
        return (~b) if mode == 1 else b


cdef void _histograms(const floating[::1] v, int mode, int shift, int n_chunks,
                      int64_t[:, :, ::1] hist, int nt) noexcept nogil:
    """``hist[chunk, class, bin]``: counts of the top key bits, chunk by chunk."""
    cdef Py_ssize_t n = v.shape[0], ch, i, lo, hi
    cdef uint64_t key
    cdef int c, ok
    cdef int64_t* h
    for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=nt):
        lo = n * ch // n_chunks
        hi = n * (ch + 1) // n_chunks
        c = 0  # assigned here so that OpenMP makes c and ok private (_key sets them)
        ok = 0
        h = &hist[ch, 0, 0]
        for i in range(lo, hi):
            key = _key(v[i], mode, &c, &ok)
            h[c * NBINS + <Py_ssize_t>(key >> shift)] += ok


cdef void _collect(const floating[::1] v, int mode, int shift, int n_chunks,
                   const int64_t[::1] bins, const int64_t[:, ::1] offsets,
                   uint64_t[:, ::1] keys, int64_t[:, ::1] idx, int nt) noexcept nogil:
    """Copy the keys (and indices) of each class's threshold bin, in index order."""
    cdef Py_ssize_t n = v.shape[0], ch, i, lo, hi
    cdef int64_t p0, p1
    cdef uint64_t key
    cdef int c, ok
    for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=nt):
        lo = n * ch // n_chunks
        hi = n * (ch + 1) // n_chunks
        c = 0  # assigned here so that OpenMP makes c and ok private (_key sets them)
        ok = 0
        p0 = offsets[ch, 0]  # (scalars: a C array would be shared between the threads)
        p1 = offsets[ch, 1]
        for i in range(lo, hi):
            key = _key(v[i], mode, &c, &ok)
            if ok and <int64_t>(key >> shift) == bins[c]:
                if c == 0:
                    keys[0, p0] = key
                    idx[0, p0] = i
                    p0 = p0 + 1
                else:
                    keys[1, p1] = key
                    idx[1, p1] = i
                    p1 = p1 + 1


cdef uint64_t _finish(uint64_t* keys, int64_t* idx, uint64_t* tmp, int64_t n_bin,
                      int64_t k_in_bin, int64_t* n_tie) noexcept nogil:
    """Threshold key of a bin (the k_in_bin-th smallest, 1-based); moves the indices of the
    lowest-indexed ties that are selected to the front of ``idx`` and counts them."""
    cdef int64_t j, below = 0, ties = 0
    cdef uint64_t t
    memcpy(tmp, keys, n_bin * sizeof(uint64_t))
    nth_element(tmp, tmp + (k_in_bin - 1), tmp + n_bin)
    t = tmp[k_in_bin - 1]
    for j in range(n_bin):
        below += keys[j] < t
    n_tie[0] = k_in_bin - below
    for j in range(n_bin):
        if ties < n_tie[0] and keys[j] == t:
            idx[ties] = idx[j]
            ties = ties + 1
    return t


cdef _radix_thresholds(const floating[::1] v, int mode, int n_cls, double zeta, Py_ssize_t k,
                       int nt):
    """Per class: (k, threshold key, increasing indices of the selected ties); the selection is
    every key below the threshold plus those ties.  k per class is ``k``, or with ``zeta >= 0``
    ``int(zeta * class size)``."""
    cdef Py_ssize_t n = v.shape[0]
    cdef int n_chunks = nt if n >= 65536 else 1
    cdef int shift, c
    if floating is float:
        shift = 20 - (mode == 2)
    else:
        shift = 52 - (mode == 2)
    hist_a = np.zeros((n_chunks, 2, NBINS), dtype=np.int64)
    cdef int64_t[:, :, ::1] hist = hist_a
    with nogil:
        _histograms(v, mode, shift, n_chunks, hist, nt)
    total = hist_a.sum(axis=0) if n_chunks > 1 else hist_a[0]
    ks = ([int(zeta * int(size_c)) for size_c in total.sum(axis=1)] if zeta >= 0 else [k, 0])
    bins_a = np.full(2, -1, dtype=np.int64)
    befores = [0, 0]
    sizes = [0, 0]
    for c in range(n_cls):
        if ks[c] > 0:
            cum = np.cumsum(total[c])
            b = int(np.searchsorted(cum, ks[c]))  # first bin whose cumulative count reaches k
            bins_a[c] = b
            befores[c] = int(cum[b] - total[c, b])
            sizes[c] = int(total[c, b])
    offsets_a = np.zeros((n_chunks, 2), dtype=np.int64)
    if n_chunks > 1:
        for c in range(n_cls):
            if ks[c] > 0:
                offsets_a[1:, c] = np.cumsum(hist_a[:, c, bins_a[c]])[:n_chunks - 1]
    width = max(sizes[0], sizes[1], 1)
    keys_a = np.empty((2, width), dtype=np.uint64)
    idx_a = np.empty((2, width), dtype=np.int64)
    tmp_a = np.empty(width, dtype=np.uint64)
    cdef uint64_t[:, ::1] keys = keys_a
    cdef int64_t[:, ::1] idx = idx_a
    cdef uint64_t[::1] tmp = tmp_a
    cdef int64_t[::1] bins = bins_a
    cdef int64_t[:, ::1] offsets = offsets_a
    cdef int64_t n_tie = 0, size, k_in
    cdef uint64_t t
    with nogil:
        _collect(v, mode, shift, n_chunks, bins, offsets, keys, idx, nt)
    out = []
    for c in range(n_cls):
        if ks[c] <= 0:
            out.append((0, 0, idx_a[c, :0]))
            continue
        size = sizes[c]
        k_in = ks[c] - befores[c]
        with nogil:
            t = _finish(&keys[c, 0], &idx[c, 0], &tmp[0], size, k_in, &n_tie)
        out.append((ks[c], t, idx_a[c, :n_tie]))
    return out


def select(const floating[::1] values, Py_ssize_t k, bint largest=True, int num_threads=0):
    """Indices of the ``k`` largest (or smallest) values, in increasing index order.

    O(n): a radix step on the float bits finds the k-th value (see the module docstring), then
    the indices are written chunk by chunk.  Ties at the threshold go to the lowest indices, so
    the result is deterministic.
    """
    cdef Py_ssize_t n = values.shape[0]
    if k < 0 or k > n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    cdef int nt = check_threads(num_threads)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    cdef int mode = 1 if largest else 0
    ((_, t_py, ties_a),) = _radix_thresholds(values, mode, 1, -1.0, k, nt)
    cdef uint64_t t = t_py
    cdef int n_chunks = nt if n >= 65536 else 1
    below_a = np.zeros(n_chunks + 1, dtype=np.int64)
    cdef int64_t[::1] below = below_a
    cdef const int64_t[::1] ties = ties_a
    cdef Py_ssize_t ch, i, lo, hi, p, q, q_end
    cdef int64_t cnt
    cdef uint64_t key
    cdef int c, ok, take
    with nogil:
        for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=nt):
            lo = n * ch // n_chunks
            hi = n * (ch + 1) // n_chunks
            c = 0  # private to each thread (see _histograms)
            ok = 0
            cnt = 0
            for i in range(lo, hi):
                cnt = cnt + (_key(values[i], mode, &c, &ok) < t)
            below[ch + 1] = cnt
    # Each chunk's output offset: selected values below the threshold and ties before it.
    bounds = (np.arange(n_chunks + 1, dtype=np.int64) * n) // n_chunks
    tie_pos_a = np.searchsorted(ties_a, bounds)
    starts_a = np.cumsum(below_a) + tie_pos_a
    buf = np.empty(k + 1, dtype=np.int64)  # one spare slot: every index is stored, then kept
    cdef int64_t[::1] res = buf
    cdef const int64_t[::1] starts = starts_a
    cdef const int64_t[::1] tie_pos = tie_pos_a
    with nogil:
        for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=nt):
            lo = n * ch // n_chunks
            hi = n * (ch + 1) // n_chunks
            c = 0  # private to each thread (see _histograms)
            ok = 0
            p = starts[ch]
            q = tie_pos[ch]
            q_end = tie_pos[ch + 1]
            for i in range(lo, hi):
                key = _key(values[i], mode, &c, &ok)
                take = key < t
                if q < q_end and ties[q] == i:
                    take = 1
                    q = q + 1
                # The slot after this chunk's last selection is the next chunk's first, which
                # that chunk writes; a stray write there could race, so clamp to a spare slot.
                res[p if p < starts[ch + 1] else k] = i
                p = p + take
    return buf[:k]


cdef void _prune_mask32(const uint32_t* bits, uint8_t* keep, Py_ssize_t n, uint32_t t0,
                        uint32_t t1) noexcept nogil:
    """keep = not (0 < |x| < threshold of x's sign) and x != 0, on the float32 bits: no branch
    and 32-bit lanes, so GCC vectorises it.  NaN (|x| bits above inf) is kept."""
    cdef Py_ssize_t i
    cdef uint32_t v, mag, tt
    for i in range(n):
        v = bits[i]
        mag = v & 0x7FFFFFFF
        tt = t0 ^ ((t0 ^ t1) & (0 - (v >> 31)))
        keep[i] = (mag != 0) & (((mag - 1) >= 0x7F800000) | (mag >= tt))


cdef void _prune_mask64(const uint64_t* bits, uint8_t* keep, Py_ssize_t n, uint64_t t0,
                        uint64_t t1) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t v, mag, tt
    for i in range(n):
        v = bits[i]
        mag = v & MAG64
        tt = t0 ^ ((t0 ^ t1) & (0 - (v >> 63)))
        keep[i] = (mag != 0) & (((mag - 1) >= INF64) | (mag >= tt))


def sign_prune_keep(const floating[::1] data, double zeta, int num_threads=0):
    """SET's keep mask: drop the fraction ``zeta`` of the negative and of the positive values
    closest to zero (``int(zeta * count)`` of each) and every exact zero; NaN is kept.

    Ties at a threshold drop the lowest indices first, as :func:`select` does.
    """
    if not 0 <= zeta <= 1:
        raise ValueError(f"zeta must lie in [0, 1], got {zeta}")
    cdef int nt = check_threads(num_threads)
    cdef Py_ssize_t n = data.shape[0]
    out = np.empty(n, dtype=np.uint8)
    if n == 0:
        return out.view(bool)
    res = _radix_thresholds(data, 2, 2, zeta, 0, nt)
    cdef uint64_t t[2]
    t[0] = res[0][1]
    t[1] = res[1][1]
    cdef uint8_t[::1] keep = out
    cdef int n_chunks = nt if n >= 65536 else 1
    cdef Py_ssize_t ch, i, lo, hi
    cdef int c
    with nogil:
        for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=nt):
            lo = n * ch // n_chunks
            hi = n * (ch + 1) // n_chunks
            if floating is float:
                _prune_mask32(<const uint32_t*>&data[0] + lo, &keep[lo], hi - lo,
                              <uint32_t>t[0], <uint32_t>t[1])
            else:
                _prune_mask64(<const uint64_t*>&data[0] + lo, &keep[lo], hi - lo, t[0], t[1])
    for c in range(2):
        out[res[c][2]] = 0
    return out.view(bool)


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


# --- sampling of absent positions -------------------------------------------------------------
def sample_absent_uniform(const index_t[::1] indptr, const index_t[::1] indices,
                          Py_ssize_t n_cols, Py_ssize_t m, rng, int num_threads=0):
    """``m`` distinct positions absent from the CSR pattern, uniform, sorted by (row, col).

    Returns ``(rows, cols)`` of the index dtype.  Exactly uniform without replacement: each
    round draws the missing count as i.i.d. uniform positions among those still free (how many
    fall in each row by a fixed partition of the rows into blocks, then per row), and keeps the
    distinct ones; duplicates are drawn again in the next round.  The procedure commutes with
    every permutation of the free positions, so the m-subset it returns is uniform.  Per row
    the draws are sorted and mapped to columns by one merge with the row's indices, so a round
    costs O(n_rows + nnz + m) and writes the result already in CSR order.
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
        avail_a = free_a - lens_a
        counts_a = _row_counts(avail_a, need, rng, nt)
        new_ptr_a = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(lens_a + counts_a, out=new_ptr_a[1:])
        new_cols_a = np.empty(m, dtype=idt)
        new_rows_a = np.empty(m, dtype=idt)
        new_lens_a = np.empty(n_rows, dtype=np.int64)
        _grow_rows(indptr, indices, ptr_a, lens_a, cols_a, counts_a,
                   int(rng.integers(0, 1 << 63, dtype=np.uint64)), n_cols, new_ptr_a,
                   new_lens_a, new_cols_a, new_rows_a, nt)
        ptr_a, lens_a, cols_a, rows_a = new_ptr_a, new_lens_a, new_cols_a, new_rows_a
        need = m - int(lens_a.sum())
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
        for b in prange(n_blocks, schedule="dynamic", chunksize=1, num_threads=nt):
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
               const int64_t[::1] new_ptr, int64_t[::1] new_len, index_t[::1] new_cols,
               index_t[::1] new_rows, int nt):
    """One round per row: ``extra[r]`` i.i.d. draws among the row's free columns (neither in
    the pattern nor already chosen), deduplicated and merged with the chosen ones into the
    slice ``new_ptr[r]:new_ptr[r + 1]`` (length old + extra; ``new_len[r]`` of it used)."""
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1, r
    with nogil:
        for r in prange(n_rows, schedule="guided", num_threads=nt):
            new_len[r] = _grow_row(r, indices, indptr[r], indptr[r + 1], old_cols, old_ptr[r],
                                   old_len[r], extra[r], key, n_cols, new_ptr[r], new_cols)
            for j in range(new_ptr[r], new_ptr[r + 1]):
                new_rows[j] = <index_t>r


cdef void _count_map(const index_t* cols, Py_ssize_t n, index_t* ranks,
                     Py_ssize_t u) noexcept nogil:
    """ranks[i] += #{j : cols[j] - j <= ranks[i]}: rank among the free columns -> column.

    ``cols`` sorted and distinct, so ``cols[j] - j`` (the free columns before cols[j]) does not
    decrease and the j counted form a prefix; ranks sorted.  The prefix end is found 16 entries
    at a time (one vector compare that GCC emits for the fixed-length loop), so a row costs
    about n / 16 + u steps instead of the n + u dependent steps of a scalar merge."""
    cdef Py_ssize_t i, t, jp = 0
    cdef index_t q, cnt
    for i in range(u):
        q = ranks[i]
        while jp + 16 <= n:
            cnt = 0
            for t in range(16):
                cnt = cnt + (cols[jp + t] - <index_t>(jp + t) <= q)
            jp = jp + cnt
            if cnt < 16:
                break
        else:
            while jp < n and cols[jp] - <index_t>jp <= q:
                jp = jp + 1
        ranks[i] = q + <index_t>jp


cdef void _small_sort(index_t* a, Py_ssize_t x) noexcept nogil:
    """Sort at most 64 values by counting, for each, the values placed before it: O(x^2)
    compares, but branch-free and vectorised, where a comparison sort of random draws
    mispredicts about every other branch."""
    cdef index_t tmp[64]
    cdef index_t v
    cdef Py_ssize_t i, j, r
    for i in range(x):
        tmp[i] = a[i]
    for i in range(x):
        v = tmp[i]
        r = 0
        for j in range(x):
            r = r + ((tmp[j] < v) | ((tmp[j] == v) & (j < i)))
        a[r] = v


cdef Py_ssize_t _grow_row(Py_ssize_t r, const index_t[::1] indices, Py_ssize_t p0,
                          Py_ssize_t p1, const index_t[::1] old_cols, Py_ssize_t c0,
                          Py_ssize_t n_old, Py_ssize_t x, uint64_t key, Py_ssize_t n_cols,
                          Py_ssize_t base, index_t[::1] out) noexcept nogil:
    cdef Py_ssize_t j, u, jp, jc, a, w
    cdef int64_t col
    cdef uint64_t state, n_free
    if x == 0:
        for j in range(n_old):
            out[base + j] = old_cols[c0 + j]
        return n_old
    n_free = <uint64_t>(n_cols - (p1 - p0) - n_old)
    state = sk_mix64(key ^ sk_mix64(<uint64_t>r + 1))
    # Ranks among the free columns: draw, sort, keep the distinct ones (front of the slice).
    for j in range(x):
        out[base + j] = <index_t>sk_below(&state, n_free)
    if x <= 64:
        _small_sort(&out[base], x)
    else:
        sort(&out[base], &out[base] + x)
    u = 1
    for j in range(1, x):  # branch-free: store, then advance past a new value
        out[base + u] = out[base + j]
        u = u + (out[base + u] != out[base + u - 1])
    if n_old == 0:
        # Rank q -> column q + #{pattern columns c_j with c_j - j <= q} (c_j - j free columns
        # lie before c_j).
        if p1 > p0:
            _count_map(&indices[p0], p1 - p0, &out[base], u)
        return u
    # Rank -> column: skip the pattern's columns and the chosen ones (both sorted, disjoint).
    jp = p0
    jc = c0
    for j in range(u):
        col = <int64_t>out[base + j] + (jp - p0) + (jc - c0)
        while True:
            if jp < p1 and indices[jp] <= col:
                jp = jp + 1
                col = col + 1
            elif jc < c0 + n_old and old_cols[jc] <= col:
                jc = jc + 1
                col = col + 1
            else:
                break
        out[base + j] = <index_t>col
    # Merge with the chosen columns from the back (the new ones sit at the front).
    a = u - 1
    jc = n_old - 1
    w = u + n_old - 1
    while jc >= 0:
        if a >= 0 and out[base + a] > old_cols[c0 + jc]:
            out[base + w] = out[base + a]
            a = a - 1
        else:
            out[base + w] = old_cols[c0 + jc]
            jc = jc - 1
        w = w - 1
    return u + n_old


# --- rebuild in one pass ----------------------------------------------------------------------
def rebuild_csr(const index_t[::1] indptr, const index_t[::1] indices, const uint8_t[::1] keep,
                const index_t[::1] new_rows, const index_t[::1] new_cols, Py_ssize_t n_cols,
                const floating[::1] data, const floating[::1] new_vals, bint want_src,
                int num_threads=0, state=None):
    """W after dropping ``keep == 0`` and inserting the new positions, values merged in the
    same pass: ``(indptr, indices, data, src, state)`` or ``None`` when the new positions are
    not sorted by (row, col) (the caller sorts them and calls again).

    ``state`` (optional, an array aligned with ``data`` of its dtype, e.g. momentum) is carried
    along in the same pass, 0 at new slots.

    ``src`` (when ``want_src``) maps each output slot to its origin, as :func:`merge` does, for
    the state arrays.  Raises ``ValueError`` when a new position is kept already or repeats.
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
    cdef int64_t kept, rj, cj, rp = -1, cp = -1
    cdef int out_of_bounds = 0, unsorted = 0
    with nogil:
        # Bounds and strict (row, col) order, branch-free (a repeat is unsorted here: the
        # caller sorts and then reports it).
        for j in range(m):
            rj = new_rows[j]
            cj = new_cols[j]
            out_of_bounds |= (rj < 0) | (rj >= n_rows) | (cj < 0) | (cj >= n_cols)
            unsorted |= (rj < rp) | ((rj == rp) & (cj <= cp))
            rp = rj
            cp = cj
    if out_of_bounds:
        raise ValueError(f"new positions must lie in [0, {n_rows}) x [0, {n_cols})")
    if unsorted:
        return None
    with nogil:
        # Sorted rows: the last slot of row r is where new_ptr[r + 1] points (independent
        # stores, no counter chain), then rows without new entries take their predecessor's.
        for j in range(m):
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
    cdef Py_ssize_t bad = 0
    with nogil:
        for r in prange(n_rows, schedule="guided", num_threads=nt):
            bad += _merge_row_values(indices, keep, new_cols, data, new_vals, indptr[r],
                                     indptr[r + 1], new_ptr[r], new_ptr[r + 1], out_ptr[r],
                                     out_ptr[r + 1], out_idx, out_data, src, want_src,
                                     st_in, st_out, has_state)
    if bad:
        raise ValueError("rebuild: a new position is already present or repeats")
    return (out_ptr_a, out_idx_a, out_data_a, (src_a if want_src else None),
            (st_out_a if has_state else None))


cdef Py_ssize_t _merge_row_values(const index_t[::1] indices, const uint8_t[::1] keep,
                                  const index_t[::1] new_cols, const floating[::1] data,
                                  const floating[::1] new_vals, Py_ssize_t a, Py_ssize_t a_end,
                                  Py_ssize_t b, Py_ssize_t b_end, Py_ssize_t p,
                                  Py_ssize_t p_end, index_t[::1] out_idx,
                                  floating[::1] out_data, int64_t[::1] src,
                                  bint want_src, const floating[::1] st_in,
                                  floating[::1] st_out, bint has_state) noexcept nogil:
    """Merge one row: before each new entry, the run of old entries left of it is compacted
    branch-free (every entry is stored at slot p, p advances only for kept ones; the new entry
    still to come keeps p inside the row), so the branches mispredict about once per new entry,
    not once per entry.  Returns 1 when a new position is also a kept one."""
    cdef Py_ssize_t bad = 0
    cdef index_t nb
    for b in range(b, b_end):
        nb = new_cols[b]
        while a < a_end and indices[a] < nb:
            out_idx[p] = indices[a]
            out_data[p] = data[a]
            if want_src:
                src[p] = a
            if has_state:
                st_out[p] = st_in[a]
            p = p + keep[a]
            a = a + 1
        if a < a_end and indices[a] == nb:
            bad = bad | keep[a]
        out_idx[p] = nb
        out_data[p] = new_vals[b]
        if want_src:
            src[p] = -1 - b
        if has_state:
            st_out[p] = 0
        p = p + 1
    while p < p_end:  # the tail: kept entries remain while the row has free slots
        out_idx[p] = indices[a]
        out_data[p] = data[a]
        if want_src:
            src[p] = a
        if has_state:
            st_out[p] = st_in[a]
        p = p + keep[a]
        a = a + 1
    return bad
