/* Small helpers of the per-row uniform sampler (sampling.pyx). */
#ifndef SPARSEKIT_SAMPLING_HH
#define SPARSEKIT_SAMPLING_HH

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <limits>

#include "counts.hh"
#include "streams.hh"

/* Ranks of the NV vectors of t starting at vector v0 (see sk_rank_sort), held in registers
   while the x values stream past (counts.hh says why). */
template <int NV, class I>
static inline void sk_ranks_v(const I *t, ptrdiff_t x, int v0, I *r) {
    typedef I V __attribute__((vector_size(64)));
    constexpr int lanes = 64 / (int)sizeof(I);
    V tv[NV], at[NV], acc[NV];
    for (int v = 0; v < NV; ++v) {
        memcpy(&tv[v], t + (v0 + v) * lanes, sizeof(V));
        for (int i = 0; i < lanes; ++i) at[v][i] = (I)((v0 + v) * lanes + i);
        acc[v] = tv[v] & 0;
    }
    for (ptrdiff_t j = 0; j < x; ++j) {
        const I w = t[j], jj = (I)j;
        for (int v = 0; v < NV; ++v)
            acc[v] -= (V)(w < tv[v]) | ((V)(w == tv[v]) & (V)(jj < at[v]));  /* true is -1 */
    }
    for (int v = 0; v < NV; ++v) memcpy(r + (v0 + v) * lanes, &acc[v], sizeof(V));
}

/* Sort x <= 64 values in place by rank counting: rank[i] = #{j : a[j] < a[i]} + #{j < i :
   a[j] == a[i]}.  The loop over i runs on whole vectors of ranks (the tail padded with the
   largest value, which no real value reaches, so it never counts), so each of the x passes is
   a few vector compares and adds with no horizontal sum and no branch on the data: random
   draws would mispredict a comparison sort about every other branch.  A sorted array is
   unique, so this gives exactly what any sort gives. */
template <class I>
static inline __attribute__((always_inline)) void sk_rank_sort(I *a, ptrdiff_t x) {
    constexpr ptrdiff_t lanes = 64 / sizeof(I);
    alignas(64) I t[64];
    alignas(64) I r[64];
    const ptrdiff_t nv = (x + lanes - 1) / lanes;
    for (ptrdiff_t i = 0; i < x; ++i) t[i] = a[i];
    for (ptrdiff_t i = x; i < (nv > 4 ? 8 : nv) * lanes; ++i) t[i] = std::numeric_limits<I>::max();
    switch (nv) {
        case 1: sk_ranks_v<1>(t, x, 0, r); break;
        case 2: sk_ranks_v<2>(t, x, 0, r); break;
        case 3: sk_ranks_v<3>(t, x, 0, r); break;
        case 4: sk_ranks_v<4>(t, x, 0, r); break;
        default:  /* 64-bit values, 5 to 8 vectors */
            sk_ranks_v<4>(t, x, 0, r);
            sk_ranks_v<4>(t, x, 4, r);
    }
    for (ptrdiff_t i = 0; i < x; ++i) a[r[i]] = t[i];
}

/* Ranks among a row's free columns -> columns, for u <= 64 sorted ranks and a row of n
   sorted, distinct pattern columns: column = rank + #{j : cols[j] - j <= rank} (cols[j] - j
   free columns lie before cols[j]).  The count runs over j outside and over whole vectors of
   ranks inside (counts.hh), so it is n * ceil(u / lanes) vector compares with no dependency
   between ranks and no branch on the data (a merge would mispredict at random
   interleavings). */
template <class I>
static inline __attribute__((always_inline)) void sk_ranks_to_cols(const I *cols, ptrdiff_t n,
                                                                   I *ranks, ptrdiff_t u) {
    alignas(64) I q[64];
    alignas(64) I cnt[64];
    for (ptrdiff_t i = 0; i < u; ++i) q[i] = ranks[i];
    sk_count_keys<true>(n, [cols](ptrdiff_t j) { return (I)(cols[j] - (I)j); }, q, u, cnt);
    for (ptrdiff_t i = 0; i < u; ++i) ranks[i] = q[i] + cnt[i];
}

/* The same map for long rows or many ranks: ranks[i] += #{j : cols[j] - j <= ranks[i]}.
   cols[j] - j does not decrease, so the j counted form a prefix, and the ranks are sorted: one
   walk finds every prefix end, 16 entries at a time (one vector compare for the fixed-length
   loop), so a row costs about n / 16 + u steps instead of the n + u dependent steps of a scalar
   merge. */
template <class I>
static inline void sk_count_map(const I *cols, ptrdiff_t n, I *ranks, ptrdiff_t u) {
    ptrdiff_t jp = 0;
    for (ptrdiff_t i = 0; i < u; ++i) {
        const I q = ranks[i];
        for (;;) {
            if (jp + 16 <= n) {
                I cnt = 0;
                for (ptrdiff_t t = 0; t < 16; ++t) cnt += (I)(cols[jp + t] - (I)(jp + t) <= q);
                jp += cnt;
                if (cnt < 16) break;
            } else {
                while (jp < n && cols[jp] - (I)jp <= q) ++jp;
                break;
            }
        }
        ranks[i] = q + (I)jp;
    }
}

/* One row of one sampling round (sampling.pyx's _grow_rows): x i.i.d. draws among the row's
   free columns (neither among its n_pat pattern columns pat nor its n_old columns old chosen
   in earlier rounds; both sorted), from the row's stream under `key`; the distinct
   ones are mapped to columns and merged with old into out[0 : x + n_old], sorted.  Returns the
   number of columns written (n_old + the distinct draws).  Raw pointers: with Cython
   memoryview arguments each call copied three slice structs and GCC spilled the cursors. */
template <class I>
static inline ptrdiff_t sk_grow_row(const I *pat, ptrdiff_t n_pat, const I *old, ptrdiff_t n_old,
                                    ptrdiff_t x, uint64_t key, uint64_t row, int64_t n_cols,
                                    I *out) {
    if (x == 0) {  /* most rows in the rounds after the first: a copy */
        if (n_old) memcpy(out, old, (size_t)n_old * sizeof(I));
        return n_old;
    }
    uint64_t state = sk_mix64(key ^ sk_mix64(row + 1));
    const uint64_t n_free = (uint64_t)(n_cols - n_pat - n_old);
    /* ranks among the free columns: draw, sort, keep the distinct ones (front of out) */
    for (ptrdiff_t j = 0; j < x; ++j) out[j] = (I)sk_below(&state, n_free);
    if (x <= 64)
        sk_rank_sort(out, x);
    else
        std::sort(out, out + x);
    /* Distinct ones, branch-free: store each value, then advance past a new one.  A value is
       new when it differs from the one before it in the sorted input (held in a register:
       comparing with the slot just stored would chain every step through memory). */
    ptrdiff_t u = 1;
    I prev = out[0];
    for (ptrdiff_t j = 1; j < x; ++j) {
        const I cur = out[j];
        out[u] = cur;
        u += (cur != prev);
        prev = cur;
    }
    if (n_old == 0) {
        if (n_pat > 0 && n_pat <= 1024 && u <= 64)
            sk_ranks_to_cols(pat, n_pat, out, u);
        else if (n_pat > 0)
            sk_count_map(pat, n_pat, out, u);
        return u;
    }
    /* rank -> column: skip the pattern's columns and the chosen ones (both sorted, disjoint) */
    ptrdiff_t jp = 0, jc = 0;
    for (ptrdiff_t j = 0; j < u; ++j) {
        int64_t col = (int64_t)out[j] + jp + jc;
        for (;;) {
            if (jp < n_pat && pat[jp] <= col) {
                ++jp;
                ++col;
            } else if (jc < n_old && old[jc] <= col) {
                ++jc;
                ++col;
            } else {
                break;
            }
        }
        out[j] = (I)col;
    }
    /* merge with the chosen columns from the back (the new ones sit at the front) */
    ptrdiff_t a = u - 1, w = u + n_old - 1;
    jc = n_old - 1;
    while (jc >= 0) {
        if (a >= 0 && out[a] > old[jc]) {
            out[w] = out[a];
            --a;
        } else {
            out[w] = old[jc];
            --jc;
        }
        --w;
    }
    return u + n_old;
}

#endif  /* SPARSEKIT_SAMPLING_HH */
