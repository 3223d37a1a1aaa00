/* Counter-based random streams of the CPU sampler (sampling.pyx), the C side of
   sparsekit/_streams.py: a stream is a splitmix64 sequence whose state advances by the
   golden-ratio constant, so a seed gives the same draws on every backend and thread count. */
#ifndef SPARSEKIT_STREAMS_HH
#define SPARSEKIT_STREAMS_HH

#include <stdint.h>

static inline uint64_t sk_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
/* Uniform integer in [0, n) for n >= 1 (Lemire's multiply-shift with rejection, so exactly
   uniform) from the splitmix64 stream whose state is *s. */
static inline uint64_t sk_below(uint64_t *s, uint64_t n) {
    unsigned __int128 p;
    uint64_t lo, t;
    *s += 0x9E3779B97F4A7C15ULL;
    p = (unsigned __int128)sk_mix64(*s) * n;
    lo = (uint64_t)p;
    if (lo < n) {
        t = (0 - n) % n;
        while (lo < t) {
            *s += 0x9E3779B97F4A7C15ULL;
            p = (unsigned __int128)sk_mix64(*s) * n;
            lo = (uint64_t)p;
        }
    }
    return (uint64_t)(p >> 64);
}

#endif  /* SPARSEKIT_STREAMS_HH */
