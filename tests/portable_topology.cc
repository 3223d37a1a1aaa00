// Compiled by tests/test_portable_kernels.py for instruction sets other than the build
// machine's (AVX2, plain x86-64), where the kernels below take the paths that CI's AVX-512
// build never runs: the fused backward's and the SDDMM's unmasked rests and scalar tails
// (dots.hh), the vector-type counts (counts.hh), the rank sort and the per-row sampler
// (sampling.hh), and the rebuild's row merge without vector expansions (rebuild.hh).  Each is
// checked against a plain oracle: the products within a rounding tolerance, the integer kernels
// exactly.  Prints one summary line; exits 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "dots.hh"
#include "rebuild.hh"
#include "sampling.hh"
#include "portable_common.hh"

// Whether got is ref within the rounding of a sum of terms whose magnitudes add up to scale.
template <typename T>
static bool close(T got, double ref, double scale) {
    const double tol = (sizeof(T) == 4 ? 1e-4 : 1e-12) * (scale + 1e-30);
    return std::isfinite((double)got) && std::fabs((double)got - ref) <= tol;
}

// A random W (n_out x n_in, about `fill` of it, some rows empty) and its transposed index.
struct Pattern {
    std::vector<int> indptr, idx, t_indptr, t_idx, perm;
};

static Pattern random_pattern(std::mt19937& g, int n_out, int n_in, double fill) {
    Pattern p;
    std::uniform_real_distribution<double> u(0, 1);
    p.indptr.push_back(0);
    for (int o = 0; o < n_out; ++o) {
        const bool empty = o % 5 == 3;
        for (int i = 0; i < n_in; ++i)
            if (!empty && u(g) < fill) p.idx.push_back(i);
        p.indptr.push_back((int)p.idx.size());
    }
    p.t_indptr.assign(n_in + 1, 0);
    for (int k : p.idx) ++p.t_indptr[k + 1];
    for (int i = 0; i < n_in; ++i) p.t_indptr[i + 1] += p.t_indptr[i];
    p.t_idx.resize(p.idx.size());
    p.perm.resize(p.idx.size());
    std::vector<int> at(p.t_indptr.begin(), p.t_indptr.end() - 1);
    for (int o = 0; o < n_out; ++o)
        for (int k = p.indptr[o]; k < p.indptr[o + 1]; ++k) {
            p.t_idx[at[p.idx[k]]] = o;
            p.perm[at[p.idx[k]]++] = k;
        }
    return p;
}

// The fused backward (dx and the gradient in W's order) and the SDDMM (the gradient in W's
// order from W's own rows), every batch tiling, against sums in double.
template <typename T>
static int dots_mismatches(int n_out, int n_in, double fill, int B) {
    std::mt19937 g(n_out * 131 + n_in * 7 + B);
    const Pattern p = random_pattern(g, n_out, n_in, fill);
    const ptrdiff_t N = SkVec<T>::N, ld = (B + N - 1) / N * N, nnz = (ptrdiff_t)p.idx.size();
    if (nnz == 0) return 0;  // spmm.pyx answers a layer without connections before the kernels
    const std::vector<T> vals = normal<T>(g, nnz), x = normal<T>(g, (size_t)n_in * ld),
                         dy = normal<T>(g, (size_t)n_out * ld);
    std::vector<double> grad_ref(nnz), grad_scale(nnz), dx_ref((size_t)n_in * B, 0.0),
        dx_scale((size_t)n_in * B, 0.0);
    for (int o = 0; o < n_out; ++o)
        for (int k = p.indptr[o]; k < p.indptr[o + 1]; ++k) {
            const int i = p.idx[k];
            for (int b = 0; b < B; ++b) {
                const double t = (double)dy[(size_t)o * ld + b] * x[(size_t)i * ld + b];
                grad_ref[k] += t;
                grad_scale[k] += std::fabs(t);
                const double d = (double)vals[k] * dy[(size_t)o * ld + b];
                dx_ref[(size_t)i * B + b] += d;
                dx_scale[(size_t)i * B + b] += std::fabs(d);
            }
        }
    int bad = 0;
    for (int tv : {0, 1, 2, 4})
        for (int pf : {0, 1}) {
            std::vector<T> grad(nnz + 1, (T)NAN), g_lin(nnz + 1), dx((size_t)n_in * ld, (T)NAN);
            sk_dot_rows<T, int>(p.t_indptr.data(), p.t_idx.data(), p.perm.data(), vals.data(), 0,
                                n_in, dy.data(), x.data(), B, ld, dx.data(), grad.data(),
                                g_lin.data(), tv, pf);
            for (ptrdiff_t k = 0; k < nnz; ++k) bad += !close(grad[k], grad_ref[k], grad_scale[k]);
            for (int i = 0; i < n_in; ++i)
                for (int b = 0; b < B; ++b)
                    bad += !close(dx[(size_t)i * ld + b], dx_ref[(size_t)i * B + b],
                                  dx_scale[(size_t)i * B + b]);
            std::vector<T> sd(nnz + 1, (T)NAN);
            sk_dot_rows<T, int>(p.indptr.data(), p.idx.data(), (const int*)nullptr,
                                (const T*)nullptr, 0, n_out, x.data(), dy.data(), B, ld,
                                (T*)nullptr, sd.data(), g_lin.data(), tv, pf);
            for (ptrdiff_t k = 0; k < nnz; ++k) bad += !close(sd[k], grad_ref[k], grad_scale[k]);
        }
    return bad;
}

// The counts: #{j : key[j] < q[i]} (or <=) for up to 64 values, against a loop.
template <typename I>
static int counts_mismatches(std::mt19937& g) {
    int bad = 0;
    std::uniform_int_distribution<long long> u(-50, 50);
    for (int m = 1; m <= 64; ++m)
        for (int n : {0, 1, 5, 40}) {
            alignas(64) I q[64], cnt[64];
            std::vector<I> keys(n);
            for (auto& k : keys) k = (I)u(g);
            std::vector<I> qs(m);
            for (auto& v : qs) v = (I)u(g);
            for (int le = 0; le < 2; ++le) {
                std::copy(qs.begin(), qs.end(), q);
                auto key = [&keys](ptrdiff_t j) { return keys[j]; };
                if (le) sk_count_keys<true>(n, key, q, m, cnt);
                else sk_count_keys<false>(n, key, q, m, cnt);
                for (int i = 0; i < m; ++i) {
                    I want = 0;
                    for (I k : keys) want += le ? (k <= qs[i]) : (k < qs[i]);
                    bad += cnt[i] != want;
                }
            }
        }
    return bad;
}

// The rank sort of up to 64 values (duplicates included), against std::sort.
template <typename I>
static int sort_mismatches(std::mt19937& g) {
    int bad = 0;
    for (int x = 1; x <= 64; ++x)
        for (int range : {3, 1000}) {
            std::uniform_int_distribution<long long> u(0, range);
            std::vector<I> a(x);
            for (auto& v : a) v = (I)u(g);
            std::vector<I> want = a;
            std::sort(want.begin(), want.end());
            sk_rank_sort(a.data(), x);
            bad += a != want;
        }
    return bad;
}

// One row of the sampler: the result is sorted, distinct, off the pattern, holds the earlier
// rounds' columns, lies in [0, n_cols) and has n_old + the distinct draws entries.
template <typename I>
static int grow_mismatches(std::mt19937& g) {
    int bad = 0;
    std::uniform_real_distribution<double> u(0, 1);
    for (int n_cols : {1, 20, 300, 5000})
        for (double fill : {0.0, 0.1, 0.5})
            for (int x : {0, 1, 7, 64, 65, 200}) {
                std::vector<I> pat, old;
                for (int c = 0; c < n_cols; ++c) {
                    const double r = u(g);
                    if (r < fill) pat.push_back((I)c);
                    else if (r < fill + 0.05) old.push_back((I)c);
                }
                const long long n_free = n_cols - (long long)pat.size() - (long long)old.size();
                if (x > 0 && n_free <= 0) continue;
                std::vector<I> out(x + old.size() + 1);
                const ptrdiff_t n = sk_grow_row<I>(pat.data(), (ptrdiff_t)pat.size(), old.data(),
                                                   (ptrdiff_t)old.size(), x, 12345, 7, n_cols,
                                                   out.data());
                out.resize(n);
                bool ok = std::is_sorted(out.begin(), out.end()) &&
                          std::adjacent_find(out.begin(), out.end()) == out.end() &&
                          std::includes(out.begin(), out.end(), old.begin(), old.end()) &&
                          (n == 0 || (out.front() >= 0 && out.back() < n_cols)) &&
                          n >= (ptrdiff_t)old.size() + (x > 0) && n <= (ptrdiff_t)old.size() + x;
                for (I c : out) ok = ok && !std::binary_search(pat.begin(), pat.end(), c);
                bad += !ok;
            }
    return bad;
}

// One row of the rebuild: kept old entries and new ones merged by column, with values, the
// optimizer state (0 at new slots) and the origin of each slot, against std::merge.
template <typename T, typename I>
static int merge_mismatches(std::mt19937& g) {
    int bad = 0;
    std::uniform_real_distribution<double> u(0, 1);
    for (int n_old : {0, 1, 15, 16, 17, 40, 1024, 1100})
        for (int n_new : {0, 1, 12, 64, 65})
            for (double keep_share : {0.0, 0.7, 1.0}) {
                const int n_cols = 4 * (n_old + n_new) + 8;
                std::vector<int> perm(n_cols);
                for (int c = 0; c < n_cols; ++c) perm[c] = c;
                std::shuffle(perm.begin(), perm.end(), g);
                std::vector<I> cols(perm.begin(), perm.begin() + n_old),
                    new_cols(perm.begin() + n_old, perm.begin() + n_old + n_new);
                std::sort(cols.begin(), cols.end());
                std::sort(new_cols.begin(), new_cols.end());
                std::vector<uint8_t> keep(n_old);
                for (auto& k : keep) k = u(g) < keep_share;
                const std::vector<T> data = normal<T>(g, n_old + 1),
                                     new_vals = normal<T>(g, n_new + 1),
                                     st = normal<T>(g, n_old + 1);
                // the oracle: (column, value, state, origin) of every slot, in column order
                struct Slot { long long c; T v, s; long long src; };
                std::vector<Slot> want;
                for (int a = 0; a < n_old; ++a)
                    if (keep[a]) want.push_back({(long long)cols[a], data[a], st[a], a});
                for (int b = 0; b < n_new; ++b)
                    want.push_back({(long long)new_cols[b], new_vals[b], (T)0, -1 - b});
                std::sort(want.begin(), want.end(),
                          [](const Slot& l, const Slot& r) { return l.c < r.c; });
                const ptrdiff_t p_end = (ptrdiff_t)want.size();
                for (int variant = 0; variant < 4; ++variant) {
                    const bool with_src = variant & 1, with_state = variant & 2;
                    std::vector<I> out_idx(p_end + 1);
                    std::vector<T> out_data(p_end + 1), st_out(p_end + 1);
                    std::vector<int64_t> src(p_end + 1);
                    const int clash = sk_merge_row<T, I>(
                        cols.data(), keep.data(), new_cols.data(), data.data(), new_vals.data(), 0,
                        n_old, 0, n_new, 0, p_end, out_idx.data(), out_data.data(),
                        with_src ? src.data() : nullptr, st.data(),
                        with_state ? st_out.data() : nullptr);
                    bool ok = clash == 0;
                    for (ptrdiff_t s = 0; s < p_end; ++s) {
                        ok = ok && (long long)out_idx[s] == want[s].c && out_data[s] == want[s].v;
                        if (with_state) ok = ok && st_out[s] == want[s].s;
                        if (with_src) ok = ok && src[s] == want[s].src;
                    }
                    bad += !ok;
                }
            }
    return bad;
}

int main() {
    int cases = 0, dots = 0;
    const int shapes[][2] = {{1, 1}, {7, 5}, {10, 100}, {33, 17}, {100, 300}};
    for (const auto& s : shapes)
        for (double fill : {0.05, 0.4, 1.0})
            for (int B : {1, 3, 8, 15, 16, 17, 33, 100, 128}) {
                dots += dots_mismatches<float>(s[0], s[1], fill, B) +
                        dots_mismatches<double>(s[0], s[1], fill, B);
                cases += 2;
            }
    std::mt19937 g(2026);
    const int counts = counts_mismatches<int32_t>(g) + counts_mismatches<int64_t>(g);
    const int sorts = sort_mismatches<int32_t>(g) + sort_mismatches<int64_t>(g);
    const int grows = grow_mismatches<int32_t>(g) + grow_mismatches<int64_t>(g);
    const int merges = merge_mismatches<float, int32_t>(g) + merge_mismatches<double, int64_t>(g);
    printf("masked=%d tile=%d dot_cases=%d dots_bad=%d counts_bad=%d sort_bad=%d grow_bad=%d "
           "merge_bad=%d\n", SK_MASKED, SK_TILE, cases, dots, counts, sorts, grows, merges);
    return dots || counts || sorts || grows || merges ? 1 : 0;
}
