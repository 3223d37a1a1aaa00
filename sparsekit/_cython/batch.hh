/* A training batch from the batch-major data set: rows idx of x (n x F) copied whole into
   rows (B x F), then transposed into the feature-major batch (F x B) the passes read.

   Two steps, not one gather-transpose: the data set's rows are scattered over memory and
   latency-bound, and copying each one whole, front to back, lets the prefetcher stream it; a
   pass that read 16 rows a tile at a time measured slower than NumPy's take + a tiled
   transpose.  Both are plain copies, so the batch has the same bits however it is cut up. */
#ifndef SPARSEKIT_BATCH_HH
#define SPARSEKIT_BATCH_HH

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* out[c, j] = src[j, c] for features c in [c0, c1) and every sample j < b (src: b x f,
   out: f x b with rows ld apart), in tiles of 16 samples x (c1 - c0) features: with c1 - c0 <= 64 both tiles stay
   in L1, where a strided copy of the whole transpose walks one array a value per cache line. */
template <typename T>
static inline void sk_transpose_cols(const T* src, ptrdiff_t b, ptrdiff_t f, ptrdiff_t c0,
                                     ptrdiff_t c1, T* out, ptrdiff_t ld) {
    for (ptrdiff_t j0 = 0; j0 < b; j0 += 16) {
        const ptrdiff_t j1 = j0 + 16 < b ? j0 + 16 : b;
        for (ptrdiff_t c = c0; c < c1; ++c)
            for (ptrdiff_t j = j0; j < j1; ++j) out[c * ld + j] = src[j * f + c];
    }
}

/* rows[j, :] = x[idx[j], :] for samples j in [j0, j1) (idx checked by the caller). */
template <typename T>
static inline void sk_copy_rows(const T* x, ptrdiff_t f, const int64_t* idx, ptrdiff_t j0,
                                ptrdiff_t j1, T* rows) {
    for (ptrdiff_t j = j0; j < j1; ++j)
        memcpy(rows + j * f, x + idx[j] * f, (size_t)f * sizeof(T));
}

#endif  /* SPARSEKIT_BATCH_HH */
