// Weight gradients restricted to a set of positions (SDDMM), feature-major operands.
// GPU twin of sparsekit/_cython/sddmm.pyx: grad[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b].
//
// sk_weight_grad: on W's own CSR pattern, one warp per row o.  The warp keeps its dy[o, :] tile
//   in registers (SK_V values per lane) and, for each non-zero, gathers x[col, :] with coalesced
//   loads, reduces the dot product across lanes and lets lane j keep the result of entry k0 + j,
//   so each group of 32 gradients is stored by one coalesced write.
// sk_sampled_grad: on an arbitrary (rows, cols) list (candidates in any order, repeats allowed),
//   one warp per group of 32 consecutive candidates, the same reduction and store.

template <typename T, typename I>
__global__ void sk_weight_grad(const I* __restrict__ indptr, const I* __restrict__ indices,
                               const T* __restrict__ x_ib, const T* __restrict__ dy_ob,
                               T* __restrict__ grad, long long n_rows, long long n_batch) {
    const int lane = threadIdx.x & 31;
    for (long long r = sk_warp_id(); r < n_rows; r += sk_warp_count()) {
        const long long start = (long long)indptr[r];
        const long long end = (long long)indptr[r + 1];
        const T* dr = dy_ob + r * n_batch;
        // Pass 0 writes grad, later passes (batches wider than SK_TILE) add to it; each slot
        // belongs to one lane of this warp.
        for (long long b0 = 0; b0 < n_batch && start < end; b0 += SK_TILE) {
            T dv[SK_V];
#pragma unroll
            for (int q = 0; q < SK_V; ++q) {
                const long long b = b0 + lane + 32 * q;
                dv[q] = b < n_batch ? dr[b] : T(0);
            }
            for (long long k0 = start; k0 < end; k0 += 32) {
                const long long k = k0 + lane;
                const I c = k < end ? indices[k] : I(0);
                const int n = (int)sk_min(32, end - k0);
                T mine = T(0);
                for (int j = 0; j < n; ++j) {
                    const I cj = __shfl_sync(SK_FULL_MASK, c, j);
                    const T* xr = x_ib + (long long)cj * n_batch;
                    T s = T(0);
#pragma unroll
                    for (int q = 0; q < SK_V; ++q) {
                        const long long b = b0 + lane + 32 * q;
                        if (b < n_batch) s += dv[q] * xr[b];
                    }
                    s = sk_warp_sum(s);
                    if (lane == j) mine = s;
                }
                if (k < end) grad[k] = (b0 == 0) ? mine : grad[k] + mine;
            }
        }
    }
}

template <typename T, typename I>
__global__ void sk_sampled_grad(const T* __restrict__ x_ib, const T* __restrict__ dy_ob,
                                const I* __restrict__ rows, const I* __restrict__ cols,
                                T* __restrict__ grad, long long m, long long n_batch) {
    const int lane = threadIdx.x & 31;
    const long long n_groups = (m + 31) / 32;
    for (long long g = sk_warp_id(); g < n_groups; g += sk_warp_count()) {
        const long long k0 = g * 32;
        const long long k = k0 + lane;
        I r = 0;
        I c = 0;
        if (k < m) {
            r = rows[k];
            c = cols[k];
        }
        const int n = (int)sk_min(32, m - k0);
        T mine = T(0);
        for (int j = 0; j < n; ++j) {
            const I rj = __shfl_sync(SK_FULL_MASK, r, j);
            const I cj = __shfl_sync(SK_FULL_MASK, c, j);
            const T* dr = dy_ob + (long long)rj * n_batch;
            const T* xr = x_ib + (long long)cj * n_batch;
            T s = T(0);
            for (long long b = lane; b < n_batch; b += 32) s += dr[b] * xr[b];
            s = sk_warp_sum(s);
            if (lane == j) mine = s;
        }
        if (k < m) grad[k] = mine;
    }
}
