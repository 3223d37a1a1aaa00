/* The fused backward and the SDDMM on a CSR pattern (sk_dot_rows), the other half of the
   products of sparsekit/_cython/spmm.pyx beside spmm.hh's forward and input-gradient products:
   one held row, the gathered rows of its non-zeros, their dots (the pattern gradient) and, in
   the fused backward, dx.  The dots of a group of non-zeros are folded with a transposing
   shuffle tree (simd.hh), in an order fixed by the shapes alone. */
#ifndef SPARSEKIT_DOTS_HH
#define SPARSEKIT_DOTS_HH

#include <stddef.h>
#include <string.h>

#include "simd.hh"
#include "spmm.hh"

#ifndef SK_HOLD_MAX
#define SK_HOLD_MAX 8  /* widest tile whose held row stays in registers alongside dx */
#endif

/* ---- fused backward and SDDMM ------------------------------------------------------------
   For one held row h (x[i, :] of input neuron i, or dy[o, :] of output neuron o) and the
   gathered rows g_k = src[idx[k], :] over the segment [0, U*N):
     g_out[k] (+)= dot(g_k, h)                          (the pattern gradient)
     acc[:]    = sum_k vals[perm[k]] * g_k               (dx, when DX)
   SCATTER: the gradient goes to g_out[perm[k]] (W's CSR order), else to g_out[k] (the order of
   idx).  FIRST: first segment of the row, so the gradient is written, not accumulated. */
template <typename T, typename I, bool DX, bool SCATTER, bool FIRST, bool PF, int U, int P,
          bool MASK = false>
static inline void sk_dot_tile(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                               ptrdiff_t k1, const T* src, ptrdiff_t ld, const T* hrow,
                               T* dxrow, T* g_out, int last = 0) {
    typedef typename SkVec<T>::V V;
    const int N = SkVec<T>::N;
    V hv[U], acc[P][U];
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u) hv[u] = sk_tile_ld<V, T, MASK, false>(hrow, u, U, last, 0);
    sk_zero_tile(acc);
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
                    dv[u] = sk_tile_ld<V, T, MASK, false>(d, u, U, last, 0);
                    hx[u] = DX && U > SK_HOLD_MAX ? sk_tile_ld<V, T, MASK, false>(hr, u, U, last, 0)
                                                  : hv[u];
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
            for (int u = 0; u < U; ++u) dv[u] = sk_tile_ld<V, T, MASK, false>(d, u, U, last, 0);
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
                for (int u = 0; u < U; ++u) {
                    acc[p][u] += v * dv[u];
                    sk_keep_order(acc[p][u]);  /* P sums in the same order in every build */
                }
            }
        }
    }
    if (DX) {
        sk_fold<V, P, U>(acc);
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u) sk_tile_st<V, T, MASK, false>(dxrow, u, U, last, 0, acc[0][u]);
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

template <typename T, typename I, bool DX, bool SCATTER, bool PF, int U, int P,
          bool MASK = false>
static inline void sk_dot_seg(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                              ptrdiff_t k1, const T* src, ptrdiff_t ld, const T* hrow, T* dxrow,
                              T* g_out, bool first, int last = 0) {
    if (first)
        sk_dot_tile<T, I, DX, SCATTER, true, PF, U, P, MASK>(idx, perm, vals, k0, k1, src, ld,
                                                             hrow, dxrow, g_out, last);
    else
        sk_dot_tile<T, I, DX, SCATTER, false, PF, U, P, MASK>(idx, perm, vals, k0, k1, src, ld,
                                                              hrow, dxrow, g_out, last);
}

/* One held row over the batch segment [b, n) (gathered rows ld apart); b > 0 means earlier
   segments wrote. */
template <typename T, typename I, bool DX, bool SCATTER, bool PF>
static inline void sk_dot_rest(const I* idx, const I* perm, const T* vals, ptrdiff_t k0,
                               ptrdiff_t k1, const T* src, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t b,
                               const T* hrow, T* dxrow, T* g_out) {
    const int N = SkVec<T>::N;
    for (; b + SK_TILE * N <= n; b += SK_TILE * N)
        sk_dot_seg<T, I, DX, SCATTER, PF, SK_TILE, 1>(idx, perm, vals, k0, k1, src + b, ld,
                                                      hrow + b, dxrow + b, g_out, b == 0);
    if (b == n) return;
#if SK_MASKED
    /* The rest of the row in one walk, its last vector masked (see sk_axpy_seg).  The
       gradient is one dot per segment, so the segments (not only the tail) set its rounding:
       a batch of 128 or a multiple of it keeps the bits it had with a walk per power of two. */
    const int rest = (int)(n - b), vecs = (rest + N - 1) / N, last = rest - (vecs - 1) * N;
    switch (vecs) {
#define SK_DOT_REST(U, P) \
        case U: sk_dot_seg<T, I, DX, SCATTER, PF, U, P, true>(idx, perm, vals, k0, k1, src + b, \
                    ld, hrow + b, DX ? dxrow + b : dxrow, g_out, b == 0, last); return;
        SK_DOT_REST(1, 4) SK_DOT_REST(2, 2) SK_DOT_REST(3, 1) SK_DOT_REST(4, 1)
        SK_DOT_REST(5, 1) SK_DOT_REST(6, 1) SK_DOT_REST(7, 1) SK_DOT_REST(8, 1)
#undef SK_DOT_REST
        default: return;  /* vecs <= SK_TILE, which is 8 with AVX-512 */
    }
#else
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
#endif
}

/* Held rows [r0, r1) (hold = x_ib for the backward, dy_ob for the SDDMM), gathered rows from
   src, over the batch [0, n_batch), with src, hold and dx rows ld apart.  tv as in
   sk_spmm_rows_t; with tv > 0 the gradient is accumulated per segment in the order of idx
   (g_lin) and, when SCATTER, moved to W's order at the end of the block. */
template <typename T, typename I, bool DX, bool SCATTER, bool PF>
static void sk_dot_rows_t(const I* indptr, const I* idx, const I* perm, const T* vals,
                          ptrdiff_t r0, ptrdiff_t r1, const T* src, const T* hold,
                          ptrdiff_t n_batch, ptrdiff_t ld, T* dx, T* grad, T* g_lin, int tv) {
    const int N = SkVec<T>::N;
    ptrdiff_t r;
    if (tv == 0) {
        for (r = r0; r < r1; ++r)
            sk_dot_rest<T, I, DX, SCATTER, PF>(idx, perm, vals, indptr[r], indptr[r + 1], src,
                                               ld, n_batch, 0, hold + r * ld,
                                               DX ? dx + r * ld : NULL, grad);
        return;
    }
    T* g = SCATTER ? g_lin : grad;
    ptrdiff_t b = 0;
    #define SK_DOT_TILED(U, P) \
        for (; b + U * N <= n_batch; b += U * N) \
            for (r = r0; r < r1; ++r) \
                sk_dot_seg<T, I, DX, false, PF, U, P>(idx, perm, vals, indptr[r], indptr[r + 1], \
                    src + b, ld, hold + r * ld + b, DX ? dx + r * ld + b : NULL, \
                    g, b == 0);
    if (tv == 4) { SK_DOT_TILED(4, 1) }
    else if (tv == 2) { SK_DOT_TILED(2, 2) }
    else { SK_DOT_TILED(1, 4) }
    #undef SK_DOT_TILED
    if (b < n_batch)
        for (r = r0; r < r1; ++r)
            sk_dot_rest<T, I, DX, false, PF>(idx, perm, vals, indptr[r], indptr[r + 1], src,
                                             ld, n_batch, b, hold + r * ld,
                                             DX ? dx + r * ld : NULL, g);
    if (SCATTER)
        for (ptrdiff_t k = indptr[r0]; k < indptr[r1]; ++k) grad[perm[k]] = g_lin[k];
}

template <typename T, typename I>
static void sk_dot_rows(const I* indptr, const I* idx, const I* perm, const T* vals,
                        ptrdiff_t r0, ptrdiff_t r1, const T* src, const T* hold,
                        ptrdiff_t n_batch, ptrdiff_t ld, T* dx, T* grad, T* g_lin, int tv,
                        int pf, bool scatter = true) {
    /* perm == NULL: SDDMM on W's own rows (gradient in idx order, no dx); !scatter: the
       gradient in idx order too (grad[k], not grad[perm[k]]), with dx. */
    if (perm == NULL || (!scatter && dx == NULL)) {
        if (pf) sk_dot_rows_t<T, I, false, false, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
        else sk_dot_rows_t<T, I, false, false, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
    } else if (!scatter) {
        if (pf) sk_dot_rows_t<T, I, true, false, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
        else sk_dot_rows_t<T, I, true, false, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
    } else if (dx != NULL) {
        if (pf) sk_dot_rows_t<T, I, true, true, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
        else sk_dot_rows_t<T, I, true, true, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
    } else {
        if (pf) sk_dot_rows_t<T, I, false, true, true>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
        else sk_dot_rows_t<T, I, false, true, false>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, ld, dx, grad, g_lin, tv);
    }
}

#endif  /* SPARSEKIT_DOTS_HH */
