"""Sparse x dense products on a CSR weight matrix W (rows = output neurons).

Activations are feature-major: ``x_ib`` has one contiguous row of ``n_batch`` values per input
neuron, so every non-zero of W does one contiguous, vectorisable axpy or dot of length n_batch.
Each OpenMP thread owns the output rows it writes; nothing is accumulated with atomics, so a
result does not depend on the thread count.

The kernels (C++ below, on GCC/Clang vector extensions) hold a register tile of up to 8 vectors
of one batch row (128 float32 with AVX-512) while a row's non-zeros stream past: the output is
stored once and every non-zero costs one load and one FMA per vector.  The pattern gradient
(fused backward, SDDMM) holds the other operand's row instead and folds the dots of 16 non-zeros
at a time with a transposing shuffle tree.  When the gathered operand outgrows L2 (TILE_BYTES)
the forward and the SDDMM walk the batch in 4-vector tiles over blocks of rows, and gathered
rows are prefetched a few non-zeros ahead; a misaligned gathered operand is realigned by one
copy.  Summation orders depend on the shapes only.
"""
from cython.parallel cimport prange

import numpy as np

from ._types cimport floating, index_t
from .._align import aligned_empty
from ._checks import check_batch_operand, check_pattern, check_threads



cdef extern from * nogil:
    """
    #include <stddef.h>
    #include <string.h>
    #include <utility>

    /* Register-tiled kernels written with GCC/Clang vector extensions, which -march lowers to
       AVX-512, AVX2 or SSE.  A tile is U vectors of one batch-row segment held in registers while
       the non-zeros of a row stream past: each output element is loaded and stored once, and every
       non-zero costs U gathered loads and U fused multiply-adds.  Every output element is summed in
       an order fixed by the shapes alone, never by the thread count. */
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
    #define SK_PD 4   /* non-zeros ahead whose gathered rows are prefetched */
    #ifndef SK_HOLD_MAX
    #define SK_HOLD_MAX 8  /* widest tile whose held row stays in registers alongside dx */
    #endif

    static inline int sk_vbytes(void) { return SK_VBYTES; }

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
    /* Horizontal sum by halving: a fixed tree, so a fixed rounding order. */
    template <typename T, int B> static inline T sk_hsum(const typename SkPart<T, B>::V& v) {
        if constexpr (B == 2 * (int)sizeof(T)) {
            return v[0] + v[1];
        } else {
            typename SkPart<T, B / 2>::V lo, hi;
            memcpy(&lo, &v, B / 2);
            memcpy(&hi, (const char*)&v + B / 2, B / 2);
            return sk_hsum<T, B / 2>(lo + hi);
        }
    }
    /* Prefetch the U vectors (one or more cache lines) of a gathered row segment. */
    template <typename T, int U> static inline void sk_prefetch(const T* q) {
        typedef typename SkVec<T>::V V;
        const int step = 64 / (int)sizeof(V) > 0 ? 64 / (int)sizeof(V) : 1;
        #pragma GCC unroll 16
        for (int u = 0; u < U; u += step) __builtin_prefetch(q + u * SkVec<T>::N);
    }
    /* Sum of P partial accumulators in a fixed tree. */
    template <typename V, int P, int U> static inline void sk_fold(V (&acc)[P][U]) {
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u) {
            if (P == 4) acc[0][u] = (acc[0][u] + acc[1 % P][u]) + (acc[2 % P][u] + acc[3 % P][u]);
            else if (P == 2) acc[0][u] = acc[0][u] + acc[1 % P][u];
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

    /* ---- W @ src and W.T @ src: out[0:U*N] = sum_k val_k * src[idx[k], 0:U*N] --------------- */
    template <typename T, typename I, bool PERM, bool PF, int U, int P>
    static inline void sk_axpy_tile(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                                    ptrdiff_t k1, const T* src, ptrdiff_t ld, T* out) {
        typedef typename SkVec<T>::V V;
        const int N = SkVec<T>::N;
        V acc[P][U];
        #pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
            #pragma GCC unroll 16
            for (int u = 0; u < U; ++u) acc[p][u] = V{};
        ptrdiff_t k = k0;
        for (; k + P <= k1; k += P) {
            #pragma GCC unroll 4
            for (int p = 0; p < P; ++p) {
                if (PF) {
                    const ptrdiff_t kp = k + p + SK_PD < k1 ? k + p + SK_PD : k1 - 1;
                    sk_prefetch<T, U>(src + (ptrdiff_t)idx[kp] * ld);
                }
                const T v = PERM ? vals[perm[k + p]] : vals[k + p];
                const T* s = src + (ptrdiff_t)idx[k + p] * ld;
                #pragma GCC unroll 16
                for (int u = 0; u < U; ++u) acc[p][u] += v * sk_ld<V>(s + u * N);
            }
        }
        for (; k < k1; ++k) {
            const T v = PERM ? vals[perm[k]] : vals[k];
            const T* s = src + (ptrdiff_t)idx[k] * ld;
            #pragma GCC unroll 16
            for (int u = 0; u < U; ++u) acc[0][u] += v * sk_ld<V>(s + u * N);
        }
        sk_fold<V, P, U>(acc);
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u) sk_st(out + u * N, acc[0][u]);
    }

    template <typename T, typename I, bool PERM>
    static inline void sk_axpy_tail(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                                    ptrdiff_t k1, const T* src, ptrdiff_t ld, T* out, int n) {
        T acc[SkVec<T>::N];
        for (int b = 0; b < n; ++b) acc[b] = 0;
        for (ptrdiff_t k = k0; k < k1; ++k) {
            const T v = PERM ? vals[perm[k]] : vals[k];
            const T* s = src + (ptrdiff_t)idx[k] * ld;
            for (int b = 0; b < n; ++b) acc[b] += v * s[b];
        }
        for (int b = 0; b < n; ++b) out[b] = acc[b];
    }

    /* One output row over the batch segment [0, n) (src rows and out are ld apart).  Every tile
       width, like the scalar tail, sums the non-zeros one after another into one accumulator per
       vector (P = 1), so a sample's output has the same bits whatever its position in the batch
       and the batch size (predictions must not depend on sample order or subsets).  Partial sums
       would hide FMA latency in the narrow tiles but tie the rounding to the position. */
    template <typename T, typename I, bool PERM, bool PF>
    static inline void sk_axpy_seg(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                                   ptrdiff_t k1, const T* src, ptrdiff_t ld, ptrdiff_t n, T* out) {
        const int N = SkVec<T>::N;
        ptrdiff_t b = 0;
        for (; b + SK_TILE * N <= n; b += SK_TILE * N)
            sk_axpy_tile<T, I, PERM, PF, SK_TILE, 1>(idx, vals, perm, k0, k1, src + b, ld, out + b);
        const ptrdiff_t r = (n - b) / N;
        if (SK_TILE > 4 && (r & 4)) {
            sk_axpy_tile<T, I, PERM, PF, 4, 1>(idx, vals, perm, k0, k1, src + b, ld, out + b);
            b += 4 * N;
        }
        if (r & 2) {
            sk_axpy_tile<T, I, PERM, PF, 2, 1>(idx, vals, perm, k0, k1, src + b, ld, out + b);
            b += 2 * N;
        }
        if (r & 1) {
            sk_axpy_tile<T, I, PERM, PF, 1, 1>(idx, vals, perm, k0, k1, src + b, ld, out + b);
            b += N;
        }
        if (b < n)
            sk_axpy_tail<T, I, PERM>(idx, vals, perm, k0, k1, src + b, ld, out + b, (int)(n - b));
    }

    /* Rows [r0, r1).  tv = 0: row by row over the whole batch.  tv = 1, 2 or 4: batch tiles of tv
       vectors in the outer loop, so only a tv-vector slice of every gathered row is live (it stays in
       L2 when the whole rows would not); the rest of the batch row by row. */
    template <typename T, typename I, bool PERM, bool PF>
    static void sk_spmm_rows_t(const I* indptr, const I* idx, const T* vals, const I* perm,
                               ptrdiff_t r0, ptrdiff_t r1, const T* src, ptrdiff_t n_batch, T* out,
                               int tv) {
        const int N = SkVec<T>::N;
        ptrdiff_t b = 0, r;
        if (tv == 4) {
            for (; b + 4 * N <= n_batch; b += 4 * N)
                for (r = r0; r < r1; ++r)
                    sk_axpy_tile<T, I, PERM, PF, 4, 1>(idx, vals, perm, indptr[r], indptr[r + 1],
                                                       src + b, n_batch, out + r * n_batch + b);
        } else if (tv == 2) {
            for (; b + 2 * N <= n_batch; b += 2 * N)
                for (r = r0; r < r1; ++r)
                    sk_axpy_tile<T, I, PERM, PF, 2, 1>(idx, vals, perm, indptr[r], indptr[r + 1],
                                                       src + b, n_batch, out + r * n_batch + b);
        } else if (tv == 1) {
            for (; b + N <= n_batch; b += N)
                for (r = r0; r < r1; ++r)
                    sk_axpy_tile<T, I, PERM, PF, 1, 1>(idx, vals, perm, indptr[r], indptr[r + 1],
                                                       src + b, n_batch, out + r * n_batch + b);
        }
        if (b < n_batch)
            for (r = r0; r < r1; ++r)
                sk_axpy_seg<T, I, PERM, PF>(idx, vals, perm, indptr[r], indptr[r + 1], src + b,
                                            n_batch, n_batch - b, out + r * n_batch + b);
    }

    template <typename T, typename I>
    static void sk_spmm_rows(const I* indptr, const I* idx, const T* vals, const I* perm,
                             ptrdiff_t r0, ptrdiff_t r1, const T* src, ptrdiff_t n_batch, T* out,
                             int tv, int pf) {
        if (perm == NULL) {
            if (pf) sk_spmm_rows_t<T, I, false, true>(indptr, idx, vals, perm, r0, r1, src, n_batch, out, tv);
            else sk_spmm_rows_t<T, I, false, false>(indptr, idx, vals, perm, r0, r1, src, n_batch, out, tv);
        } else {
            if (pf) sk_spmm_rows_t<T, I, true, true>(indptr, idx, vals, perm, r0, r1, src, n_batch, out, tv);
            else sk_spmm_rows_t<T, I, true, false>(indptr, idx, vals, perm, r0, r1, src, n_batch, out, tv);
        }
    }

    /* ---- fused backward and SDDMM ------------------------------------------------------------
       For one held row h (x[i, :] of input neuron i, or dy[o, :] of output neuron o) and the
       gathered rows g_k = src[idx[k], :] over the segment [0, U*N):
         g_out[k] (+)= dot(g_k, h)                          (the pattern gradient)
         acc[:]    = sum_k vals[perm[k]] * g_k               (dx, when DX)
       SCATTER: the gradient goes to g_out[perm[k]] (W's CSR order), else to g_out[k] (the order of
       idx).  FIRST: first segment of the row, so the gradient is written, not accumulated. */
    template <typename T, typename I, bool DX, bool SCATTER, bool FIRST, bool PF, int U, int P>
    static inline void sk_dot_tile(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                                   ptrdiff_t k1, const T* src, ptrdiff_t ld, const T* hrow,
                                   T* dxrow, T* g_out) {
        typedef typename SkVec<T>::V V;
        const int N = SkVec<T>::N;
        V hv[U], acc[P][U];
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u) hv[u] = sk_ld<V>(hrow + u * N);
        #pragma GCC unroll 16
        for (int p = 0; p < P; ++p)
            #pragma GCC unroll 16
            for (int u = 0; u < U; ++u) acc[p][u] = V{};
        ptrdiff_t k = k0;
        if constexpr (P == 1 && N >= 2) {
            /* Whole groups of N non-zeros: N dot vectors folded into one vector of N sums. */
            const int LG = sk_log2(N);
            #pragma GCC unroll 1
            for (; k + N <= k1; k += N) {
                /* A binary counter over the group: lvl[l] holds the pending partial of level l,
                   folded with its right neighbour when that completes (the same tree as a
                   recursive pairwise fold; full unrolling turns every index into a constant). */
                V lvl[LG > 0 ? LG : 1];
                V sums = V{};
                #pragma GCC unroll 16
                for (int j = 0; j < N; ++j) {
                    const ptrdiff_t kk = k + sk_bitrev(j, LG);
                    if (PF) {
                        const ptrdiff_t kp = kk + SK_PD < k1 ? kk + SK_PD : k1 - 1;
                        sk_prefetch<T, U>(src + (ptrdiff_t)idx[kp] * ld);
                    }
                    /* With dx too, the held row is re-read from L1 rather than kept in registers
                       (32 vector registers do not hold it, dx and the tree): hiding the pointer
                       from the optimiser stops it from hoisting the loads and spilling. */
                    const T* hr = hrow;
                    if (DX && U > SK_HOLD_MAX) __asm__("" : "+r"(hr));
                    const T* d = src + (ptrdiff_t)idx[kk] * ld;
                    V dv[U], hx[U];
                    #pragma GCC unroll 16
                    for (int u = 0; u < U; ++u) {
                        dv[u] = sk_ld<V>(d + u * N);
                        hx[u] = DX && U > SK_HOLD_MAX ? sk_ld<V>(hr + u * N) : hv[u];
                    }
                    V g0 = dv[0] * hx[0];
                    V g1 = V{};
                    #pragma GCC unroll 16
                    for (int u = 1; u < U; ++u) {
                        if (u & 1) g1 += dv[u] * hx[u]; else g0 += dv[u] * hx[u];
                    }
                    if (DX) {
                        const T v = vals[perm[kk]];
                        #pragma GCC unroll 16
                        for (int u = 0; u < U; ++u) acc[0][u] += v * dv[u];
                    }
                    V cur = U > 1 ? g0 + g1 : g0;
                    #pragma GCC unroll 8
                    for (int l = 0; l < LG; ++l) {
                        if (j & (1 << l)) {
                            cur = sk_fold_level<V, N>(l, lvl[l], cur);
                        } else {
                            lvl[l] = cur;
                            break;
                        }
                    }
                    if (j == N - 1) sums = cur;
                }
                if (SCATTER) {
                    T tmp[N];
                    memcpy(tmp, &sums, sizeof sums);
                    #pragma GCC unroll 16
                    for (int j = 0; j < N; ++j) {
                        if (FIRST) g_out[perm[k + j]] = tmp[j]; else g_out[perm[k + j]] += tmp[j];
                    }
                } else if (FIRST) {
                    sk_st(g_out + k, sums);
                } else {
                    sk_st(g_out + k, sk_ld<V>(g_out + k) + sums);
                }
            }
        }
        #pragma GCC unroll 1
        for (; k < k1; k += P) {
            #pragma GCC unroll 4
            for (int p = 0; p < P; ++p) {
                const ptrdiff_t kk = k + p;
                if (P > 1 && kk >= k1) break;
                if (PF) {
                    const ptrdiff_t kp = kk + SK_PD < k1 ? kk + SK_PD : k1 - 1;
                    sk_prefetch<T, U>(src + (ptrdiff_t)idx[kp] * ld);
                }
                const T* d = src + (ptrdiff_t)idx[kk] * ld;
                V dv[U];
                #pragma GCC unroll 16
                for (int u = 0; u < U; ++u) dv[u] = sk_ld<V>(d + u * N);
                V g0 = dv[0] * hv[0];
                V g1 = V{};
                #pragma GCC unroll 16
                for (int u = 1; u < U; ++u) {
                    if (u & 1) g1 += dv[u] * hv[u]; else g0 += dv[u] * hv[u];
                }
                const T s = sk_hsum<T, SK_VBYTES>(U > 1 ? g0 + g1 : g0);
                const ptrdiff_t q = SCATTER ? (ptrdiff_t)perm[kk] : kk;
                if (FIRST) g_out[q] = s; else g_out[q] += s;
                if (DX) {
                    const T v = vals[perm[kk]];
                    #pragma GCC unroll 16
                    for (int u = 0; u < U; ++u) acc[p][u] += v * dv[u];
                }
            }
        }
        if (DX) {
            sk_fold<V, P, U>(acc);
            #pragma GCC unroll 16
            for (int u = 0; u < U; ++u) sk_st(dxrow + u * N, acc[0][u]);
        }
    }

    template <typename T, typename I, bool DX, bool SCATTER, bool FIRST>
    static inline void sk_dot_tail(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                                   ptrdiff_t k1, const T* src, ptrdiff_t ld, const T* hrow,
                                   T* dxrow, T* g_out, int n) {
        T acc[SkVec<T>::N];
        for (int b = 0; b < n; ++b) acc[b] = 0;
        for (ptrdiff_t k = k0; k < k1; ++k) {
            const T* d = src + (ptrdiff_t)idx[k] * ld;
            T s = 0;
            for (int b = 0; b < n; ++b) s += d[b] * hrow[b];
            const ptrdiff_t q = SCATTER ? (ptrdiff_t)perm[k] : k;
            if (FIRST) g_out[q] = s; else g_out[q] += s;
            if (DX) {
                const T v = vals[perm[k]];
                for (int b = 0; b < n; ++b) acc[b] += v * d[b];
            }
        }
        if (DX) for (int b = 0; b < n; ++b) dxrow[b] = acc[b];
    }

    template <typename T, typename I, bool DX, bool SCATTER, bool PF, int U, int P>
    static inline void sk_dot_seg(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                                  ptrdiff_t k1, const T* src, ptrdiff_t ld, const T* hrow, T* dxrow,
                                  T* g_out, bool first) {
        if (first)
            sk_dot_tile<T, I, DX, SCATTER, true, PF, U, P>(idx, perm, vals, k0, k1, src, ld, hrow,
                                                           dxrow, g_out);
        else
            sk_dot_tile<T, I, DX, SCATTER, false, PF, U, P>(idx, perm, vals, k0, k1, src, ld, hrow,
                                                            dxrow, g_out);
    }

    /* One held row over the batch segment [b0, n_batch); b0 > 0 means earlier segments wrote. */
    template <typename T, typename I, bool DX, bool SCATTER, bool PF>
    static inline void sk_dot_rest(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                                   ptrdiff_t k1, const T* src, ptrdiff_t ld, ptrdiff_t b,
                                   const T* hrow, T* dxrow, T* g_out) {
        const int N = SkVec<T>::N;
        const ptrdiff_t n = ld;
        for (; b + SK_TILE * N <= n; b += SK_TILE * N)
            sk_dot_seg<T, I, DX, SCATTER, PF, SK_TILE, 1>(idx, perm, vals, k0, k1, src + b, ld,
                                                          hrow + b, dxrow + b, g_out, b == 0);
        const ptrdiff_t r = (n - b) / N;
        if (SK_TILE > 4 && (r & 4)) {
            sk_dot_seg<T, I, DX, SCATTER, PF, 4, 1>(idx, perm, vals, k0, k1, src + b, ld, hrow + b,
                                                    dxrow + b, g_out, b == 0);
            b += 4 * N;
        }
        if (r & 2) {
            sk_dot_seg<T, I, DX, SCATTER, PF, 2, 2>(idx, perm, vals, k0, k1, src + b, ld, hrow + b,
                                                    dxrow + b, g_out, b == 0);
            b += 2 * N;
        }
        if (r & 1) {
            sk_dot_seg<T, I, DX, SCATTER, PF, 1, 4>(idx, perm, vals, k0, k1, src + b, ld, hrow + b,
                                                    dxrow + b, g_out, b == 0);
            b += N;
        }
        if (b < n) {
            if (b == 0)
                sk_dot_tail<T, I, DX, SCATTER, true>(idx, perm, vals, k0, k1, src, ld, hrow, dxrow,
                                                     g_out, (int)n);
            else
                sk_dot_tail<T, I, DX, SCATTER, false>(idx, perm, vals, k0, k1, src + b, ld, hrow + b,
                                                      dxrow + b, g_out, (int)(n - b));
        }
    }

    /* Held rows [r0, r1) (hold = x_ib for the backward, dy_ob for the SDDMM), gathered rows from
       src.  tv as in sk_spmm_rows_t; with tv > 0 the gradient is accumulated per segment in the
       order of idx (g_lin) and, when SCATTER, moved to W's order at the end of the block. */
    template <typename T, typename I, bool DX, bool SCATTER, bool PF>
    static void sk_dot_rows_t(const I* indptr, const I* idx, const I* perm, const T* vals,
                              ptrdiff_t r0, ptrdiff_t r1, const T* src, const T* hold,
                              ptrdiff_t n_batch, T* dx, T* grad, T* g_lin, int tv) {
        const int N = SkVec<T>::N;
        ptrdiff_t r;
        if (tv == 0) {
            for (r = r0; r < r1; ++r)
                sk_dot_rest<T, I, DX, SCATTER, PF>(idx, perm, vals, indptr[r], indptr[r + 1], src,
                                                   n_batch, 0, hold + r * n_batch,
                                                   DX ? dx + r * n_batch : NULL, grad);
            return;
        }
        T* g = SCATTER ? g_lin : grad;
        ptrdiff_t b = 0;
        #define SK_DOT_TILED(U, P) \\
            for (; b + U * N <= n_batch; b += U * N) \\
                for (r = r0; r < r1; ++r) \\
                    sk_dot_seg<T, I, DX, false, PF, U, P>(idx, perm, vals, indptr[r], indptr[r + 1], \\
                        src + b, n_batch, hold + r * n_batch + b, DX ? dx + r * n_batch + b : NULL, \\
                        g, b == 0);
        if (tv == 4) { SK_DOT_TILED(4, 1) }
        else if (tv == 2) { SK_DOT_TILED(2, 2) }
        else { SK_DOT_TILED(1, 4) }
        #undef SK_DOT_TILED
        if (b < n_batch)
            for (r = r0; r < r1; ++r)
                sk_dot_rest<T, I, DX, false, PF>(idx, perm, vals, indptr[r], indptr[r + 1], src,
                                                 n_batch, b, hold + r * n_batch,
                                                 DX ? dx + r * n_batch : NULL, g);
        if (SCATTER)
            for (ptrdiff_t k = indptr[r0]; k < indptr[r1]; ++k) grad[perm[k]] = g_lin[k];
    }

    template <typename T, typename I>
    static void sk_dot_rows(const I* indptr, const I* idx, const I* perm, const T* vals,
                            ptrdiff_t r0, ptrdiff_t r1, const T* src, const T* hold,
                            ptrdiff_t n_batch, T* dx, T* grad, T* g_lin, int tv, int pf) {
        /* perm == NULL: SDDMM on W's own rows (gradient in idx order, no dx). */
        if (perm == NULL) {
            if (pf) sk_dot_rows_t<T, I, false, false, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
            else sk_dot_rows_t<T, I, false, false, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
        } else if (dx != NULL) {
            if (pf) sk_dot_rows_t<T, I, true, true, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
            else sk_dot_rows_t<T, I, true, true, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
        } else {
            if (pf) sk_dot_rows_t<T, I, false, true, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
            else sk_dot_rows_t<T, I, false, true, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin, tv);
        }
    }
    """
    int sk_vbytes()
    void sk_spmm_rows[T, I](const I* indptr, const I* idx, const T* vals, const I* perm,
                            Py_ssize_t r0, Py_ssize_t r1, const T* src, Py_ssize_t n_batch,
                            T* out, int tv, int pf)
    void sk_dot_rows[T, I](const I* indptr, const I* idx, const I* perm, const T* vals,
                           Py_ssize_t r0, Py_ssize_t r1, const T* src, const T* hold,
                           Py_ssize_t n_batch, T* dx, T* grad, T* g_lin, int tv, int pf)


#: Tuning (see :func:`_plan`).  A gathered operand (n_src rows of the whole batch) larger than
#: TILE_BYTES no longer stays in L2, so the batch is walked in tiles of TILE_VECS vectors (4 x
#: 64 bytes with AVX-512): measured on 10 000^2 at 1 %, tiles of 1 or 2 vectors lose more to the
#: per-non-zero overhead than they gain in locality.  Gathered data live across the walk larger
#: than PREFETCH_BYTES is prefetched a few non-zeros ahead.
#: A gathered operand that does not start on a 64-byte line (but whose rows are whole lines) is
#: copied to an aligned buffer once it is read this many times per row on average: every
#: gathered vector would otherwise straddle two cache lines (1.5-1.7x slower at batch 128).
cdef Py_ssize_t REALIGN_REUSE = 4
cdef Py_ssize_t TILE_BYTES = 2 << 20
cdef int TILE_VECS = 4
cdef Py_ssize_t PREFETCH_BYTES = 1 << 20
#: Non-zeros per block of rows in the batch-tiled mode (their indices are re-read per tile).
cdef Py_ssize_t BLOCK_NNZ = 4096
#: The fused backward pays a horizontal sum and a gradient update per non-zero and tile, so it
#: walks whole rows unless this is set.
cdef bint TILE_FUSED = False
#: matmul_t gathers its values through t_perm once per tile; tiling it measured no gain.
cdef bint TILE_T = False


cdef struct Plan:
    int tv          # batch-tile width in vectors (0: whole rows)
    int pf          # prefetch gathered rows
    Py_ssize_t rb   # rows per parallel block


cdef Plan _plan(Py_ssize_t n_src, Py_ssize_t n_rows, Py_ssize_t nnz, Py_ssize_t n_batch,
                Py_ssize_t itemsize, bint may_tile) noexcept:
    """How to walk a product whose gathered operand has n_src rows of n_batch values."""
    cdef Plan p
    cdef Py_ssize_t vb = sk_vbytes(), row_bytes = n_batch * itemsize, live
    p.tv = 0
    if may_tile and n_src * row_bytes > TILE_BYTES and row_bytes >= 2 * TILE_VECS * vb:
        p.tv = TILE_VECS
    live = n_src * (p.tv * vb if p.tv else row_bytes)
    p.pf = live > PREFETCH_BYTES
    p.rb = 1
    if p.tv and n_rows:
        p.rb = max(1, min(1024, BLOCK_NNZ * n_rows // max(1, nnz)))
    return p


def _tuning(tile_bytes=None, prefetch_bytes=None, tile_vecs=None, block_nnz=None,
            tile_fused=None, tile_t=None, realign_reuse=None):
    """Read (and optionally set) the tiling thresholds; for benchmarks and tests only.

    Returns the previous ``(tile_bytes, prefetch_bytes, tile_vecs, block_nnz, tile_fused,
    tile_t, realign_reuse)``, which can be passed back to restore them.
    """
    global TILE_BYTES, PREFETCH_BYTES, TILE_VECS, BLOCK_NNZ, TILE_FUSED, TILE_T, REALIGN_REUSE
    old = (TILE_BYTES, PREFETCH_BYTES, TILE_VECS, BLOCK_NNZ, TILE_FUSED, TILE_T, REALIGN_REUSE)
    if realign_reuse is not None:
        REALIGN_REUSE = realign_reuse
    if tile_fused is not None:
        TILE_FUSED = tile_fused
    if tile_t is not None:
        TILE_T = tile_t
    if tile_bytes is not None:
        TILE_BYTES = tile_bytes
    if prefetch_bytes is not None:
        PREFETCH_BYTES = prefetch_bytes
    if tile_vecs is not None:
        if tile_vecs not in (1, 2, 4):
            raise ValueError("tile_vecs must be 1, 2 or 4")
        TILE_VECS = tile_vecs
    if block_nnz is not None:
        BLOCK_NNZ = max(1, block_nnz)
    return old


cdef void _spmm(const index_t* indptr, const index_t* indices, const floating* vals,
                const index_t* perm, const floating* src, floating* out,
                Py_ssize_t n_rows, Py_ssize_t n_batch, Plan p, int num_threads) noexcept nogil:
    cdef Py_ssize_t blk, r0, r1, n_blocks = (n_rows + p.rb - 1) // p.rb
    for blk in prange(n_blocks, schedule="guided", num_threads=num_threads):
        r0 = blk * p.rb
        r1 = min(r0 + p.rb, n_rows)
        sk_spmm_rows(indptr, indices, vals, perm, r0, r1, src, n_batch, out, p.tv, p.pf)


cdef void _dots(const index_t* indptr, const index_t* idx, const index_t* perm,
                const floating* vals, const floating* src, const floating* hold, floating* dx,
                floating* grad, floating* g_lin, Py_ssize_t n_rows, Py_ssize_t n_batch, Plan p,
                int num_threads) noexcept nogil:
    cdef Py_ssize_t blk, r0, r1, n_blocks = (n_rows + p.rb - 1) // p.rb
    for blk in prange(n_blocks, schedule="guided", num_threads=num_threads):
        r0 = blk * p.rb
        r1 = min(r0 + p.rb, n_rows)
        sk_dot_rows(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, dx, grad, g_lin,
                    p.tv, p.pf)




cdef bint _misaligned(const void* p, Py_ssize_t n_src, Py_ssize_t row_bytes,
                      Py_ssize_t nnz) noexcept:
    return (<size_t>p) % 64 != 0 and row_bytes % 64 == 0 and n_src > 0 and \
        nnz >= REALIGN_REUSE * n_src


def _realigned(arr, Py_ssize_t nnz):
    """``arr`` itself, or an aligned copy when a misaligned gathered operand is worth copying."""
    a = np.asarray(arr)
    if (a.ndim != 2 or a.shape[0] == 0 or a.ctypes.data % 64 == 0
            or (a.shape[1] * a.itemsize) % 64 or nnz < REALIGN_REUSE * a.shape[0]):
        return arr
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def matmul(const index_t[::1] indptr, const index_t[::1] indices, const floating[::1] data,
           const floating[:, ::1] x_ib, Py_ssize_t n_cols, int num_threads=0):
    """Forward product ``y_ob = W @ x_ib`` for W in CSR of shape (len(indptr) - 1, len(x_ib)).

    Parameters
    ----------
    indptr, indices, data : ndarray
        Validated CSR arrays of W (rows = output neurons).
    x_ib : ndarray of shape (n_in, n_batch)
        Feature-major activations, C-contiguous, same dtype as ``data``.
    n_cols : int
        Number of columns of W (= n_in); every index of W is below it.
    num_threads : int
        OpenMP threads; 0 means the OpenMP default.

    Returns
    -------
    y_ob : ndarray of shape (n_out, n_batch)
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, data)
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    cdef int nt = check_threads(num_threads)
    if n_batch and _misaligned(&x_ib[0, 0], n_cols, n_batch * sizeof(floating), indices.shape[0]):
        x_ib = _realigned(x_ib, indices.shape[0])
    y = aligned_empty((n_rows, n_batch), np.asarray(data).dtype)
    cdef floating[:, ::1] y_ob = y
    cdef Plan p = _plan(n_cols, n_rows, indices.shape[0], n_batch, y.itemsize, True)
    if n_rows == 0 or n_batch == 0:
        return y
    with nogil:
        _spmm(&indptr[0], &indices[0], &data[0], NULL, &x_ib[0, 0], &y_ob[0, 0],
              n_rows, n_batch, p, nt)
    return y


def matmul_t(const index_t[::1] t_indptr, const index_t[::1] t_rows, const index_t[::1] t_perm,
             const floating[::1] data, const floating[:, ::1] dy_ob, Py_ssize_t n_rows, int num_threads=0):
    """Backward product to the inputs ``dx_ib = W.T @ dy_ob`` via W's transposed index.

    ``t_indptr, t_rows, t_perm`` come from :func:`transpose_index`: for input neuron i the
    positions ``t_indptr[i]:t_indptr[i + 1]`` list the output rows that read it and, through
    ``t_perm``, the slots of their values in ``data``.
    """
    cdef Py_ssize_t n_cols = t_indptr.shape[0] - 1
    cdef Py_ssize_t n_batch = dy_ob.shape[1]
    if t_perm.shape[0] != data.shape[0]:
        raise ValueError(f"t_perm has {t_perm.shape[0]} entries but data has {data.shape[0]}")
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch)
    check_pattern(t_indptr, t_rows, t_perm)
    cdef int nt = check_threads(num_threads)
    if n_batch and _misaligned(&dy_ob[0, 0], n_rows, n_batch * sizeof(floating), t_rows.shape[0]):
        dy_ob = _realigned(dy_ob, t_rows.shape[0])
    dx = aligned_empty((n_cols, n_batch), np.asarray(data).dtype)
    cdef floating[:, ::1] dx_ib = dx
    cdef Plan p = _plan(n_rows, n_cols, t_rows.shape[0], n_batch, dx.itemsize, TILE_T)
    if n_cols == 0 or n_batch == 0:
        return dx
    if data.shape[0] == 0:
        dx[...] = 0
        return dx
    with nogil:
        _spmm(&t_indptr[0], &t_rows[0], &data[0], &t_perm[0], &dy_ob[0, 0], &dx_ib[0, 0],
              n_cols, n_batch, p, nt)
    return dx


def backward(const index_t[::1] t_indptr, const index_t[::1] t_rows, const index_t[::1] t_perm,
             const floating[::1] data, const floating[:, ::1] x_ib, const floating[:, ::1] dy_ob,
             Py_ssize_t n_rows, bint need_dx=True, int num_threads=0):
    """Fused backward pass: ``dx_ib = W.T @ dy_ob`` and the pattern gradient in one sweep.

    Returns ``(dx_ib, grad)`` where ``grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]`` in W's
    CSR order; ``dx_ib`` is None when ``need_dx`` is false (the first layer needs no input grad).
    """
    cdef Py_ssize_t n_cols = t_indptr.shape[0] - 1
    cdef Py_ssize_t n_batch = x_ib.shape[1]
    check_batch_operand("x_ib", x_ib, n_cols, n_batch)
    check_batch_operand("dy_ob", dy_ob, n_rows, n_batch)
    check_pattern(t_indptr, t_rows, t_perm)
    if t_perm.shape[0] != data.shape[0]:
        raise ValueError(f"t_perm has {t_perm.shape[0]} entries but data has {data.shape[0]}")
    cdef int nt = check_threads(num_threads)
    if n_batch and _misaligned(&dy_ob[0, 0], n_rows, n_batch * sizeof(floating), t_rows.shape[0]):
        dy_ob = _realigned(dy_ob, t_rows.shape[0])
    dtype = np.asarray(data).dtype
    grad = np.empty(data.shape[0], dtype=dtype)
    dx = aligned_empty((n_cols, n_batch), dtype) if need_dx else None
    cdef floating[::1] g = grad
    cdef floating[:, ::1] dx_ib
    cdef floating* dx_ptr = NULL
    if need_dx:
        dx_ib = dx
        if n_cols and n_batch:
            dx_ptr = &dx_ib[0, 0]
    if n_cols == 0 or n_batch == 0:
        grad[...] = 0
        if need_dx:
            dx[...] = 0
        return dx, grad
    if data.shape[0] == 0:
        if need_dx:
            dx[...] = 0
        return dx, grad
    cdef Plan p = _plan(n_rows, n_cols, t_rows.shape[0], n_batch, grad.itemsize, TILE_FUSED)
    # Batch-tiled, the gradient is summed per tile in column order and scattered once at the end.
    g_lin_a = np.empty(data.shape[0] if p.tv else 1, dtype=dtype)
    cdef floating[::1] g_lin = g_lin_a
    with nogil:
        _dots(&t_indptr[0], &t_rows[0], &t_perm[0], &data[0], &dy_ob[0, 0], &x_ib[0, 0],
              dx_ptr, &g[0], &g_lin[0], n_cols, n_batch, p, nt)
    return dx, grad


def _pattern_grad(const index_t[::1] indptr, const index_t[::1] indices,
                  const floating[:, ::1] x_ib, const floating[:, ::1] dy_ob, floating[::1] out,
                  int num_threads):
    """SDDMM kernel behind :func:`sparsekit._cython.sddmm.weight_grad`, which validates the
    operands: ``out[k] = dot(dy_ob[row_k, :], x_ib[indices[k], :])`` in W's CSR order."""
    cdef Py_ssize_t n_rows = indptr.shape[0] - 1, n_batch = x_ib.shape[1]
    if indices.shape[0] == 0 or n_batch == 0 or n_rows <= 0:
        return
    if _misaligned(&x_ib[0, 0], x_ib.shape[0], n_batch * sizeof(floating), indices.shape[0]):
        x_ib = _realigned(x_ib, indices.shape[0])
    cdef Plan p = _plan(x_ib.shape[0], n_rows, indices.shape[0], n_batch, out.itemsize, True)
    with nogil:
        _dots(&indptr[0], &indices[0], NULL, <floating*>NULL, &x_ib[0, 0], &dy_ob[0, 0],
              NULL, &out[0], NULL, n_rows, n_batch, p, num_threads)


def transpose_index(const index_t[::1] indptr, const index_t[::1] indices, Py_ssize_t n_cols):
    """Column index of a CSR pattern, by counting sort in O(nnz + n_cols).

    Returns ``(t_indptr, t_rows, t_perm)``: for column i, ``t_rows[t_indptr[i]:t_indptr[i+1]]``
    are the rows holding it, in increasing order, and ``t_perm`` the CSR positions of those
    entries.
    """
    cdef Py_ssize_t n_rows = check_pattern(indptr, indices, None)
    cdef Py_ssize_t nnz = indices.shape[0]
    if n_cols < 0:
        raise ValueError(f"n_cols must be >= 0, got {n_cols}")
    # The counting sort writes where indices and indptr point, so bad contents would write out
    # of bounds: this O(nnz) pass is paid once per pattern change, not per product.
    if nnz and (np.asarray(indices).min() < 0 or np.asarray(indices).max() >= n_cols):
        raise ValueError(f"indices must lie in [0, n_cols={n_cols})")
    if n_rows and np.any(np.diff(np.asarray(indptr)) < 0):
        raise ValueError("indptr must be non-decreasing")
    dtype = np.asarray(indices).dtype
    t_indptr_a = np.zeros(n_cols + 1, dtype=dtype)
    t_rows_a = np.empty(nnz, dtype=dtype)
    t_perm_a = np.empty(nnz, dtype=dtype)
    cdef index_t[::1] t_indptr = t_indptr_a
    cdef index_t[::1] t_rows = t_rows_a
    cdef index_t[::1] t_perm = t_perm_a
    cdef Py_ssize_t r, k, c, pos
    if n_cols and nnz:
        with nogil:
            for k in range(nnz):
                t_indptr[indices[k] + 1] += 1
            for c in range(n_cols):
                t_indptr[c + 1] += t_indptr[c]
            # t_indptr[c] doubles as the fill cursor of column c, then is shifted back.
            for r in range(n_rows):
                for k in range(indptr[r], indptr[r + 1]):
                    c = indices[k]
                    pos = t_indptr[c]
                    t_rows[pos] = <index_t>r
                    t_perm[pos] = <index_t>k
                    t_indptr[c] = <index_t>(pos + 1)
            for c in range(n_cols, 0, -1):
                t_indptr[c] = t_indptr[c - 1]
            t_indptr[0] = 0
    return t_indptr_a, t_rows_a, t_perm_a
