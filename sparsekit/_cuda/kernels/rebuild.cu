// CSR rebuild after a topology change: the merge of kept and new entries, and the gather of
// values and aligned arrays through the merge's slot map.
// GPU twin of sparsekit/_cython/rebuild.pyx (which merges the values in the same pass instead).
//
// The CPU merges row by row, one thread per row.  Here every entry finds its own output slot,
// so long rows (a dense output layer has 10^5-10^6 entries per row) do not serialise:
//   kept old entry a of row r, column c:
//     slot = out_indptr[r] + (kept entries of row r before a) + (new entries of row r with col < c)
//   new entry b of row r, column c (new entries sorted by (row, col)):
//     slot = out_indptr[r] + (b - new_ptr[r]) + (kept entries of row r with col < c)
// Within a row both lists are sorted and, when the input is valid, no column occurs twice, so
// these ranks are exactly the merged order the CPU produces.  A new position equal to a kept one,
// or a repeated new position, raises *bad; slots stay inside row r's range even then.
// ckeep is the exclusive prefix sum of keep (length nnz + 1), new_ptr the row pointer of the new
// entries (length n_rows + 1).

// Row of CSR slot `slot`: the largest r in [0, n_rows) with indptr[r] <= slot (empty rows share
// their indptr value with the next row, and the largest such r is the one that holds `slot`).
template <typename I>
__device__ __forceinline__ long long sk_row_of(const I* indptr, long long n_rows, long long slot) {
    long long lo = 0;
    long long hi = n_rows - 1;
    while (lo < hi) {
        const long long mid = lo + ((hi - lo + 1) >> 1);
        if ((long long)indptr[mid] <= slot) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

template <typename I>
__global__ void sk_place_old(const I* __restrict__ indptr, const I* __restrict__ indices,
                             const bool* __restrict__ keep, const long long* __restrict__ ckeep,
                             const long long* __restrict__ new_ptr,
                             const long long* __restrict__ new_cols,
                             const I* __restrict__ out_indptr, I* __restrict__ out_indices,
                             long long* __restrict__ src, int* __restrict__ bad,
                             long long n_rows, long long nnz) {
    for (long long a = sk_thread_id(); a < nnz; a += sk_thread_count()) {
        if (!keep[a]) continue;
        const long long r = sk_row_of(indptr, n_rows, a);
        const long long c = (long long)indices[a];
        const long long b_end = new_ptr[r + 1];
        const long long b = sk_lower_bound(new_cols, new_ptr[r], b_end, c);
        if (b < b_end && new_cols[b] == c) atomicOr(bad, 1);
        const long long slot = (long long)out_indptr[r] + (ckeep[a] - ckeep[(long long)indptr[r]])
                               + (b - new_ptr[r]);
        out_indices[slot] = (I)c;
        src[slot] = a;
    }
}

template <typename I>
__global__ void sk_place_new(const I* __restrict__ indptr, const I* __restrict__ indices,
                             const bool* __restrict__ keep, const long long* __restrict__ ckeep,
                             const long long* __restrict__ new_ptr,
                             const long long* __restrict__ new_rows,
                             const long long* __restrict__ new_cols,
                             const I* __restrict__ out_indptr, I* __restrict__ out_indices,
                             long long* __restrict__ src, int* __restrict__ bad, long long m) {
    for (long long b = sk_thread_id(); b < m; b += sk_thread_count()) {
        const long long r = new_rows[b];
        const long long c = new_cols[b];
        const long long a0 = (long long)indptr[r];
        const long long a_end = (long long)indptr[r + 1];
        const long long q = sk_lower_bound(indices, a0, a_end, c);
        if (q < a_end && (long long)indices[q] == c && keep[q]) atomicOr(bad, 1);
        if (b > new_ptr[r] && new_cols[b - 1] == c) atomicOr(bad, 1);
        const long long slot = (long long)out_indptr[r] + (b - new_ptr[r]) + (ckeep[q] - ckeep[a0]);
        out_indices[slot] = (I)c;
        src[slot] = -1 - b;
    }
}

// out[p] = old[src[p]] for a kept slot, new_vals[-1 - src[p]] (or 0 without new values) else.
template <typename T>
__global__ void sk_gather(const long long* __restrict__ src, const T* __restrict__ old,
                          const T* __restrict__ new_vals, int has_new, T* __restrict__ out,
                          long long n) {
    for (long long p = sk_thread_id(); p < n; p += sk_thread_count()) {
        const long long s = src[p];
        out[p] = s >= 0 ? old[s] : (has_new ? new_vals[-1 - s] : T(0));
    }
}
