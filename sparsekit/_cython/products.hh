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
#include <string.h>

#include <atomic>

#include "dots.hh"
#include "spmm.hh"
#include "team.hh"

/* body(r0, r1) over rows [0, n_rows) of a pattern (indptr), in chunks of at most `block`
   non-zeros (spmm.pyx's BLOCK_NNZ: a batch-tiled walk re-reads a chunk's indices once per tile,
   so its gathered tiles should stay in cache) claimed by the threads of one team. */
template <typename I, typename Body>
static void sk_team_rows(const I* indptr, ptrdiff_t n_rows, ptrdiff_t block, int num_threads,
                         Body body) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    #pragma omp parallel num_threads(num_threads)
    {
        sk_claim_rows(&team, 0, indptr, n_rows,
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

/* dst[0:n] = src[0:n] by every thread of the team, in chunks claimed from phase `phase`; each
   thread returns once all chunks are copied (`done` counts them).  Unlike a barrier, this does
   not wait for a thread that wakes late: it finds the chunks taken and the copy done. */
template <typename T>
static inline void sk_team_copy(SkTeam* team, int phase, const T* src, T* dst, ptrdiff_t n,
                                std::atomic<ptrdiff_t>* done) {
    const ptrdiff_t chunk = 1 << 14, n_chunks = (n + chunk - 1) / chunk;
    for (ptrdiff_t c; (c = sk_claim(team, phase, n_chunks)) >= 0;) {
        const ptrdiff_t lo = c * chunk, len = n - lo < chunk ? n - lo : chunk;
        memcpy(dst + lo, src + lo, (size_t)len * sizeof(T));
        done->fetch_add(1, std::memory_order_release);
    }
    /* the others' last chunks: a spin as long as a barrier's, then yielding the core */
    for (int spins = 0; done->load(std::memory_order_acquire) < n_chunks; ++spins) {
        if (spins < SK_SPIN)
            SK_RELAX();
        else
            sk_yield();
    }
}

/* The fused backward (perm given: dx and the gradient in W's order) or the SDDMM (perm NULL),
   held rows [0, n_rows); see sk_dot_rows.  With inv (t_perm's inverse) and more than one
   thread, the fused backward writes the gradient in the transposed order (g_lin, nnz values)
   and gathers it into W's order after a barrier (grad[i] = g_lin[inv[i]], in chunks), as the
   step's backward does (mlp.hh, sk_gathers): written through t_perm, nearly every cache line of
   grad would pass between the cores, and a 1000 x 1000 backward took as long on 2 threads as
   on 1.  The same values either way.
   With `copies` (not NULL), each thread first copies the src_elems values of src to its own
   slot copies + tid * copy_stride (64-byte aligned) and gathers from there: the spmm.pyx
   callers pass it for a src that starts off a cache line, which the dots cannot walk from the
   line's start without changing their order.  One shared aligned copy, made by one core, was
   then read by the other from that core's cache: a 1000 x 1000 SDDMM on 2 threads took 0.25
   ms against 0.13 on an aligned src.  Each thread's copy stays in its own L2, and the
   master's overlaps the waking of the others.  With copy_stride 0 the team makes one shared
   copy at `copies` instead (sk_team_copy), for a src too large to copy once per thread. */
template <typename T, typename I>
static void sk_dots_team(const I* indptr, const I* idx, const I* perm, const T* vals,
                         ptrdiff_t n_rows, const T* src, const T* hold, ptrdiff_t n_batch, T* dx,
                         T* grad, T* g_lin, const I* inv, int tv, int pf, ptrdiff_t block,
                         int num_threads, T* copies, ptrdiff_t src_elems,
                         ptrdiff_t copy_stride) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    const ptrdiff_t nnz = (ptrdiff_t)indptr[n_rows];
    std::atomic<ptrdiff_t> copied(0);
    #pragma omp parallel num_threads(num_threads)
    {
        const int tid = sk_team_rank(), nt = sk_team_size();
        const bool gather = nt > 1 && perm != NULL && inv != NULL;
        const T* my_src = src;
        if (copies != NULL && copy_stride > 0) {
            T* mine = copies + (ptrdiff_t)tid * copy_stride;
            memcpy(mine, src, (size_t)src_elems * sizeof(T));
            my_src = mine;
        } else if (copies != NULL) {
            sk_team_copy(&team, 2, src, copies, src_elems, &copied);
            my_src = copies;
        }
        /* ordered claims: each W row's entries change thread about once (sk_claim_ordered) */
        sk_claim_rows<true>(&team, 0, indptr, n_rows, sk_phase_chunks(&team, nnz, block),
                            [&](ptrdiff_t r0, ptrdiff_t r1) {
            sk_dot_rows<T, I>(indptr, idx, perm, vals, r0, r1, my_src, hold, n_batch, n_batch, dx,
                              gather ? g_lin : grad, g_lin, tv, pf, !gather);
        }, tid, nt);
        if (gather) {
            sk_barrier(&team, nt);
            const ptrdiff_t chunk = 1 << 12, n_chunks = (nnz + chunk - 1) / chunk;
            for (ptrdiff_t c; (c = sk_claim_ordered(&team, 1, n_chunks, tid, nt)) >= 0;) {
                const ptrdiff_t i1 = (c + 1) * chunk < nnz ? (c + 1) * chunk : nnz;
                for (ptrdiff_t i = c * chunk; i < i1; ++i) grad[i] = g_lin[inv[i]];
            }
        }
        sk_team_leave(&team, tid, nt);
    }
}

#endif  /* SPARSEKIT_PRODUCTS_HH */
