/* The two passes of the radix selection (select.pyx) over one chunk of values, with the keys
   computed a whole vector at a time.

   The key of a value is a few masks and shifts of its bits (sk_keys); done one value at a time they made each pass about 2.5 cycles a value.
   Here a vector of keys (16 with AVX-512 for float32) is computed at once and only what
   cannot be a vector operation stays scalar: the histogram's increments, and the copy of the
   few keys that fall in the threshold bin (a vector without one, most of them, costs a test). */
#ifndef SPARSEKIT_SELECT_HH
#define SPARSEKIT_SELECT_HH

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "simd.hh"

/* Unsigned keys of the values of T: mode 0/1 one class, keys increasing/decreasing
   with the value (-0.0 ties with 0.0); mode 2 the positive values in class 0 and the negative
   ones in class 1, key = bits of |x|, and only 0 < |x| <= inf selectable. */
template <class T> struct SkKeyBits;
template <> struct SkKeyBits<float> {
    typedef uint32_t U;
    static constexpr U SIGN = 0x80000000u, MAG = 0x7FFFFFFFu, INF = 0x7F800000u;
};
template <> struct SkKeyBits<double> {
    typedef uint64_t U;
    static constexpr U SIGN = 0x8000000000000000ull, MAG = 0x7FFFFFFFFFFFFFFFull,
                       INF = 0x7FF0000000000000ull;
};

/* Keys of one vector of bits b (lanes of U), their class (0 or all ones) and whether they are
   selectable (all ones or 0). */
template <class T, class V>
static inline V sk_keys(V b, int mode, V *cls, V *valid) {
    typedef SkKeyBits<T> K;
    typedef typename K::U U;
    const int top = 8 * (int)sizeof(U) - 1;
    const V mag = b & K::MAG;
    if (mode == 2) {
        *cls = (V)(0 - (b >> top));
        *valid = (V)((mag - 1) < K::INF);
        return mag;
    }
    b &= (V)(mag != 0);                         /* -0.0 -> 0.0 */
    b ^= (V)(0 - (b >> top)) | K::SIGN;         /* order-preserving flip */
    *cls = b & 0;
    *valid = (V)(b == b);
    return mode == 1 ? ~b : b;
}

/* The key of one value (mode 0 or 1: every value is selectable, in class 0). */
template <class T>
static inline uint64_t sk_key(T x, int mode) {
    typedef typename SkKeyBits<T>::U U;
    typedef U V __attribute__((vector_size(sizeof(U))));
    V b, cls, valid;
    memcpy(&b, &x, sizeof b);
    return (uint64_t)sk_keys<T>(b, mode, &cls, &valid)[0];
}

/* hist[c * nbins + (key >> shift)] += 1 for the selectable values of x[lo:hi]; the others
   count in hist[2 * nbins], a spare slot (adding 0 would take a second lane per value). */
template <class T>
static inline void sk_histogram(const T *x, ptrdiff_t lo, ptrdiff_t hi, int mode, int shift,
                                ptrdiff_t nbins, int64_t *hist) {
    typedef typename SkKeyBits<T>::U U;
    typedef U V __attribute__((vector_size(SK_VBYTES)));
    constexpr int L = SK_VBYTES / (int)sizeof(U);
    const U spare = (U)(2 * nbins);
    alignas(64) U ix[L];
    ptrdiff_t i = lo;
    for (; i + L <= hi; i += L) {
        V b, cls, valid;
        memcpy(&b, x + i, sizeof b);
        const V key = sk_keys<T>(b, mode, &cls, &valid);
        const V at = (((key >> shift) + (cls & (U)nbins)) & valid) | (spare & ~valid);
        memcpy(ix, &at, sizeof at);
        for (int j = 0; j < L; ++j) hist[ix[j]] += 1;
    }
    for (; i < hi; ++i) {
        V b{}, cls, valid;
        memcpy(&b, x + i, sizeof(U));
        const V key = sk_keys<T>(b, mode, &cls, &valid);
        hist[valid[0] ? (key[0] >> shift) + (cls[0] & (U)nbins) : spare] += 1;
    }
}

/* Bit j set where lane j of v is not zero (a mask register test with AVX-512). */
template <class U, class V>
static inline uint32_t sk_lane_mask(const V &v) {
    constexpr int L = (int)(sizeof(V) / sizeof(U));
#if defined(__AVX512F__)
    if constexpr (sizeof(V) == 64) {
        if constexpr (sizeof(U) == 4)
            return (uint32_t)_mm512_test_epi32_mask((__m512i)v, (__m512i)v);
        else
            return (uint32_t)_mm512_test_epi64_mask((__m512i)v, (__m512i)v);
    }
#endif
    uint32_t m = 0;
    for (int j = 0; j < L; ++j) m |= (uint32_t)(v[j] != 0) << j;
    return m;
}

/* Copy the keys and indices of x[lo:hi] that fall in each class's threshold bin (bin[c] < 0:
   none of class c), in index order, to keys_c[p_c...], idx_c[p_c...]; advances p0 and p1.
   Few values do (one bin of 4096), so most vectors cost a mask test and nothing else. */
template <class T>
static inline void sk_collect(const T *x, ptrdiff_t lo, ptrdiff_t hi, int mode, int shift,
                              const int64_t *bin, uint64_t *keys0, int64_t *idx0, int64_t *p0,
                              uint64_t *keys1, int64_t *idx1, int64_t *p1) {
    typedef typename SkKeyBits<T>::U U;
    typedef U V __attribute__((vector_size(SK_VBYTES)));
    constexpr int L = SK_VBYTES / (int)sizeof(U);
    /* a class without a bin takes one no key reaches (key >> shift < 2^13 <= U's max) */
    const U b0 = bin[0] < 0 ? (U)~(U)0 : (U)bin[0];
    const U b1 = bin[1] < 0 ? (U)~(U)0 : (U)bin[1];
    int64_t q0 = *p0, q1 = *p1;
    alignas(64) U kk[L];
    /* the hits of the L values from x[i] (lanes past n are not looked at) */
    auto take = [&](ptrdiff_t i, const V &b, int n) {
        V cls, valid;
        const V key = sk_keys<T>(b, mode, &cls, &valid);
        const V top = key >> shift;
        const uint32_t lanes = n == L ? ~0u : (1u << n) - 1;
        const uint32_t m0 = sk_lane_mask<U>(valid & ~cls & (V)(top == b0)) & lanes;
        uint32_t m = (sk_lane_mask<U>(valid & cls & (V)(top == b1)) & lanes) | m0;
        if (!m) return;
        memcpy(kk, &key, sizeof key);
        for (; m; m &= m - 1) {
            const int j = __builtin_ctz(m);
            if ((m0 >> j) & 1) {
                keys0[q0] = kk[j];
                idx0[q0++] = i + j;
            } else {
                keys1[q1] = kk[j];
                idx1[q1++] = i + j;
            }
        }
    };
    ptrdiff_t i = lo;
    for (; i + L <= hi; i += L) {
        V b;
        memcpy(&b, x + i, sizeof b);
        take(i, b, L);
    }
    if (i < hi) {
        V b{};
        memcpy(&b, x + i, (size_t)(hi - i) * sizeof(U));
        take(i, b, (int)(hi - i));
    }
    *p0 = q0;
    *p1 = q1;
}

#endif  /* SPARSEKIT_SELECT_HH */
