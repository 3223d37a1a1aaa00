/* The row merge of a CSR rebuild (rebuild.pyx), on raw pointers: with Cython memoryview
   arguments GCC ran out of registers and spilled the cursors of the inner loop to the stack. */
#ifndef SPARSEKIT_REBUILD_HH
#define SPARSEKIT_REBUILD_HH

#include <stddef.h>
#include <stdint.h>

/* Merge one row: old entries a..a_end (kept where keep[a]), new entries b..b_end (columns
   new_cols, values new_vals), into output slots p..p_end.  Before each new entry the run of
   old entries left of it is compacted branch-free: every entry is stored at slot p and p
   advances only for kept ones (the new entry still to come keeps p inside the row), so the
   branches mispredict about once per new entry, not once per entry.  SRC: record each slot's
   origin (k for old slot k, -1 - j for new position j); STATE: carry st_in along (0 at new
   slots).  Returns 1 when a new position is also a kept one. */
template <bool SRC, bool STATE, class T, class I>
static inline int sk_merge_row_t(const I *indices, const uint8_t *keep, const I *new_cols,
                                 const T *data, const T *new_vals, ptrdiff_t a, ptrdiff_t a_end,
                                 ptrdiff_t b, ptrdiff_t b_end, ptrdiff_t p, ptrdiff_t p_end,
                                 I *out_idx, T *out_data, int64_t *src, const T *st_in,
                                 T *st_out) {
    int bad = 0;
    /* old entry a to slot p; the slot is kept only if the entry is (branch-free) */
    auto put_old = [&]() {
        out_idx[p] = indices[a];
        out_data[p] = data[a];
        if (SRC) src[p] = a;
        if (STATE) st_out[p] = st_in[a];
        p += keep[a];
        ++a;
    };
    for (; b < b_end; ++b) {
        const I nb = new_cols[b];
        while (a < a_end && indices[a] < nb) put_old();
        if (a < a_end && indices[a] == nb) bad |= keep[a];
        out_idx[p] = nb;
        out_data[p] = new_vals[b];
        if (SRC) src[p] = -1 - b;
        if (STATE) st_out[p] = 0;
        ++p;
    }
    while (p < p_end) put_old();  /* the tail: kept entries remain while the row has slots */
    return bad;
}

template <class T, class I>
static inline int sk_merge_row(const I *indices, const uint8_t *keep, const I *new_cols,
                               const T *data, const T *new_vals, ptrdiff_t a, ptrdiff_t a_end,
                               ptrdiff_t b, ptrdiff_t b_end, ptrdiff_t p, ptrdiff_t p_end,
                               I *out_idx, T *out_data, int64_t *src, const T *st_in,
                               T *st_out) {
    /* src / st_out NULL: not wanted */
    if (src && st_out)
        return sk_merge_row_t<true, true>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                          b_end, p, p_end, out_idx, out_data, src, st_in, st_out);
    if (src)
        return sk_merge_row_t<true, false>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                           b_end, p, p_end, out_idx, out_data, src, st_in, st_out);
    if (st_out)
        return sk_merge_row_t<false, true>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                           b_end, p, p_end, out_idx, out_data, src, st_in, st_out);
    return sk_merge_row_t<false, false>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                        b_end, p, p_end, out_idx, out_data, src, st_in, st_out);
}

#endif  /* SPARSEKIT_REBUILD_HH */
