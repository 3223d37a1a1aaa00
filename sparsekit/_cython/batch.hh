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

#if defined(__AVX512F__)
#include <immintrin.h>
/* dst[c * ldd + j] = src[j * lds + c] for a block of 16 x 16 4-byte values, in registers: 16
   loads, four rounds of 16 shuffles (32-bit, 64-bit, 128-bit, 256-bit pairs), 16 stores.  The
   values are moved, never computed on, so their bits are kept. */
static inline void sk_transpose16(const float* src, ptrdiff_t lds, float* dst, ptrdiff_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 4; ++k) {
            t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0xDD);
        }
    for (int k = 0; k < 8; ++k) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
    }
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

/* out[c, j] = src[j, c] for features c in [c0, c1) and every sample j < b (src: b x f,
   out: f x b with rows ld apart), in tiles of 16 samples x (c1 - c0) features: with
   c1 - c0 <= 64 both tiles stay in L1, where a strided copy of the whole transpose walks one
   array a value per cache line.  With AVX-512, whole 16 x 16 blocks of 4-byte values go
   through registers (sk_transpose16): a 128 x 1000 float transpose took 39 us value by value. */
template <typename T>
static inline void sk_transpose_cols(const T* src, ptrdiff_t b, ptrdiff_t f, ptrdiff_t c0,
                                     ptrdiff_t c1, T* out, ptrdiff_t ld) {
    for (ptrdiff_t j0 = 0; j0 < b; j0 += 16) {
        const ptrdiff_t j1 = j0 + 16 < b ? j0 + 16 : b;
        ptrdiff_t c = c0;
#if defined(__AVX512F__)
        if constexpr (sizeof(T) == 4) {
            if (j1 - j0 == 16)
                for (; c + 16 <= c1; c += 16)
                    sk_transpose16((const float*)(src + j0 * f + c), f,
                                   (float*)(out + c * ld + j0), ld);
        }
#endif
        for (; c < c1; ++c)
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
