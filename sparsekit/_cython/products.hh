/* One sparse product in one OpenMP team (team.hh): the bodies of spmm.pyx's matmul, matmul_t,
   backward and SDDMM when they run on their own, outside the fused passes of mlp.hh.

   An OpenMP loop (guided, the old way) made two threads slower than one on a 2-core virtual
   machine for a 1000 x 1000 layer at batch 128 (forward 0.215 vs 0.152 ms): under passive
   waiting the second thread starts tens of microseconds late, and when the master finishes
   first it falls asleep in OpenMP's closing barrier and is woken that much later again.  Here
   rows are claimed in chunks of about equal work from a shared counter, so a late thread
   takes fewer chunks, and the master leaves the team last, so it never sleeps at the end.
   Each row is still computed whole by one thread with the same kernels, so the results do not
   change with the thread count or the claiming. */
#ifndef SPARSEKIT_PRODUCTS_HH
#define SPARSEKIT_PRODUCTS_HH

#include <stddef.h>

#include "dots.hh"
#include "spmm.hh"
#include "team.hh"

/* body(r0, r1) over rows [0, n_rows) of a pattern (indptr), in chunks of at most `block`
   non-zeros (spmm.pyx's BLOCK_NNZ: a batch-tiled walk re-reads a chunk's indices once per tile,
   so its gathered tiles should stay in cache) claimed by the threads of one team (ORDERED: by
   sk_claim_ordered, for a product that writes through a permutation). */
template <bool ORDERED = false, typename I, typename Body>
static void sk_team_rows(const I* indptr, ptrdiff_t n_rows, ptrdiff_t block, int num_threads,
                         Body body) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    #pragma omp parallel num_threads(num_threads)
    {
        sk_claim_rows<ORDERED>(&team, 0, indptr, n_rows,
                               sk_phase_chunks(&team, (ptrdiff_t)indptr[n_rows], block), body,
                               sk_team_rank(), sk_team_size());
        sk_team_leave(&team, sk_team_rank(), sk_team_size());
    }
}

/* out = W @ src (perm NULL) or W.T @ src (indptr/idx the transposed index, vals read through
   perm), rows [0, n_rows); src and out start `head` elements past a vector boundary (see
   sk_spmm_rows_t). */
template <typename T, typename I>
static void sk_spmm_team(const I* indptr, const I* idx, const T* vals, const I* perm,
                         ptrdiff_t n_rows, const T* src, ptrdiff_t n_batch, T* out, int tv,
                         int pf, int head, ptrdiff_t block, int num_threads) {
    sk_team_rows(indptr, n_rows, block, num_threads, [&](ptrdiff_t r0, ptrdiff_t r1) {
        sk_spmm_rows<T, I>(indptr, idx, vals, perm, r0, r1, src, n_batch, n_batch, out, tv, pf,
                           head);
    });
}

/* The fused backward (perm given: dx and the gradient in W's order) or the SDDMM (perm NULL),
   held rows [0, n_rows); see sk_dot_rows. */
template <typename T, typename I>
static void sk_dots_team(const I* indptr, const I* idx, const I* perm, const T* vals,
                         ptrdiff_t n_rows, const T* src, const T* hold, ptrdiff_t n_batch, T* dx,
                         T* grad, T* g_lin, int tv, int pf, ptrdiff_t block,
                         int num_threads) {
    sk_team_rows<true>(indptr, n_rows, block, num_threads, [&](ptrdiff_t r0, ptrdiff_t r1) {
        sk_dot_rows<T, I>(indptr, idx, perm, vals, r0, r1, src, hold, n_batch, n_batch, dx, grad,
                          g_lin, tv, pf);
    });
}

#endif  /* SPARSEKIT_PRODUCTS_HH */
