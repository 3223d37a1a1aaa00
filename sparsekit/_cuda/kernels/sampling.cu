// Membership of positions in a CSR pattern, for the sampling of absent positions.
// GPU twin of sparsekit/_cython/sampling.pyx (the uniform sampler itself runs on the host, in
// sparsekit/backends/host.py, drawing the same streams as the CPU kernel).

// found[j] = (rows[j], cols[j]) is stored in the pattern; rows must be in [0, n_rows).
template <typename I>
__global__ void sk_contains(const I* __restrict__ indptr, const I* __restrict__ indices,
                            const long long* __restrict__ rows,
                            const long long* __restrict__ cols, bool* __restrict__ found,
                            long long m) {
    for (long long j = sk_thread_id(); j < m; j += sk_thread_count()) {
        const long long r = rows[j];
        const long long c = cols[j];
        const long long end = (long long)indptr[r + 1];
        const long long pos = sk_lower_bound(indices, (long long)indptr[r], end, c);
        found[j] = pos < end && (long long)indices[pos] == c;
    }
}
