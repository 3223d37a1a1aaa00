/* Float bits for the gather of a rebuild (rebuild.pyx): values are chosen by masks, not
   branches.  (The selection's keys are in select.hh.) */
#ifndef SPARSEKIT_BITS_HH
#define SPARSEKIT_BITS_HH

#include <stdint.h>
#include <string.h>

/* a if pick_b == 0 else b (pick_b is 0 or 1), on the bits: GCC turns a float select into a
   branch, which mispredicts when kept and new entries interleave at random. */
template <typename F, typename U> static inline F sk_pick(F a, F b, int64_t pick_b) {
    U ua, ub, m = (U)0 - (U)pick_b;
    F r;
    memcpy(&ua, &a, sizeof(F));
    memcpy(&ub, &b, sizeof(F));
    ua = (ua & ~m) | (ub & m);
    memcpy(&r, &ua, sizeof(F));
    return r;
}
static inline float sk_pick_f(float a, float b, int64_t p) { return sk_pick<float, uint32_t>(a, b, p); }
static inline double sk_pick_d(double a, double b, int64_t p) { return sk_pick<double, uint64_t>(a, b, p); }

#endif  /* SPARSEKIT_BITS_HH */
