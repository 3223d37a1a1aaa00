/* Sparse x dense kernels on a CSR pattern, the bodies of sparsekit/_cython/spmm.pyx (which
   splits the rows over OpenMP threads and picks the walk of each call): the forward and
   input-gradient products (sk_spmm_rows); the fused backward and the SDDMM are in dots.hh.

   Register-tiled: a tile is U vectors of one batch-row segment held in registers while the
   non-zeros of a row stream past: each output element is loaded and stored once, and every
   non-zero costs U gathered loads and U fused multiply-adds.  A row's batch is walked in tiles
   of SK_TILE vectors, then (AVX-512) one walk over the rest with its last vector masked.
   Every output element is summed in an order fixed by the shapes alone, never by the thread
   count. */
#ifndef SPARSEKIT_SPMM_HH
#define SPARSEKIT_SPMM_HH

#include <stddef.h>
#include <string.h>

#include "simd.hh"

#define SK_PD 4   /* non-zeros ahead whose gathered rows are prefetched */

/* ---- W @ src and W.T @ src: out[0:U*N] = sum_k val_k * src[idx[k], 0:U*N] --------------- */
/* The lanes of vector u that a tile reads and writes (see sk_tile_ld). */
template <typename T, bool MASK, bool HEAD>
static inline __attribute__((always_inline)) unsigned sk_tile_mask(int u, int U, int last,
                                                                   int head) {
    unsigned m = (1u << SkVec<T>::N) - 1;
    if (MASK && u == U - 1) m &= (1u << last) - 1;
    if (HEAD && u == 0) m &= ~((1u << head) - 1);
    return m;
}
/* Load and store vector u of a tile of U starting at p.  With MASK the last vector holds
   only its first `last` elements; with HEAD the first one only those from lane `head` on (the
   tile then starts `head` elements before its row, on a vector boundary).  Masked moves do not
   fault on the lanes left out. */
template <typename V, typename T, bool MASK, bool HEAD>
static inline __attribute__((always_inline)) V sk_tile_ld(const T* p, int u, int U, int last,
                                                           int head) {
#if SK_MASKED
    if ((MASK && u == U - 1) || (HEAD && u == 0))
        return sk_ld_m<V>(p + u * SkVec<T>::N, sk_tile_mask<T, MASK, HEAD>(u, U, last, head));
#endif
    return sk_ld<V>(p + u * SkVec<T>::N);
}
template <typename V, typename T, bool MASK, bool HEAD>
static inline __attribute__((always_inline)) void sk_tile_st(T* p, int u, int U, int last,
                                                             int head, const V& v) {
#if SK_MASKED
    if ((MASK && u == U - 1) || (HEAD && u == 0)) {
        sk_st_m(p + u * SkVec<T>::N, v, sk_tile_mask<T, MASK, HEAD>(u, U, last, head));
        return;
    }
#endif
    sk_st(p + u * SkVec<T>::N, v);
}

/* MASK: only the first `last` elements of the U-th vector are read and written (the end of
   a row); HEAD: only the elements from `head` on of the first (a row that starts off a
   vector boundary).  Both in SK_MASKED builds only.  The lanes are summed alike either way, so
   where a row starts does not change its bits. */
template <typename T, typename I, bool PERM, bool PF, int U, int P, bool MASK = false,
          bool HEAD = false>
static inline void sk_axpy_tile(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                                ptrdiff_t k1, const T* src, ptrdiff_t ld, T* out, int last = 0,
                                int head = 0) {
    typedef typename SkVec<T>::V V;
    V acc[P][U];
    sk_zero_tile(acc);
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
            for (int u = 0; u < U; ++u)
                acc[p][u] += v * sk_tile_ld<V, T, MASK, HEAD>(s, u, U, last, head);
        }
    }
    for (; k < k1; ++k) {
        const T v = PERM ? vals[perm[k]] : vals[k];
        const T* s = src + (ptrdiff_t)idx[k] * ld;
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u)
            acc[0][u] += v * sk_tile_ld<V, T, MASK, HEAD>(s, u, U, last, head);
    }
    sk_fold<V, P, U>(acc);
    #pragma GCC unroll 16
    for (int u = 0; u < U; ++u) sk_tile_st<V, T, MASK, HEAD>(out, u, U, last, head, acc[0][u]);
}

/* The last n < N elements of a row in builds without masked moves: in one vector with zeros in
   the other lanes, so that each sample is summed by the vector multiply-add of a whole vector's
   lane.  A scalar loop here was vectorised or contracted into FMAs by GCC unlike the tiles,
   so a sample got other bits in the last place in a batch's tail than in a vector (an AVX2
   build: 57 outputs over 42 shapes of 1-1000 inputs and batches of 1-47; SSE2: 43). */
template <typename T, typename I, bool PERM>
static inline void sk_axpy_tail(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                                ptrdiff_t k1, const T* src, ptrdiff_t ld, T* out, int n) {
    typedef typename SkVec<T>::V V;
    V acc = V{};
    for (ptrdiff_t k = k0; k < k1; ++k) {
        const T v = PERM ? vals[perm[k]] : vals[k];
        acc += v * sk_ld_part<V>(src + (ptrdiff_t)idx[k] * ld, n);
    }
    sk_st_part(out, acc, n);
}

/* One output row over the batch segment [0, n) (src rows and out are ld apart).  Every tile
   width, like the scalar tail, sums the non-zeros one after another into one accumulator per
   vector (P = 1), so a sample's output has the same bits whatever its position in the batch
   and the batch size (predictions must not depend on sample order or subsets).  Partial sums
   would hide FMA latency in the narrow tiles but tie the rounding to the position.
   head > 0 (SK_MASKED builds): the segment's first `head` elements are not part of it; src and
   out then point `head` elements before the row, on a vector boundary, so that no gathered
   vector straddles two cache lines. */
template <typename T, typename I, bool PERM, bool PF>
static inline void sk_axpy_seg(const I* idx, const T* vals, const I* perm, ptrdiff_t k0,
                               ptrdiff_t k1, const T* src, ptrdiff_t ld, ptrdiff_t n, T* out,
                               int head = 0) {
    const int N = SkVec<T>::N;
    ptrdiff_t b = 0;
#if SK_MASKED
    if (head) {
        /* A row of up to SK_TILE + 1 vectors once shifted is one walk (a batch of 128 floats 16
           bytes off a line: 9 vectors); a longer one starts with a whole tile. */
        const int vecs = (int)((n + N - 1) / N), last = (int)(n - (ptrdiff_t)(vecs - 1) * N);
        switch (vecs) {
#define SK_AXPY_HEAD(U) \
            case U: sk_axpy_tile<T, I, PERM, PF, U, 1, true, true>(idx, vals, perm, k0, k1, src, \
                                                                   ld, out, last, head); return;
            SK_AXPY_HEAD(1) SK_AXPY_HEAD(2) SK_AXPY_HEAD(3) SK_AXPY_HEAD(4) SK_AXPY_HEAD(5)
            SK_AXPY_HEAD(6) SK_AXPY_HEAD(7) SK_AXPY_HEAD(8) SK_AXPY_HEAD(9)
#undef SK_AXPY_HEAD
            default:
                sk_axpy_tile<T, I, PERM, PF, SK_TILE, 1, false, true>(idx, vals, perm, k0, k1, src,
                                                                      ld, out, 0, head);
                b = SK_TILE * N;
        }
    }
#endif
    for (; b + SK_TILE * N <= n; b += SK_TILE * N)
        sk_axpy_tile<T, I, PERM, PF, SK_TILE, 1>(idx, vals, perm, k0, k1, src + b, ld, out + b);
    if (b == n) return;
#if SK_MASKED
    /* The rest of the row in one walk over the non-zeros: ceil(rest / N) vectors, the last one
       masked.  A walk per power of two plus a scalar walk for the tail made a whole step 1.5x
       slower at batch 100 and 1.3-1.45x at 200.  Every lane does the multiply-adds of the
       scalar tail in the same order, so the bits are the same. */
    const int rest = (int)(n - b), vecs = (rest + N - 1) / N, last = rest - (vecs - 1) * N;
    src += b;
    out += b;
    switch (vecs) {
#define SK_AXPY_REST(U) \
        case U: sk_axpy_tile<T, I, PERM, PF, U, 1, true>(idx, vals, perm, k0, k1, src, ld, out, \
                                                         last); return;
        SK_AXPY_REST(1) SK_AXPY_REST(2) SK_AXPY_REST(3) SK_AXPY_REST(4)
        SK_AXPY_REST(5) SK_AXPY_REST(6) SK_AXPY_REST(7) SK_AXPY_REST(8)
#undef SK_AXPY_REST
        default: return;  /* vecs <= SK_TILE, which is 8 with AVX-512 */
    }
#else
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
#endif
}

/* Rows [r0, r1) over the batch [0, n_batch), src rows and out rows ld apart (ld >= n_batch: a
   stride rounded up to whole vectors keeps every row on a cache-line boundary).  tv = 0: row by
   row over the whole batch.  tv = 1, 2 or 4: batch tiles of tv
   vectors in the outer loop, so only a tv-vector slice of every gathered row is live (it stays in
   L2 when the whole rows would not); the rest of the batch row by row.
   head (0 <= head < lanes, nonzero in SK_MASKED builds only): src and out start `head` elements
   past a vector boundary, as do all their rows (ld a whole number of vectors); the walk then
   runs on vector boundaries from `head` elements before each row (see sk_axpy_seg). */
template <typename T, typename I, bool PERM, bool PF>
static void sk_spmm_rows_t(const I* indptr, const I* idx, const T* vals, const I* perm,
                           ptrdiff_t r0, ptrdiff_t r1, const T* src, ptrdiff_t n_batch,
                           ptrdiff_t ld, T* out, int tv, int head) {
    const int N = SkVec<T>::N;
    ptrdiff_t b = 0, r;
#if SK_MASKED
    src -= head;
    out -= head;
    n_batch += head;
#else
    head = 0;
#endif
#define SK_SPMM_TILES(TV) \
    for (; b + TV * N <= n_batch; b += TV * N) \
        for (r = r0; r < r1; ++r) { \
            if (b == 0 && head) \
                sk_axpy_tile<T, I, PERM, PF, TV, 1, false, true>( \
                    idx, vals, perm, indptr[r], indptr[r + 1], src, ld, out + r * ld, 0, head); \
            else \
                sk_axpy_tile<T, I, PERM, PF, TV, 1>(idx, vals, perm, indptr[r], indptr[r + 1], \
                                                    src + b, ld, out + r * ld + b); \
        }
    if (tv == 4) {
        SK_SPMM_TILES(4)
    } else if (tv == 2) {
        SK_SPMM_TILES(2)
    } else if (tv == 1) {
        SK_SPMM_TILES(1)
    }
#undef SK_SPMM_TILES
    if (b < n_batch)
        for (r = r0; r < r1; ++r)
            sk_axpy_seg<T, I, PERM, PF>(idx, vals, perm, indptr[r], indptr[r + 1], src + b, ld,
                                        n_batch - b, out + r * ld + b, b == 0 ? head : 0);
}

template <typename T, typename I>
static void sk_spmm_rows(const I* indptr, const I* idx, const T* vals, const I* perm,
                         ptrdiff_t r0, ptrdiff_t r1, const T* src, ptrdiff_t n_batch,
                         ptrdiff_t ld, T* out, int tv, int pf, int head = 0) {
    if (perm == NULL) {
        if (pf) sk_spmm_rows_t<T, I, false, true>(indptr, idx, vals, perm, r0, r1, src, n_batch, ld,
                                                  out, tv, head);
        else sk_spmm_rows_t<T, I, false, false>(indptr, idx, vals, perm, r0, r1, src, n_batch, ld,
                                                  out, tv, head);
    } else {
        if (pf) sk_spmm_rows_t<T, I, true, true>(indptr, idx, vals, perm, r0, r1, src, n_batch, ld,
                                                  out, tv, head);
        else sk_spmm_rows_t<T, I, true, false>(indptr, idx, vals, perm, r0, r1, src, n_batch, ld,
                                                  out, tv, head);
    }
}

/* ---- Full rows: out[r, b] = bias[r] + sum_i w[r, i] * src[i, b] ----------------------------
   For a layer whose every row holds all n_in columns (nnz == n_out * n_in: a 10-class output
   layer of a network with epsilon = 20 is one), R rows are computed at once from W's values
   alone, rows n_in apart, no index read.  Each vector of src is then loaded once for R rows
   instead of once per row: the 1000 -> 10 output layer of the paper's network re-read its 512
   KiB input ten times from L2 (37 us a step on one thread of an Intel Xeon guest, no faster
   on two).  Every element is summed as sk_axpy_tile sums it (one accumulator per vector, the
   inputs in increasing order, which is the CSR order of a full row), then the bias is added,
   as the forward's epilogue adds it: the same bits as the general path. */
template <typename T, int R, int U, bool MASK>
static inline void sk_full_tile(const T* w, ptrdiff_t n_in, const T* src, ptrdiff_t ld,
                                const T* bias, T* out, int last) {
    typedef typename SkVec<T>::V V;
    V acc[R][U];
    sk_zero_tile(acc);
    for (ptrdiff_t i = 0; i < n_in; ++i) {
        V x[U];
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u) x[u] = sk_tile_ld<V, T, MASK, false>(src + i * ld, u, U, last, 0);
        #pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const T v = w[r * n_in + i];
            #pragma GCC unroll 16
            for (int u = 0; u < U; ++u) acc[r][u] += v * x[u];
        }
    }
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        #pragma GCC unroll 16
        for (int u = 0; u < U; ++u)
            sk_tile_st<V, T, MASK, false>(out + r * ld, u, U, last, 0, acc[r][u] + bias[r]);
}

/* Rows of one block (R of them, R <= SK_FULL_ROWS) over the batch [b0, b1), in tiles of two
   vectors: 2 R accumulators and 2 inputs stay in registers.  In builds without masked vector
   moves, the last n < N elements of a row take the general walk's own scalar tail
   (sk_axpy_tail, on the row's indices, 0 .. n_in - 1): GCC vectorises and contracts a scalar
   loop differently from one instance to another, and a copy of it gave other bits in the last
   place (an AVX2 build, 168 of 576 shapes). */
template <typename T, typename I, int R>
static void sk_full_block(const T* w, const I* idx, ptrdiff_t n_in, const T* src, ptrdiff_t ld,
                          const T* bias, T* out, ptrdiff_t b0, ptrdiff_t b1) {
    const int N = SkVec<T>::N;
    ptrdiff_t b = b0;
    for (; b + 2 * N <= b1; b += 2 * N)
        sk_full_tile<T, R, 2, false>(w, n_in, src + b, ld, bias, out + b, 0);
    if (b == b1) return;
#if SK_MASKED
    (void)idx;
    const int rest = (int)(b1 - b), vecs = (rest + N - 1) / N, last = rest - (vecs - 1) * N;
    if (vecs == 2)
        sk_full_tile<T, R, 2, true>(w, n_in, src + b, ld, bias, out + b, last);
    else
        sk_full_tile<T, R, 1, true>(w, n_in, src + b, ld, bias, out + b, last);
#else
    if (b + N <= b1) {
        sk_full_tile<T, R, 1, false>(w, n_in, src + b, ld, bias, out + b, 0);
        b += N;
    }
    if (b < b1)
        for (int r = 0; r < R; ++r) {
            T* row = out + r * ld + b;
            sk_axpy_tail<T, I, false>(idx + r * n_in, w + r * n_in, (const I*)NULL, 0, n_in,
                                      src + b, ld, row, (int)(b1 - b));
            for (ptrdiff_t j = 0; j < b1 - b; ++j) row[j] = row[j] + bias[r];
        }
#endif
}

#define SK_FULL_ROWS 12

/* Full rows [r0, r1) (r1 - r0 <= SK_FULL_ROWS) of W's values `data` over the batch [b0, b1);
   `indices`: W's column indices (each row 0 .. n_in - 1), read only by a scalar tail. */
template <typename T, typename I>
static void sk_full_rows(const T* data, const I* indices, ptrdiff_t n_in, ptrdiff_t r0,
                         ptrdiff_t r1, const T* src, ptrdiff_t ld, const T* bias, T* out,
                         ptrdiff_t b0, ptrdiff_t b1) {
    const T* w = data + r0 * n_in;
    bias += r0;
    out += r0 * ld;
    switch (r1 - r0) {
#define SK_FULL_CASE(R) \
        case R: \
            sk_full_block<T, I, R>(w, indices + r0 * n_in, n_in, src, ld, bias, out, b0, b1); \
            return;
        SK_FULL_CASE(1) SK_FULL_CASE(2) SK_FULL_CASE(3) SK_FULL_CASE(4) SK_FULL_CASE(5)
        SK_FULL_CASE(6) SK_FULL_CASE(7) SK_FULL_CASE(8) SK_FULL_CASE(9) SK_FULL_CASE(10)
        SK_FULL_CASE(11) SK_FULL_CASE(12)
#undef SK_FULL_CASE
        default: return;
    }
}

#endif  /* SPARSEKIT_SPMM_HH */
