/* Vector helpers of the CPU products (spmm.hh, dots.hh) on GCC/Clang vector extensions, which
   -march (set by setup.py) lowers to AVX-512, AVX2 or SSE: the vector width, unaligned and
   masked loads and stores, prefetches, and the fixed reduction trees that keep every sum in an
   order set by the shapes alone. */
#ifndef SPARSEKIT_SIMD_HH
#define SPARSEKIT_SIMD_HH

#include <string.h>
#include <utility>

/* Vector bytes, and the widest tile (in vectors) of a batch-row segment held in registers. */
#if defined(__AVX512F__)
#define SK_VBYTES 64
#define SK_TILE 8
#elif defined(__AVX__)
#define SK_VBYTES 32
#define SK_TILE 4
#else
#define SK_VBYTES 16
#define SK_TILE 4
#endif


template <typename T> struct SkVec {
    typedef T V __attribute__((vector_size(SK_VBYTES)));
    enum { N = SK_VBYTES / (int)sizeof(T) };
};
template <typename T, int B> struct SkPart { typedef T V __attribute__((vector_size(B))); };

template <typename V, typename T> static inline V sk_ld(const T* p) {
    V v; memcpy(&v, p, sizeof v); return v;
}
template <typename V, typename T> static inline void sk_st(T* p, const V& v) {
    memcpy(p, &v, sizeof v);
}

/* The first n (1 <= n <= lanes) elements of a vector: loaded with the others 0 and stored
   without touching the others.  Masked moves do not fault on the lanes left out, so a row's
   last vector may end anywhere.  With AVX-512 only (SK_MASKED); elsewhere the callers take a
   scalar tail. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define SK_MASKED 1
/* The lanes set in mask m: loaded with the others 0, stored without touching the others. */
template <typename V, typename T> static inline V sk_ld_m(const T* p, unsigned m) {
    if constexpr (sizeof(T) == 4) {
        return (V)_mm512_maskz_loadu_ps((__mmask16)m, p);
    } else {
        return (V)_mm512_maskz_loadu_pd((__mmask8)m, p);
    }
}
template <typename V, typename T> static inline void sk_st_m(T* p, const V& v, unsigned m) {
    if constexpr (sizeof(T) == 4) {
        _mm512_mask_storeu_ps(p, (__mmask16)m, (__m512)v);
    } else {
        _mm512_mask_storeu_pd(p, (__mmask8)m, (__m512d)v);
    }
}
template <typename V, typename T> static inline V sk_ld_n(const T* p, int n) {
    return sk_ld_m<V>(p, (1u << n) - 1);
}
template <typename V, typename T> static inline void sk_st_n(T* p, const V& v, int n) {
    sk_st_m(p, v, (1u << n) - 1);
}
#else
#define SK_MASKED 0
#endif
static inline int sk_vbytes(void) { return SK_VBYTES; }
/* 1 when a vector can start before a row and mask the lanes outside it (spmm.hh's head). */
static inline int sk_masked(void) { return SK_MASKED; }

/* The first n (< N) elements of p in a vector whose other lanes are 0, and the converse
   store: in builds without masked moves, a batch row's last elements then go through the same
   vector arithmetic as a whole vector's lanes. */
template <typename V, typename T> static inline V sk_ld_part(const T* p, int n) {
    V v = V{};
    for (int i = 0; i < n; ++i) v[i] = p[i];
    return v;
}
template <typename V, typename T> static inline void sk_st_part(T* p, const V& v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v[i];
}

/* acc[0:A][0:B] = 0: the register tile of a product kernel, before its first non-zero. */
template <typename V, int A, int B> static inline void sk_zero_tile(V (&acc)[A][B]) {
    #pragma GCC unroll 16
    for (int a = 0; a < A; ++a)
        #pragma GCC unroll 16
        for (int b = 0; b < B; ++b) acc[a][b] = V{};
}

/* Prefetch the U vectors (one or more cache lines) of a gathered row segment. */
template <typename T, int U> static inline void sk_prefetch(const T* q) {
    typedef typename SkVec<T>::V V;
    const int step = 64 / (int)sizeof(V) > 0 ? 64 / (int)sizeof(V) : 1;
    #pragma GCC unroll 16
    for (int u = 0; u < U; u += step) __builtin_prefetch(q + u * SkVec<T>::N);
}
/* Pins a value where it is: GCC may not regroup the additions that made it with those that
   use it (-fassociative-math otherwise lets it regroup a chain of additions, and it did so
   differently in two instantiations of dots.hh's sk_dot_tile that differ only in where the
   gradient is stored: one dx value in 4 290 changed in its last bit).  No instruction. */
template <typename V>
static inline __attribute__((always_inline)) void sk_keep_order(V& v) {
    __asm__("" : "+v"(v));
}

/* Horizontal sum by halving: a fixed tree, so a fixed rounding order.  The halves are taken
   by shuffles in registers: taken through memory (memcpy), GCC stored the vector and
   reloaded its upper half, a store-forwarding stall per sum that made the fused backward's
   one-dot-at-a-time path (a row's last non-zeros, the output layer's 10 per input) about
   half of the top layer's backward.  Each level's sum is pinned (sk_keep_order). */
template <typename H, typename V, int Off, int... I>
static inline __attribute__((always_inline)) H sk_half(const V& v,
                                                       std::integer_sequence<int, I...>) {
    return __builtin_shufflevector(v, v, (I + Off)...);
}
template <typename T, int B> static inline T sk_hsum(const typename SkPart<T, B>::V& v) {
    if constexpr (B == 2 * (int)sizeof(T)) {
        return v[0] + v[1];
    } else if constexpr (B == 4 * (int)sizeof(T)) {  /* a 2-lane vector went through memory */
        T a = v[0] + v[2], b = v[1] + v[3];
        sk_keep_order(a);
        sk_keep_order(b);
        return a + b;
    } else {
        typedef typename SkPart<T, B / 2>::V H;
        constexpr int n = B / 2 / (int)sizeof(T);
        H sum = sk_half<H, typename SkPart<T, B>::V, 0>(v, std::make_integer_sequence<int, n>{}) +
                sk_half<H, typename SkPart<T, B>::V, n>(v, std::make_integer_sequence<int, n>{});
        sk_keep_order(sum);
        return sk_hsum<T, B / 2>(sum);
    }
}

/* Sum of P partial accumulators in a fixed tree (each inner sum pinned, see sk_keep_order). */
template <typename V, int P, int U> static inline void sk_fold(V (&acc)[P][U]) {
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u) {
        if (P == 4) {
            V lo = acc[0][u] + acc[1 % P][u], hi = acc[2 % P][u] + acc[3 % P][u];
            sk_keep_order(lo);
            sk_keep_order(hi);
            acc[0][u] = lo + hi;
        } else if (P == 2) {
            acc[0][u] = acc[0][u] + acc[1 % P][u];
        }
    }
}

/* Transposing reduction: N dot-product vectors (N = lanes) to one vector of their N sums
   in 2 shuffles and 1 add per pair, instead of a halving tree per vector.  sk_fold2<H> adds
   the two halves of every 2H-lane group of a and of b, side by side. */
template <int NL, int H, bool HI> constexpr int sk_fidx(int i) {
    return (i % (2 * H) < H) ? (i / (2 * H)) * 2 * H + (HI ? H : 0) + i % (2 * H)
                             : NL + (i / (2 * H)) * 2 * H + (HI ? H : 0) + i % (2 * H) - H;
}
template <typename V, int NL, int H, int... Ix>
static inline __attribute__((always_inline)) V sk_fold2_(V a, V b,
                                                          std::integer_sequence<int, Ix...>) {
    return __builtin_shufflevector(a, b, sk_fidx<NL, H, false>(Ix)...) +
           __builtin_shufflevector(a, b, sk_fidx<NL, H, true>(Ix)...);
}
template <typename V, int NL, int H>
static inline __attribute__((always_inline)) V sk_fold2(V a, V b) {
    return sk_fold2_<V, NL, H>(a, b, std::make_integer_sequence<int, NL>{});
}
constexpr int sk_log2(int n) { return n <= 1 ? 0 : 1 + sk_log2(n / 2); }
constexpr int sk_bitrev(int j, int bits) {
    int r = 0;
    for (int i = 0; i < bits; ++i) r |= ((j >> i) & 1) << (bits - 1 - i);
    return r;
}
template <typename V, int NL>
static inline __attribute__((always_inline)) V sk_fold_level(int l, V a, V b) {
    /* level l folds groups of NL >> l lanes to NL >> (l + 1); l is a constant once unrolled */
    if constexpr (NL >= 2) { if (l == 0) return sk_fold2<V, NL, NL / 2>(a, b); }
    if constexpr (NL >= 4) { if (l == 1) return sk_fold2<V, NL, NL / 4>(a, b); }
    if constexpr (NL >= 8) { if (l == 2) return sk_fold2<V, NL, NL / 8>(a, b); }
    if constexpr (NL >= 16) { if (l == 3) return sk_fold2<V, NL, NL / 16>(a, b); }
    if constexpr (NL >= 32) { if (l == 4) return sk_fold2<V, NL, NL / 32>(a, b); }
    return a + b;
}

#endif  /* SPARSEKIT_SIMD_HH */
