"""Selections on float values: the indices of the k largest or smallest (``select``) and SET's
sign-wise prune mask (``sign_prune_keep``).

The threshold is found by a radix step on the float bits: one pass builds a 4096-bin histogram of
the top bits of each key, a second pass copies the keys of the one bin that holds the k-th
value, and ``nth_element`` finishes on that copy (typically well under 1 % of the values).
Every pass is split in fixed chunks; a result never depends on the chunking, so it does not
depend on the thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.algorithm cimport nth_element

import numpy as np

from ._types cimport floating
from ._checks import check_threads

cdef extern from *:
    const uint64_t MAG64 "0x7FFFFFFFFFFFFFFFULL"
    const uint64_t INF64 "0x7FF0000000000000ULL"


cdef extern from "select.hh" nogil:
    void sk_histogram[T](const T* x, Py_ssize_t lo, Py_ssize_t hi, int mode, int shift,
                         Py_ssize_t nbins, int64_t* hist)
    uint64_t sk_key[T](T x, int mode)
    void sk_collect[T](const T* x, Py_ssize_t lo, Py_ssize_t hi, int mode, int shift,
                       const int64_t* bins, uint64_t* keys0, int64_t* idx0, int64_t* p0,
                       uint64_t* keys1, int64_t* idx1, int64_t* p1)


cdef enum:
    NBINS = 4096  # radix bins of the first selection pass (12 bits)


cdef void _histograms(const floating[::1] v, int mode, int shift, int n_chunks,
                      int64_t[:, ::1] hist) noexcept nogil:
    """``hist[chunk, class * NBINS + bin]``: counts of the top key bits, chunk by chunk (and
    a spare count at ``2 * NBINS``, see select.hh)."""
    cdef Py_ssize_t n = v.shape[0], ch
    for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_chunks):
        sk_histogram(&v[0], n * ch // n_chunks, n * (ch + 1) // n_chunks, mode, shift, NBINS,
                     &hist[ch, 0])


cdef void _collect(const floating[::1] v, int mode, int shift, int n_chunks,
                   const int64_t[::1] bins, const int64_t[:, ::1] offsets,
                   uint64_t[:, ::1] keys, int64_t[:, ::1] idx) noexcept nogil:
    """Copy the keys (and indices) of each class's threshold bin, in index order."""
    cdef Py_ssize_t n = v.shape[0], ch
    cdef int64_t p0, p1
    for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_chunks):
        p0 = offsets[ch, 0]  # (scalars: a C array would be shared between the threads)
        p1 = offsets[ch, 1]
        sk_collect(&v[0], n * ch // n_chunks, n * (ch + 1) // n_chunks, mode, shift, &bins[0],
                   &keys[0, 0], &idx[0, 0], &p0, &keys[1, 0], &idx[1, 0], &p1)


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
    ``int(zeta * class size)``.

    The bookkeeping between the passes (class sizes, the bin of the k-th key, each chunk's
    offset in it) is typed loops over the 2 x 4096 counts: as NumPy calls it cost more than
    the passes on arrays of a few thousand values (GSE scores its candidates on every update).
    """
    cdef Py_ssize_t n = v.shape[0]
    # One chunk, and so one thread, below 64k values: waking a second thread costs more there
    # (tens of microseconds on a VM) than it saves.
    cdef int n_chunks = nt if n >= 65536 else 1
    cdef int shift, c, ch
    if floating is float:
        shift = 20 - (mode == 2)
    else:
        shift = 52 - (mode == 2)
    # per chunk 2 x NBINS counts, and a spare one for the values that cannot be selected
    hist_a = np.zeros((n_chunks, 2 * NBINS + 8), dtype=np.int64)
    cdef int64_t[:, ::1] hist = hist_a
    cdef int64_t ks[2]
    cdef int64_t bins[2]
    cdef int64_t befores[2]
    cdef int64_t sizes[2]
    cdef int64_t size_c, cum, count
    cdef Py_ssize_t b
    offsets_a = np.zeros((n_chunks, 2), dtype=np.int64)
    cdef int64_t[:, ::1] offsets = offsets_a
    # The totals: chunk 0's counts when there is one chunk, else their sum in an array apart
    # (each chunk's own counts give its offset in the bin below).
    totals_a = hist_a[0, :2 * NBINS].reshape(2, NBINS) if n_chunks == 1 else np.empty((2, NBINS), dtype=np.int64)
    cdef int64_t[:, ::1] tot = totals_a
    with nogil:
        _histograms(v, mode, shift, n_chunks, hist)
        if n_chunks > 1:
            for c in range(2):
                for b in range(NBINS):
                    count = 0
                    for ch in range(n_chunks):
                        count += hist[ch, c * NBINS + b]
                    tot[c, b] = count
        for c in range(2):
            size_c = 0
            for b in range(NBINS):
                size_c += tot[c, b]
            # int(zeta * size) in Python is this double product, truncated
            ks[c] = <int64_t>(zeta * <double>size_c) if zeta >= 0 else (k if c == 0 else 0)
            bins[c] = -1
            befores[c] = 0
            sizes[c] = 0
            if c >= n_cls or ks[c] <= 0:
                continue
            cum = 0  # the first bin whose cumulative count reaches k
            for b in range(NBINS):
                count = tot[c, b]
                if cum + count >= ks[c]:
                    bins[c] = b
                    befores[c] = cum
                    sizes[c] = count
                    break
                cum += count
            for ch in range(1, n_chunks):
                offsets[ch, c] = offsets[ch - 1, c] + hist[ch - 1, c * NBINS + bins[c]]
    width = max(sizes[0], sizes[1], 1)
    keys_a = np.empty((2, width), dtype=np.uint64)
    idx_a = np.empty((2, width), dtype=np.int64)
    tmp_a = np.empty(width, dtype=np.uint64)
    cdef uint64_t[:, ::1] keys = keys_a
    cdef int64_t[:, ::1] idx = idx_a
    cdef uint64_t[::1] tmp = tmp_a
    bins_a = np.array([bins[0], bins[1]], dtype=np.int64)
    cdef int64_t[::1] bins_v = bins_a
    cdef int64_t n_tie = 0, k_in
    cdef uint64_t t
    with nogil:
        _collect(v, mode, shift, n_chunks, bins_v, offsets, keys, idx)
    out = []
    for c in range(n_cls):
        if ks[c] <= 0:
            out.append((0, 0, idx_a[c, :0]))
            continue
        k_in = ks[c] - befores[c]
        with nogil:
            t = _finish(&keys[c, 0], &idx[c, 0], &tmp[0], sizes[c], k_in, &n_tie)
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
    cdef Py_ssize_t ch, i, lo, hi, p, q, q_end, n_ties = ties.shape[0]
    cdef int64_t cnt
    cdef int take
    # Each chunk's output offset: selected values below the threshold and ties before it (one
    # chunk starts at 0 and needs no count).
    starts_a = np.empty(n_chunks + 1, dtype=np.int64)
    tie_pos_a = np.empty(n_chunks + 1, dtype=np.int64)
    cdef int64_t[::1] starts_w = starts_a
    cdef int64_t[::1] tie_pos_w = tie_pos_a
    with nogil:
        if n_chunks > 1:
            for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_chunks):
                lo = n * ch // n_chunks
                hi = n * (ch + 1) // n_chunks
                cnt = 0
                for i in range(lo, hi):
                    cnt = cnt + (sk_key(values[i], mode) < t)
                below[ch + 1] = cnt
        else:
            below[1] = k - n_ties  # all but the ties lie below the threshold
        q = 0
        cnt = 0
        for ch in range(n_chunks + 1):
            lo = n * ch // n_chunks  # the chunk's first index; the ties before it come first
            while q < n_ties and ties[q] < lo:
                q = q + 1
            cnt = cnt + below[ch]
            tie_pos_w[ch] = q
            starts_w[ch] = cnt + q
    buf = np.empty(k + 1, dtype=np.int64)  # one spare slot: every index is stored, then kept
    cdef int64_t[::1] res = buf
    cdef const int64_t[::1] starts = starts_a
    cdef const int64_t[::1] tie_pos = tie_pos_a
    with nogil:
        for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_chunks):
            lo = n * ch // n_chunks
            hi = n * (ch + 1) // n_chunks
            p = starts[ch]
            q = tie_pos[ch]
            q_end = tie_pos[ch + 1]
            for i in range(lo, hi):
                take = sk_key(values[i], mode) < t
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
        for ch in prange(n_chunks, schedule="static", chunksize=1, num_threads=n_chunks):
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
