// Compiled by tests/test_portable_kernels.py for instruction sets other than the build
// machine's (AVX2, plain x86-64), where the forward products run without masked vector moves.
// Checks, bit for bit: (1) a sample's output of the general walk (sk_spmm_rows) does not depend
// on its position in the batch (vector lanes, scalar tail); (2) the full-rows product
// (sk_full_rows) equals the general walk plus the bias.  Prints a summary, exits 1 on a mismatch.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "spmm.hh"
#include "portable_common.hh"

// (1): one full row over a batch of B, against the same inputs in a batch of 48.
template <typename T>
static int position_mismatches(int n_in, int B) {
    std::mt19937 g(n_in * 7 + B);
    const ptrdiff_t ld = 64;
    std::vector<T> w = normal<T>(g, n_in), x = normal<T>(g, (size_t)n_in * ld);
    std::vector<int> indptr = {0, n_in}, idx(n_in);
    for (int i = 0; i < n_in; ++i) idx[i] = i;
    std::vector<T> a(ld, 0), b(ld, 0);
    sk_spmm_rows<T, int>(indptr.data(), idx.data(), w.data(), (const int*)nullptr, 0, 1,
                         x.data(), B, ld, a.data(), 0, 0);
    sk_spmm_rows<T, int>(indptr.data(), idx.data(), w.data(), (const int*)nullptr, 0, 1,
                         x.data(), 48, ld, b.data(), 0, 0);
    int bad = 0;
    for (int j = 0; j < B; ++j) bad += memcmp(&a[j], &b[j], sizeof(T)) != 0;
    return bad;
}

// (2): n_out full rows of n_in over a batch of B, every batch tiling of the general walk.
template <typename T>
static int full_rows_mismatches(int n_out, int n_in, int B) {
    std::mt19937 g(n_out * 131 + n_in * 7 + B);
    const int N = SkVec<T>::N;
    const ptrdiff_t ld = B ? (B + N - 1) / N * N : N;
    std::vector<T> w = normal<T>(g, (size_t)n_out * n_in), x = normal<T>(g, (size_t)n_in * ld);
    std::vector<T> bias = normal<T>(g, n_out);
    std::vector<int> indptr(n_out + 1), idx((size_t)n_out * n_in);
    for (int o = 0; o <= n_out; ++o) indptr[o] = o * n_in;
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = (int)(k % (size_t)(n_in ? n_in : 1));
    std::vector<T> a((size_t)n_out * ld), b((size_t)n_out * ld);
    int bad = 0;
    for (int tv : {0, 1, 2, 4}) {
        sk_spmm_rows<T, int>(indptr.data(), idx.data(), w.data(), (const int*)nullptr, 0, n_out,
                             x.data(), B, ld, a.data(), tv, 0);
        for (int o = 0; o < n_out; ++o)
            for (int j = 0; j < B; ++j) a[(size_t)o * ld + j] = a[(size_t)o * ld + j] + bias[o];
        const ptrdiff_t tile = 2 * N, n_blocks = (n_out + SK_FULL_ROWS - 1) / SK_FULL_ROWS;
        for (ptrdiff_t b0 = 0; b0 < B; b0 += tile)
            for (ptrdiff_t k = 0; k < n_blocks; ++k)
                sk_full_rows<T, int>(w.data(), idx.data(), n_in, k * n_out / n_blocks,
                                     (k + 1) * n_out / n_blocks, x.data(), ld, bias.data(),
                                     b.data(), b0, b0 + tile < B ? b0 + tile : B);
        for (int o = 0; o < n_out; ++o)
            bad += memcmp(&a[(size_t)o * ld], &b[(size_t)o * ld], (size_t)B * sizeof(T)) != 0;
    }
    return bad;
}

int main() {
    int cases = 0, position = 0, full = 0;
    for (int n_in : {1, 7, 100, 1000})
        for (int B : {1, 3, 7, 9, 15, 17, 31, 33, 47}) {
            position += position_mismatches<float>(n_in, B) + position_mismatches<double>(n_in, B);
            cases += 2;
        }
    for (int n_out : {1, 3, 10, 12, 13, 25})
        for (int n_in : {0, 1, 7, 100})
            for (int B : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 128}) {
                full += full_rows_mismatches<float>(n_out, n_in, B) +
                        full_rows_mismatches<double>(n_out, n_in, B);
                cases += 2;
            }
    printf("masked=%d tile=%d cases=%d position_mismatches=%d full_rows_mismatches=%d\n",
           SK_MASKED, SK_TILE, cases, position, full);
    return position || full ? 1 : 0;
}
