/* Counting, for each of up to 64 sorted-or-not values q[i], how many of n keys lie below it:
   the vectorised count that the sampler (sampling.hh: ranks to columns) and the rebuild
   (rebuild.hh: insertion points) run once per row.

   The counts are held in vector registers, one accumulator per 64-byte vector of q, while the
   keys stream past: with the counts in an array, GCC stored and reloaded them for every key,
   a chain through memory that made this loop half of a rebuild. */
#ifndef SPARSEKIT_COUNTS_HH
#define SPARSEKIT_COUNTS_HH

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>

/* g in every lane of a 512-bit vector of 32- or 64-bit integers. */
template <class I> static inline __attribute__((always_inline)) __m512i sk_bcast512(I g) {
    if constexpr (sizeof(I) == 4) return _mm512_set1_epi32((int)g);
    else return _mm512_set1_epi64((long long)g);
}
/* acc + 1 in the lanes where g < q (LE: g <= q), for 32- or 64-bit lanes. */
template <bool LE, class I>
static inline __attribute__((always_inline)) __m512i sk_count_step(__m512i acc, __m512i g,
                                                                   __m512i q) {
    if constexpr (sizeof(I) == 4)
        return _mm512_mask_add_epi32(acc, LE ? _mm512_cmple_epi32_mask(g, q)
                                             : _mm512_cmplt_epi32_mask(g, q),
                                     acc, _mm512_set1_epi32(1));
    else
        return _mm512_mask_add_epi64(acc, LE ? _mm512_cmple_epi64_mask(g, q)
                                             : _mm512_cmplt_epi64_mask(g, q),
                                     acc, _mm512_set1_epi64(1));
}
#endif

/* cnt[0 : NV lanes) = #{j < n : key(j) < q[i]} (LE: key(j) <= q[i]). */
template <int NV, bool LE, class I, class Key>
static inline void sk_count_keys_v(ptrdiff_t n, Key key, const I *q, I *cnt) {
    typedef I V __attribute__((vector_size(64)));
    constexpr int lanes = 64 / (int)sizeof(I);
    V qv[NV], acc[NV];
    for (int v = 0; v < NV; ++v) {
        memcpy(&qv[v], q + v * lanes, sizeof(V));
        acc[v] = qv[v] & 0;
    }
#if defined(__AVX512F__)
    /* A compare into a mask register and a masked add: two instructions per vector and key.
       Written with vector types, GCC turned the mask into a vector first (a third), and the
       count of 100 keys into 2 vectors ran about 25 % slower on an Intel Xeon guest. */
    if constexpr (sizeof(I) == 4 || sizeof(I) == 8) {
        __m512i q512[NV], a512[NV];
        for (int v = 0; v < NV; ++v) {
            memcpy(&q512[v], &qv[v], sizeof(V));
            a512[v] = _mm512_setzero_si512();
        }
        for (ptrdiff_t j = 0; j < n; ++j) {
            const __m512i gv = sk_bcast512<I>(key(j));
            for (int v = 0; v < NV; ++v) a512[v] = sk_count_step<LE, I>(a512[v], gv, q512[v]);
        }
        for (int v = 0; v < NV; ++v) memcpy(&acc[v], &a512[v], sizeof(V));
    } else
#endif
    for (ptrdiff_t j = 0; j < n; ++j) {
        const I g = key(j);
        for (int v = 0; v < NV; ++v) acc[v] -= LE ? (V)(g <= qv[v]) : (V)(g < qv[v]);  /* -1 */
    }
    for (int v = 0; v < NV; ++v) memcpy(cnt + v * lanes, &acc[v], sizeof(V));
}

/* The same for m <= 64 values q[0:m]: q and cnt hold 64 entries; q is padded here with 0
   past m (counts not used). */
template <bool LE, class I, class Key>
static inline void sk_count_keys(ptrdiff_t n, Key key, I *q, ptrdiff_t m, I *cnt) {
    constexpr ptrdiff_t lanes = 64 / sizeof(I);
    const ptrdiff_t nv = (m + lanes - 1) / lanes;
    for (ptrdiff_t i = m; i < (nv > 4 ? 8 : nv) * lanes; ++i) q[i] = 0;
    switch (nv) {
        case 0: return;
        case 1: sk_count_keys_v<1, LE>(n, key, q, cnt); return;
        case 2: sk_count_keys_v<2, LE>(n, key, q, cnt); return;
        case 3: sk_count_keys_v<3, LE>(n, key, q, cnt); return;
        case 4: sk_count_keys_v<4, LE>(n, key, q, cnt); return;
        default:  /* 64-bit values, 5 to 8 vectors: two groups of 4 */
            sk_count_keys_v<4, LE>(n, key, q, cnt);
            sk_count_keys_v<4, LE>(n, key, q + 4 * lanes, cnt + 4 * lanes);
    }
}

#endif  /* SPARSEKIT_COUNTS_HH */
