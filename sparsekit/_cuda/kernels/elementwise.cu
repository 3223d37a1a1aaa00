// Fused bias + piecewise-linear activation + inverted dropout for hidden layers.
// GPU twin of sparsekit/_cython/elementwise.pyx, with the same arithmetic in the same order, so
// activations, derivatives and dropout masks are bit-identical to the CPU backend's:
//   v = z + b;  g = v > 0 ? 1 : slope;  d = g;  a = g * v
//   element (o, j) is dropped when splitmix64(seed + (o * n_batch) * G + j * G) >> 40 is below
//   threshold = floor(rate * 2^24) (G = 0x9E3779B97F4A7C15, all in wrapping 64-bit arithmetic);
//   a kept element is scaled by `scale` = 1 / (1 - rate) rounded to T, a dropped one set to +0.

#define SK_GOLDEN 0x9E3779B97F4A7C15ull

__device__ __forceinline__ unsigned long long sk_splitmix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__global__ void sk_bias_act_dropout(const T* __restrict__ z_ob, const T* __restrict__ bias,
                                    T* __restrict__ a_ob, T* __restrict__ d_ob, T slope, T scale,
                                    unsigned long long threshold, unsigned long long seed,
                                    long long n_out, long long n_batch) {
    const long long n = n_out * n_batch;
    for (long long idx = sk_thread_id(); idx < n; idx += sk_thread_count()) {
        const long long o = idx / n_batch;
        const long long j = idx - o * n_batch;
        const T v = z_ob[idx] + bias[o];
        const T g = v > T(0) ? T(1) : slope;
        T d = g;
        T a = g * v;
        if (threshold != 0ull) {
            const unsigned long long key =
                seed + (unsigned long long)(o * n_batch) * SK_GOLDEN;
            if ((sk_splitmix(key + (unsigned long long)j * SK_GOLDEN) >> 40) < threshold) {
                d = T(0);
                a = T(0);
            } else {
                d = d * scale;
                a = a * scale;
            }
        }
        a_ob[idx] = a;
        d_ob[idx] = d;
    }
}
