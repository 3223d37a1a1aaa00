/* The row merge of a CSR rebuild (rebuild.pyx), on raw pointers: with Cython memoryview
   arguments GCC ran out of registers and spilled the cursors of the inner loop to the stack. */
#ifndef SPARSEKIT_REBUILD_HH
#define SPARSEKIT_REBUILD_HH

#include <stddef.h>
#include <stdint.h>

/* Row sizes up to which sk_merge_row places entries by counting (sk_place_row_t): the new
   columns fill vectors of insertion counts, and the old entries' per-row tables live on the
   stack. */
enum { SK_PLACE_MAX_NEW = 64, SK_PLACE_MAX_OLD = 1024 };

/* Merge one row by a two-way walk: old entries a..a_end (kept where keep[a]), new entries
   b..b_end (columns new_cols, values new_vals), into output slots p..p_end.  Before each new
   entry the run of old entries left of it is compacted branch-free: every entry is stored at
   slot p and p advances only for kept ones (the new entry still to come keeps p inside the
   row).  The loop that finds the end of each run mispredicts about once per new entry, which
   is what sk_place_row_t avoids for rows of ordinary size.  SRC: record each slot's origin (k
   for old slot k, -1 - j for new position j); STATE: carry st_in along (0 at new slots).
   Returns 1 when a new position is also a kept one. */
template <bool SRC, bool STATE, class T, class I>
static inline int sk_walk_row_t(const I *indices, const uint8_t *keep, const I *new_cols,
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

/* The same merge with one data-dependent branch per row, for at most SK_PLACE_MAX_NEW new and
   SK_PLACE_MAX_OLD old entries.  Each output slot is computed, not found:
   - ins[j], the old entries left of new column j: counted for all j at once, one vector
     compare per old entry (as in sk_ranks_to_cols);
   - old entry i goes to p + (kept entries before i) + #{j : ins[j] <= i}, two running sums;
   - new entry j goes to p + (kept entries among the first ins[j]) + j.
   Every old entry up to the row's last kept one is stored, kept or not: a dropped entry's slot
   is the next output's, which is stored after it (the next kept old entry in this loop, or a
   new entry in the loop after), so it is overwritten; the dropped entries after the last kept
   one are not stored at all.  (Choosing the store's address by the keep flag instead compiles
   to a branch that mispredicts on 3 entries in 10.)  On a SET update, about 12 new among 40
   old entries per row, the walk above mispredicted once per new entry. */
template <bool SRC, bool STATE, class T, class I>
static inline int sk_place_row_t(const I *indices, const uint8_t *keep, const I *new_cols,
                                 const T *data, const T *new_vals, ptrdiff_t a, ptrdiff_t a_end,
                                 ptrdiff_t b, ptrdiff_t b_end, ptrdiff_t p, I *out_idx,
                                 T *out_data, int64_t *src, const T *st_in, T *st_out) {
    constexpr ptrdiff_t lanes = 64 / sizeof(I);
    const ptrdiff_t n_old = a_end - a, n_new = b_end - b;
    const ptrdiff_t width = (n_new + lanes - 1) / lanes * lanes;
    alignas(64) I nb[SK_PLACE_MAX_NEW];
    alignas(64) I ins[SK_PLACE_MAX_NEW];
    int32_t new_at[SK_PLACE_MAX_OLD + 1];
    int32_t kept_before[SK_PLACE_MAX_OLD + 1];
    for (ptrdiff_t j = 0; j < n_new; ++j) nb[j] = new_cols[b + j];
    for (ptrdiff_t j = n_new; j < width; ++j) nb[j] = 0;  /* padding: counts unused */
    for (ptrdiff_t j = 0; j < width; ++j) ins[j] = 0;
    for (ptrdiff_t i = 0; i < n_old; ++i) {
        const I g = indices[a + i];
        for (ptrdiff_t j = 0; j < width; ++j) ins[j] += (I)(g < nb[j]);
    }
    int bad = 0;
    int32_t kept = 0;
    for (ptrdiff_t i = 0; i < n_old; ++i) {
        new_at[i] = 0;
        kept_before[i] = kept;
        kept += keep[a + i];
    }
    new_at[n_old] = 0;
    kept_before[n_old] = kept;
    for (ptrdiff_t j = 0; j < n_new; ++j) {
        const ptrdiff_t at = (ptrdiff_t)ins[j];
        new_at[at] += 1;
        /* the old entry right of the insertion point may be the same position (read in
           bounds: a row without old entries has none, and its arrays may be NULL) */
        if (n_old) {
            const ptrdiff_t q = a + (at < n_old ? at : n_old - 1);
            bad |= (int)((at < n_old) & (indices[q] == nb[j]) & keep[q]);
        }
    }
    ptrdiff_t last = n_old;  /* one past the last kept entry */
    while (last > 0 && !keep[a + last - 1]) --last;
    int32_t new_left = 0;
    for (ptrdiff_t i = 0; i < last; ++i) {
        new_left += new_at[i];
        const ptrdiff_t slot = p + kept_before[i] + new_left;
        out_idx[slot] = indices[a + i];
        out_data[slot] = data[a + i];
        if (SRC) src[slot] = a + i;
        if (STATE) st_out[slot] = st_in[a + i];
    }
    for (ptrdiff_t j = 0; j < n_new; ++j) {
        const ptrdiff_t slot = p + kept_before[(ptrdiff_t)ins[j]] + j;
        out_idx[slot] = nb[j];
        out_data[slot] = new_vals[b + j];
        if (SRC) src[slot] = -1 - (b + j);
        if (STATE) st_out[slot] = 0;
    }
    return bad;
}

/* One row of a rebuild: counted placement for rows of ordinary size, the walk otherwise. */
template <bool SRC, bool STATE, class T, class I>
static inline int sk_merge_row_t(const I *indices, const uint8_t *keep, const I *new_cols,
                                 const T *data, const T *new_vals, ptrdiff_t a, ptrdiff_t a_end,
                                 ptrdiff_t b, ptrdiff_t b_end, ptrdiff_t p, ptrdiff_t p_end,
                                 I *out_idx, T *out_data, int64_t *src, const T *st_in,
                                 T *st_out) {
    if (b_end > b && b_end - b <= SK_PLACE_MAX_NEW && a_end - a <= SK_PLACE_MAX_OLD)
        return sk_place_row_t<SRC, STATE>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                          b_end, p, out_idx, out_data, src, st_in, st_out);
    return sk_walk_row_t<SRC, STATE>(indices, keep, new_cols, data, new_vals, a, a_end, b, b_end,
                                     p, p_end, out_idx, out_data, src, st_in, st_out);
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
