/* Small helpers of the per-row uniform sampler (sampling.pyx). */
#ifndef SPARSEKIT_SAMPLING_HH
#define SPARSEKIT_SAMPLING_HH

#include <stddef.h>
#include <limits>

/* Sort x <= 64 values in place by rank counting: rank[i] = #{j : a[j] < a[i]} + #{j < i :
   a[j] == a[i]}.  The loop over i runs on whole vectors of ranks (the tail padded with the
   largest value, which no real value reaches, so it never counts), so each of the x passes is
   a few vector compares and adds with no horizontal sum and no branch on the data: random
   draws would mispredict a comparison sort about every other branch.  A sorted array is
   unique, so this gives exactly what any sort gives. */
template <class I>
static inline void sk_rank_sort(I *a, ptrdiff_t x) {
    constexpr ptrdiff_t lanes = 64 / sizeof(I);
    alignas(64) I t[64];
    alignas(64) I r[64];
    const ptrdiff_t n = (x + lanes - 1) / lanes * lanes;
    for (ptrdiff_t i = 0; i < x; ++i) t[i] = a[i];
    for (ptrdiff_t i = x; i < n; ++i) t[i] = std::numeric_limits<I>::max();
    for (ptrdiff_t i = 0; i < n; ++i) r[i] = 0;
    for (ptrdiff_t j = 0; j < x; ++j) {
        const I v = t[j];
        for (ptrdiff_t i = 0; i < n; ++i)
            r[i] += (I)((v < t[i]) | ((v == t[i]) & (j < i)));
    }
    for (ptrdiff_t i = 0; i < x; ++i) a[r[i]] = t[i];
}

/* Ranks among a row's free columns -> columns, for u <= 64 sorted ranks and a row of n
   sorted, distinct pattern columns: column = rank + #{j : cols[j] - j <= rank} (cols[j] - j
   free columns lie before cols[j]).  The count runs over j outside and over whole vectors of
   ranks inside, so it is n * ceil(u / lanes) vector compares with no dependency between
   ranks and no branch on the data (a merge would mispredict at random interleavings). */
template <class I>
static inline void sk_ranks_to_cols(const I *cols, ptrdiff_t n, I *ranks, ptrdiff_t u) {
    constexpr ptrdiff_t lanes = 64 / sizeof(I);
    alignas(64) I q[64];
    alignas(64) I cnt[64];
    const ptrdiff_t m = (u + lanes - 1) / lanes * lanes;
    for (ptrdiff_t i = 0; i < u; ++i) q[i] = ranks[i];
    for (ptrdiff_t i = u; i < m; ++i) q[i] = 0;
    for (ptrdiff_t i = 0; i < m; ++i) cnt[i] = 0;
    for (ptrdiff_t j = 0; j < n; ++j) {
        const I g = (I)(cols[j] - (I)j);
        for (ptrdiff_t i = 0; i < m; ++i) cnt[i] += (I)(g <= q[i]);
    }
    for (ptrdiff_t i = 0; i < u; ++i) ranks[i] = q[i] + cnt[i];
}

#endif  /* SPARSEKIT_SAMPLING_HH */
