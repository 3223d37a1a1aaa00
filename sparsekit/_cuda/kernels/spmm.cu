// Sparse x dense products on a CSR matrix W (rows = output neurons), feature-major operands.
// GPU twin of sparsekit/_cython/spmm.pyx: the same three products, the same argument order.
//
// sk_spmm: out[r, :] = sum_k vals[slot(k)] * src[idx[k], :] for k in row r of a CSR pattern.
//   Forward (W @ x) walks W's own pattern (slot(k) = k); the backward to the inputs (W.T @ dy)
//   walks W's transposed index, whose slot(k) = perm[k] points into W's values.
//   One warp owns one (row, batch tile) item: lanes cover SK_TILE consecutive batch columns with
//   SK_V accumulators each; the row's (index, value) pairs are loaded 32 at a time, one per lane,
//   and broadcast with shuffles.  Each output element is written once, by its owning warp: no
//   atomics, and the summation order is fixed.
//
// sk_backward: fused backward pass of one layer, walking the transposed index (one warp per input
//   neuron i): for every output row o that reads i it loads dy[o, :] once and uses it twice,
//   for dx[i, :] += W[o, i] * dy[o, :] and for grad[slot] = dot(dy[o, :], x[i, :]).

template <typename T, typename I>
__global__ void sk_spmm(const I* __restrict__ indptr, const I* __restrict__ indices,
                        const T* __restrict__ vals, const I* __restrict__ perm, int use_perm,
                        const T* __restrict__ src, T* __restrict__ out,
                        long long n_rows, long long n_batch) {
    const int lane = threadIdx.x & 31;
    const long long n_tiles = (n_batch + SK_TILE - 1) / SK_TILE;
    const long long n_items = n_rows * n_tiles;
    for (long long item = sk_warp_id(); item < n_items; item += sk_warp_count()) {
        const long long r = item / n_tiles;
        const long long b0 = (item - r * n_tiles) * SK_TILE;
        const long long start = (long long)indptr[r];
        const long long end = (long long)indptr[r + 1];
        T acc[SK_V];
#pragma unroll
        for (int q = 0; q < SK_V; ++q) acc[q] = T(0);
        for (long long k0 = start; k0 < end; k0 += 32) {
            const long long k = k0 + lane;
            I c = 0;
            T v = T(0);
            if (k < end) {
                c = indices[k];
                v = vals[use_perm ? (long long)perm[k] : k];
            }
            const int n = (int)sk_min(32, end - k0);  // the same for every lane of the warp
            for (int j = 0; j < n; ++j) {
                const I cj = __shfl_sync(SK_FULL_MASK, c, j);
                const T vj = __shfl_sync(SK_FULL_MASK, v, j);
                const T* s = src + (long long)cj * n_batch + b0;
#pragma unroll
                for (int q = 0; q < SK_V; ++q) {
                    const long long b = lane + 32 * q;
                    if (b0 + b < n_batch) acc[q] += vj * s[b];
                }
            }
        }
        T* o = out + r * n_batch + b0;
#pragma unroll
        for (int q = 0; q < SK_V; ++q) {
            const long long b = lane + 32 * q;
            if (b0 + b < n_batch) o[b] = acc[q];
        }
    }
}

template <typename T, typename I>
__global__ void sk_backward(const I* __restrict__ t_indptr, const I* __restrict__ t_rows,
                            const I* __restrict__ t_perm, const T* __restrict__ vals,
                            const T* __restrict__ x_ib, const T* __restrict__ dy_ob,
                            T* __restrict__ dx_ib, int need_dx, T* __restrict__ grad,
                            long long n_cols, long long n_batch) {
    const int lane = threadIdx.x & 31;
    for (long long i = sk_warp_id(); i < n_cols; i += sk_warp_count()) {
        const long long start = (long long)t_indptr[i];
        const long long end = (long long)t_indptr[i + 1];
        const T* xr = x_ib + i * n_batch;
        // Batches wider than one tile take several passes; pass 0 writes grad, later passes add
        // to it.  Each grad slot is touched only by one lane of this warp, so no race.
        for (long long b0 = 0; b0 < n_batch; b0 += SK_TILE) {
            T xv[SK_V];
            T acc[SK_V];
#pragma unroll
            for (int q = 0; q < SK_V; ++q) {
                const long long b = b0 + lane + 32 * q;
                xv[q] = b < n_batch ? xr[b] : T(0);
                acc[q] = T(0);
            }
            for (long long k0 = start; k0 < end; k0 += 32) {
                const long long k = k0 + lane;
                I r = 0;
                long long p = 0;
                T v = T(0);
                if (k < end) {
                    r = t_rows[k];
                    p = (long long)t_perm[k];
                    if (need_dx) v = vals[p];
                }
                const int n = (int)sk_min(32, end - k0);
                T mine = T(0);  // lane j keeps the gradient of entry k0 + j
                for (int j = 0; j < n; ++j) {
                    const I rj = __shfl_sync(SK_FULL_MASK, r, j);
                    const T vj = __shfl_sync(SK_FULL_MASK, v, j);
                    const T* d = dy_ob + (long long)rj * n_batch;
                    T s = T(0);
#pragma unroll
                    for (int q = 0; q < SK_V; ++q) {
                        const long long b = b0 + lane + 32 * q;
                        if (b < n_batch) {
                            const T dv = d[b];
                            s += dv * xv[q];
                            if (need_dx) acc[q] += vj * dv;
                        }
                    }
                    s = sk_warp_sum(s);
                    if (lane == j) mine = s;
                }
                if (k < end) grad[p] = (b0 == 0) ? mine : grad[p] + mine;
            }
            if (need_dx) {
                T* o = dx_ib + i * n_batch;
#pragma unroll
                for (int q = 0; q < SK_V; ++q) {
                    const long long b = b0 + lane + 32 * q;
                    if (b < n_batch) o[b] = acc[q];
                }
            }
        }
    }
}
