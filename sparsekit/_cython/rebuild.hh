/* The row merge of a CSR rebuild (rebuild.pyx), on raw pointers: with Cython memoryview
   arguments GCC ran out of registers and spilled the cursors of the inner loop to the stack. */
#ifndef SPARSEKIT_REBUILD_HH
#define SPARSEKIT_REBUILD_HH

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <type_traits>

#include "counts.hh"

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

/* ins[j] = the old columns left of new column j (nb: the new columns copied), for n_new <=
   SK_PLACE_MAX_NEW: counted for all j at once, one vector compare per old entry and vector of
   new columns (counts.hh). */
template <class I>
static inline void sk_insertion_counts(const I *old, ptrdiff_t n_old, const I *new_cols,
                                       ptrdiff_t n_new, I *nb, I *ins) {
    static_assert(SK_PLACE_MAX_NEW == 64, "counts.hh counts up to 64 values");
    for (ptrdiff_t j = 0; j < n_new; ++j) nb[j] = new_cols[j];
    sk_count_keys<false>(n_old, [old](ptrdiff_t i) { return old[i]; }, nb, n_new, ins);
}

/* Whether new column c, inserted before old entry `at` of the row's n_old (from a), is that
   entry's position and the entry is kept: the old entry right of an insertion point may be the
   same position.  Read in bounds: a row without old entries has none, and its arrays may be
   NULL. */
template <class I>
static inline int sk_lands_on_kept(const I *indices, const uint8_t *keep, ptrdiff_t a,
                                   ptrdiff_t n_old, ptrdiff_t at, I c) {
    if (!n_old) return 0;
    const ptrdiff_t q = a + (at < n_old ? at : n_old - 1);
    return (int)((at < n_old) & (indices[q] == c) & keep[q]);
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
    const ptrdiff_t n_old = a_end - a, n_new = b_end - b;
    alignas(64) I nb[SK_PLACE_MAX_NEW];
    alignas(64) I ins[SK_PLACE_MAX_NEW];
    int32_t new_at[SK_PLACE_MAX_OLD + 1];
    int32_t kept_before[SK_PLACE_MAX_OLD + 1];
    sk_insertion_counts(indices + a, n_old, new_cols + b, n_new, nb, ins);
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
        bad |= sk_lands_on_kept(indices, keep, a, n_old, at, nb[j]);
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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
/* sk_place_row_t for float values and int32 columns without src, with AVX-512, in whole
   vectors of the output: the row's kept old entries are first compressed to a stack buffer
   (16 a step, the keep flags as the mask), then every 16 output slots are two expansions,
   the kept entries into the slots the new ones leave and the new entries into theirs (new
   entry j at slot j + the kept entries left of it, a bit of a mask).  A SET update puts a new
   entry every three or four old ones, so the output holds about as many runs as new entries: a
   compressed store per run (the previous form, a loop iteration each) took 100 ns a row of 40
   + 12 on an Intel Xeon guest. */
template <bool STATE>
static inline int sk_place_row_v(const int32_t *indices, const uint8_t *keep,
                                 const int32_t *new_cols, const float *data,
                                 const float *new_vals, ptrdiff_t a, ptrdiff_t a_end, ptrdiff_t b,
                                 ptrdiff_t b_end, ptrdiff_t p, int32_t *out_idx, float *out_data,
                                 const float *st_in, float *st_out) {
    enum { BLOCKS = SK_PLACE_MAX_OLD / 16 + 1, SLOTS = SK_PLACE_MAX_OLD + SK_PLACE_MAX_NEW };
    const ptrdiff_t n_old = a_end - a, n_new = b_end - b;
    alignas(64) int32_t nb[SK_PLACE_MAX_NEW];
    alignas(64) int32_t ins[SK_PLACE_MAX_NEW];
    sk_insertion_counts(indices + a, n_old, new_cols + b, n_new, nb, ins);
    /* the kept entries, compressed; each vector stored whole (hence the 16 spare slots) */
    alignas(64) int32_t k_idx[SK_PLACE_MAX_OLD + 16];
    alignas(64) float k_val[SK_PLACE_MAX_OLD + 16];
    alignas(64) float k_st[STATE ? SK_PLACE_MAX_OLD + 16 : 1];
    uint32_t k_bits[BLOCKS];  /* keep flags of old entries 16 q .. 16 q + 15 */
    int32_t k_before[BLOCKS];  /* kept entries before them */
    ptrdiff_t n_kept = 0, q = 0;
    for (ptrdiff_t s = 0; s < n_old; s += 16, ++q) {
        const int len = n_old - s < 16 ? (int)(n_old - s) : 16;
        const __mmask16 in = (__mmask16)((1u << len) - 1);
        const __m128i k8 = _mm_maskz_loadu_epi8(in, keep + a + s);
        const __mmask16 kept = _mm_test_epi8_mask(k8, k8);
        k_bits[q] = kept;
        k_before[q] = (int32_t)n_kept;
        _mm512_storeu_si512(k_idx + n_kept, _mm512_maskz_compress_epi32(
            kept, _mm512_maskz_loadu_epi32(in, indices + a + s)));
        _mm512_storeu_ps(k_val + n_kept, _mm512_maskz_compress_ps(
            kept, _mm512_maskz_loadu_ps(in, data + a + s)));
        if (STATE)
            _mm512_storeu_ps(k_st + n_kept, _mm512_maskz_compress_ps(
                kept, _mm512_maskz_loadu_ps(in, st_in + a + s)));
        n_kept += __builtin_popcount(kept);
    }
    k_bits[q] = 0;  /* an insertion point at the end of a row of whole blocks */
    k_before[q] = (int32_t)n_kept;
    /* the slots of the new entries, as bits */
    const ptrdiff_t n_out = n_kept + n_new;
    uint64_t is_new[(SLOTS + 63) / 64 + 1];
    /* the slots increase with j: each word is built in a register and stored once */
    uint64_t word = 0;
    ptrdiff_t w = 0;
    int bad = 0;
    for (ptrdiff_t j = 0; j < n_new; ++j) {
        const ptrdiff_t at = (ptrdiff_t)ins[j];
        const ptrdiff_t slot = j + k_before[at >> 4] +
                               __builtin_popcount(k_bits[at >> 4] & ((1u << (at & 15)) - 1));
        for (; w < (slot >> 6); ++w, word = 0) is_new[w] = word;
        word |= 1ULL << (slot & 63);
        bad |= sk_lands_on_kept(indices, keep, a, n_old, at, nb[j]);
    }
    for (; w <= n_out / 64; ++w, word = 0) is_new[w] = word;
    const float *nv = new_vals + b;
    ptrdiff_t from_kept = 0, from_new = 0;
    for (ptrdiff_t s = 0; s < n_out; s += 16) {
        const __mmask16 valid = (__mmask16)(n_out - s >= 16 ? 0xFFFFu
                                                           : (1u << (n_out - s)) - 1);
        const __mmask16 fresh = (__mmask16)((is_new[s >> 6] >> (s & 63)) & valid);
        const __mmask16 old = (__mmask16)(valid & ~fresh);
        /* masked loads of the next entries, expanded in registers: the expanding load from
           memory is one instruction on Intel, but a slow memory form on some AMD cores */
        const int n_k = __builtin_popcount(old), n_n = __builtin_popcount(fresh);
        const __mmask16 take_k = (__mmask16)((1u << n_k) - 1);
        const __mmask16 take_n = (__mmask16)((1u << n_n) - 1);
        const __m512i vi = _mm512_mask_expand_epi32(
            _mm512_maskz_expand_epi32(old, _mm512_maskz_loadu_epi32(take_k, k_idx + from_kept)),
            fresh, _mm512_maskz_loadu_epi32(take_n, nb + from_new));
        _mm512_mask_storeu_epi32(out_idx + p + s, valid, vi);
        const __m512 vd = _mm512_mask_expand_ps(
            _mm512_maskz_expand_ps(old, _mm512_maskz_loadu_ps(take_k, k_val + from_kept)),
            fresh, _mm512_maskz_loadu_ps(take_n, nv + from_new));
        _mm512_mask_storeu_ps(out_data + p + s, valid, vd);
        if (STATE)
            _mm512_mask_storeu_ps(st_out + p + s, valid, _mm512_maskz_expand_ps(
                old, _mm512_maskz_loadu_ps(take_k, k_st + from_kept)));
        from_kept += n_k;
        from_new += n_n;
    }
    return bad;
}
#define SK_PLACE_VECTOR 1
#else
#define SK_PLACE_VECTOR 0
#endif

/* One row of a rebuild: counted placement for rows of ordinary size, the walk otherwise. */
template <bool SRC, bool STATE, class T, class I>
static inline int sk_merge_row_t(const I *indices, const uint8_t *keep, const I *new_cols,
                                 const T *data, const T *new_vals, ptrdiff_t a, ptrdiff_t a_end,
                                 ptrdiff_t b, ptrdiff_t b_end, ptrdiff_t p, ptrdiff_t p_end,
                                 I *out_idx, T *out_data, int64_t *src, const T *st_in,
                                 T *st_out) {
    if (b_end > b && b_end - b <= SK_PLACE_MAX_NEW && a_end - a <= SK_PLACE_MAX_OLD) {
#if SK_PLACE_VECTOR
        if constexpr (!SRC && std::is_same<T, float>::value && std::is_same<I, int32_t>::value)
            return sk_place_row_v<STATE>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                         b_end, p, out_idx, out_data, st_in, st_out);
#endif
        return sk_place_row_t<SRC, STATE>(indices, keep, new_cols, data, new_vals, a, a_end, b,
                                          b_end, p, out_idx, out_data, src, st_in, st_out);
    }
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
