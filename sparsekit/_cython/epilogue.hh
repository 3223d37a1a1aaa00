/* Per-row work around the products, shared by the standalone kernels (elementwise.pyx,
   mlp.pyx) and the fused passes (mlp.hh), so both give the same bits:
   - sk_act_row: bias + piecewise-linear activation + inverted dropout of one output row;
   - sk_row_sum: the sum of a row in NumPy's order (pairwise, 8 accumulators per block of
     128), so a bias gradient is exactly ``dz_ob.sum(axis=1)``;
   - sk_sgd_update, sk_adam_update: momentum SGD and Adam/AdamW in the order of
     sparsekit.training.optim.MomentumSGD and Adam (sk_apply_update: either, from a rule).
   The last three must not be reassociated or contracted into FMAs (setup.py allows both for the
   products), hence the per-function options. */
#ifndef SPARSEKIT_EPILOGUE_HH
#define SPARSEKIT_EPILOGUE_HH

#include <stddef.h>
#include <stdint.h>

#include "streams.hh"

#define SK_EXACT __attribute__((optimize("no-associative-math", "fp-contract=off")))

/* Inverted dropout of one row (see sk_act_row): a[j] (and d[j]) set to 0 where the top 24 bits
   of element j's hash are below threshold, scaled by `scale` elsewhere.  Its own function so
   that it may use 512-bit vectors where GCC tunes the rest to 256 bits (an Intel Xeon guest):
   the hash is two 64-bit multiplies per element, and a 512-bit multiply does eight of them for
   the cost of a 256-bit one's four.  Integer hashing and one product per element, so the same
   bits at any width. */
template <typename T>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("prefer-vector-width=512"), noinline))
#endif
static void sk_dropout_row(T* a, T* d, ptrdiff_t n, T scale, uint64_t threshold, uint64_t key) {
    if (!d) {
        for (ptrdiff_t j = 0; j < n; ++j)
            a[j] = (sk_mix64(key + (uint64_t)j * 0x9E3779B97F4A7C15ULL) >> 40) < threshold
                       ? (T)0 : a[j] * scale;
        return;
    }
    for (ptrdiff_t j = 0; j < n; ++j) {
        if ((sk_mix64(key + (uint64_t)j * 0x9E3779B97F4A7C15ULL) >> 40) < threshold) {
            d[j] = 0;
            a[j] = 0;
        } else {
            d[j] = d[j] * scale;
            a[j] = a[j] * scale;
        }
    }
}

/* a = g(z + b), d = g'(z + b) with g(v) = v for v > 0, slope * v otherwise; then inverted
   dropout: an element is dropped when the top 24 bits of its hash are below threshold
   (rate * 2**24), kept ones scaled by 1 / (1 - rate).  a and d may alias z (in place).  d NULL:
   no derivative is wanted (inference), a gets the same bits. */
template <typename T>
static inline void sk_act_row(const T* z, T b, T* a, T* d, ptrdiff_t n, T slope, T scale,
                              uint64_t threshold, uint64_t key) {
    if (!d) {
        for (ptrdiff_t j = 0; j < n; ++j) {
            const T v = z[j] + b;
            a[j] = (v > 0 ? (T)1 : slope) * v;
        }
        if (threshold) sk_dropout_row(a, (T*)NULL, n, scale, threshold, key);
        return;
    }
    for (ptrdiff_t j = 0; j < n; ++j) {
        const T v = z[j] + b;
        const T g = v > 0 ? (T)1 : slope;
        d[j] = g;
        a[j] = g * v;
    }
    if (threshold) sk_dropout_row(a, d, n, scale, threshold, key);
}

/* The key of row o of a (n_out x n_batch) draw with seed `seed`. */
static inline uint64_t sk_act_key(uint64_t seed, ptrdiff_t o, ptrdiff_t n_batch) {
    return seed + (uint64_t)(o * n_batch) * 0x9E3779B97F4A7C15ULL;
}

template <typename T>
SK_EXACT static T sk_row_sum(const T* a, ptrdiff_t n) {
    if (n < 8) {
        T res = 0;
        for (ptrdiff_t i = 0; i < n; ++i) res = res + a[i];
        return res;
    }
    if (n <= 128) {
        T r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        ptrdiff_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] = r[j] + a[i + j];
        T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res = res + a[i];
        return res;
    }
    ptrdiff_t n2 = n / 2;
    n2 -= n2 % 8;
    return sk_row_sum(a, n2) + sk_row_sum(a + n2, n - n2);
}

/* v <- mu v - step; p <- p + v (Nesterov: p <- p - step + mu v), step = lr (g + wd p) when
   the decay is coupled, lr g otherwise; decoupled decay shrinks p by (1 - wd) first. */
template <typename T>
SK_EXACT static void sk_sgd_update(T* p, const T* g, T* v, ptrdiff_t n, T lr, T mu, T wd,
                                   int coupled, int nesterov) {
    const bool l2 = coupled && wd != 0, shrink = !coupled && wd != 0;
    const T keep = (T)1 - wd;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const T step = l2 ? lr * (g[i] + wd * p[i]) : lr * g[i];
        const T vi = v[i] * mu - step;
        T pi = shrink ? p[i] * keep : p[i];
        if (nesterov) pi = (pi - step) + mu * vi;
        else pi = pi + vi;
        v[i] = vi;
        p[i] = pi;
    }
}

/* Adam in the order of optim.Adam._apply (each NumPy operation rounded as it rounds it):
   g <- g + wd p (coupled decay) or p <- p (1 - lr wd) first (decoupled, AdamW);
   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  p <- p - step m / (sqrt(v) / bc2 + eps).
   c: b1, 1 - b1, b2, 1 - b2, step = lr / (1 - b1^t), bc2 = sqrt(1 - b2^t), eps, wd, 1 - lr wd
   (optim.Adam._constants). */
template <typename T>
SK_EXACT static void sk_adam_update(T* p, const T* g, T* m, T* v, ptrdiff_t n, const T* c,
                                    int decoupled) {
    const T b1 = c[0], nb1 = c[1], b2 = c[2], nb2 = c[3], step = c[4], bc2 = c[5], eps = c[6],
            wd = c[7], shrink = c[8];
    const bool l2 = !decoupled && wd != 0, decay = decoupled && wd != 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const T pi = decay ? p[i] * shrink : p[i];
        const T gi = l2 ? wd * pi + g[i] : g[i];
        const T mi = m[i] * b1 + nb1 * gi;
        const T vi = v[i] * b2 + (gi * gi) * nb2;
        /* the builtin, not std::sqrt: a function compiled with other options is not inlined
           here, and the call would keep the loop scalar (10x slower) */
        T root;
        if constexpr (sizeof(T) == sizeof(float)) root = (T)__builtin_sqrtf((float)vi);
        else root = (T)__builtin_sqrt((double)vi);
        const T u = mi / (root / bc2 + eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - u * step;
    }
}

/* An optimizer update rule (optim.py's backend_rule, parsed once by _update.pxd): momentum
   SGD, or Adam/AdamW with this step's constants (Adam._constants). */
enum { SK_UPDATE_SGD = 0, SK_UPDATE_ADAM = 1 };
typedef struct {
    int kind;
    double lr, momentum, weight_decay;  /* SGD */
    int coupled, nesterov;
    double adam[9];  /* b1, 1 - b1, b2, 1 - b2, lr / (1 - b1^t), sqrt(1 - b2^t), eps, wd,
                        1 - lr wd */
    int decoupled;
} SkUpdate;

/* Rule s on n values (m: SGD's velocity or Adam's first moment, v: Adam's second), every
   constant rounded to T where it is used, as the NumPy update rounds its scalars.  The fused
   backward's update phase (mlp.hh) and elementwise.apply_update both run it chunk by chunk. */
template <typename T>
static inline void sk_apply_update(T* p, const T* g, T* m, T* v, ptrdiff_t n,
                                   const SkUpdate& s) {
    if (s.kind == SK_UPDATE_ADAM) {
        T c[9];
        for (int k = 0; k < 9; ++k) c[k] = (T)s.adam[k];
        sk_adam_update<T>(p, g, m, v, n, c, s.decoupled);
    } else {
        sk_sgd_update<T>(p, g, m, n, (T)s.lr, (T)s.momentum, (T)s.weight_decay, s.coupled,
                         s.nesterov);
    }
}

/* Softmax cross-entropy of feature-major logits z (C classes x B samples, rows ldz apart) in
   the order of NumPy's expression in sparsekit.nn.activations.softmax_cross_entropy, so the
   loss and the gradient keep their bits: sk_softmax_shift writes z - max over the classes to
   out (rows ldo apart; NumPy, or its own exp loop, then exponentiates it in place),
   sk_softmax_finish divides by the class sums (added class by class, as NumPy reduces a
   C-contiguous array over axis 0 with more than one column) and writes the probabilities
   (probs, C x B contiguous), the picked ones and the gradient (p - [class == label]) / B, in
   place of e (rows lde apart).  m and s: scratch of B values. */
template <typename T>
SK_EXACT static void sk_softmax_shift(const T* z, ptrdiff_t ldz, ptrdiff_t C, ptrdiff_t B, T* m,
                                      T* out, ptrdiff_t ldo) {
    for (ptrdiff_t j = 0; j < B; ++j) m[j] = z[j];
    for (ptrdiff_t c = 1; c < C; ++c)
        for (ptrdiff_t j = 0; j < B; ++j) {
            const T v = z[c * ldz + j];
            m[j] = (v > m[j] || v != v) ? v : m[j];  /* a NaN propagates, as in NumPy's max */
        }
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t j = 0; j < B; ++j) out[c * ldo + j] = z[c * ldz + j] - m[j];
}

template <typename T>
SK_EXACT static void sk_softmax_finish(T* e, ptrdiff_t lde, const int64_t* labels, ptrdiff_t C,
                                       ptrdiff_t B, T* s, T* probs, T* picked) {
    for (ptrdiff_t j = 0; j < B; ++j) s[j] = e[j];
    for (ptrdiff_t c = 1; c < C; ++c)
        for (ptrdiff_t j = 0; j < B; ++j) s[j] = s[j] + e[c * lde + j];
    const T n = (T)B;
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t j = 0; j < B; ++j) {
            const T p = e[c * lde + j] / s[j];
            probs[c * B + j] = p;
            e[c * lde + j] = (c == labels[j] ? p - (T)1 : p) / n;
        }
    for (ptrdiff_t j = 0; j < B; ++j) picked[j] = probs[labels[j] * B + j];
}

/* A NumPy ufunc inner loop (PyUFuncGenericFunction; npy_intp is intptr_t). */
typedef void (*SkUnaryLoop)(char** args, const intptr_t* dims, const intptr_t* steps,
                            void* data);

/* A unary loop over n contiguous values in place, as np.exp(a, out=a) runs it. */
template <typename T>
static inline void sk_unary_in_place(SkUnaryLoop loop, void* data, T* a, ptrdiff_t n) {
    char* args[2] = {(char*)a, (char*)a};
    const intptr_t dims = (intptr_t)n, steps[2] = {(intptr_t)sizeof(T), (intptr_t)sizeof(T)};
    loop(args, &dims, steps, data);
}

/* The whole softmax cross-entropy with NumPy's exp loop `exp_loop` (_loops.pxd checked that it
   gives np.exp's bits), called on each row in place as np.exp(out, out=out) would be: no
   Python, so the training step's team runs it between its passes without the GIL.  The
   gradient goes to grad, rows ldg apart. */
template <typename T>
static void sk_softmax_ce(const T* z, ptrdiff_t ldz, const int64_t* labels, ptrdiff_t C,
                          ptrdiff_t B, T* s, T* probs, T* picked, T* grad, ptrdiff_t ldg,
                          SkUnaryLoop exp_loop, void* exp_data) {
    sk_softmax_shift(z, ldz, C, B, s, grad, ldg);
    if (ldg == B)
        sk_unary_in_place(exp_loop, exp_data, grad, C * B);
    else
        for (ptrdiff_t c = 0; c < C; ++c) sk_unary_in_place(exp_loop, exp_data, grad + c * ldg, B);
    sk_softmax_finish(grad, ldg, labels, C, B, s, probs, picked);
}

/* The mean cross-entropy -log(max(picked, 1e-12)) over B samples in the order of NumPy's
   expression (sparsekit.nn.activations.cross_entropy_of): the floor as np.maximum takes it
   (a NaN stays), NumPy's own log loop in place on tmp, the pairwise sum (negating every term
   first, as NumPy does, negates the sum exactly), then the division. */
template <typename T>
SK_EXACT static T sk_cross_entropy_value(const T* picked, ptrdiff_t B, T* tmp,
                                         SkUnaryLoop log_loop, void* log_data) {
    const T floor = (T)1e-12;
    for (ptrdiff_t j = 0; j < B; ++j) {
        const T p = picked[j];
        tmp[j] = (p != p || p > floor) ? p : floor;
    }
    sk_unary_in_place(log_loop, log_data, tmp, B);
    return -sk_row_sum(tmp, B) / (T)(B > 1 ? B : 1);
}

#endif  /* SPARSEKIT_EPILOGUE_HH */
