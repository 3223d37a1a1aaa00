/* One OpenMP team for a whole pass (mlp.hh): phases of independent rows claimed in chunks from
   a shared counter, separated by a barrier that spins briefly before it sleeps.

   Why not an OpenMP parallel loop per phase: sparsekit runs OpenMP with passive waiting (a
   busy machine must not lose a core to spinning threads), so every parallel region and every
   OpenMP barrier puts the other threads to sleep and wakes them again -- measured at about
   70 us per region on a 2-core KVM guest, as long as a whole 1000 x 1000 product.  Here a pass
   opens one region; threads that arrive early at a barrier spin for a few microseconds (the
   usual imbalance) and only then sleep on a futex.  Chunks are claimed dynamically, so a thread
   that wakes late simply takes fewer chunks: the pass never waits for a thread to wake up.
   Which thread computes a row never changes its value (every row is summed in a fixed order),
   so results do not depend on the thread count or on the claiming. */
#ifndef SPARSEKIT_TEAM_HH
#define SPARSEKIT_TEAM_HH

#include <atomic>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SK_RELAX() _mm_pause()
#else
#define SK_RELAX() ((void)0)
#endif

/* A thread waiting at a barrier spins this many pause instructions (about 30 ns each on the
   AMD EPYC we measured: ~20 us), then yields the core this many times, then sleeps. */
#ifndef SK_SPIN
#define SK_SPIN 700
#endif
#ifndef SK_YIELDS
#define SK_YIELDS 50
#endif
#define SK_MAX_PHASES 64
/* Segments of a phase claimed in order (sk_claim_ordered): one per thread, up to this many. */
#define SK_MAX_SEGMENTS 16
/* Work of a row besides its non-zeros (its store and epilogue), in non-zeros, when rows are
   cut into chunks of about equal work (sk_chunk_rows). */
#define SK_ROW_COST 4

struct SkTeam {
    std::atomic<int> arrived;
    std::atomic<int> gen;       /* the futex word: bumped when everyone has arrived */
    std::atomic<int> sleepers;
    std::atomic<int> left;      /* threads other than the master that are leaving the team */
    std::atomic<ptrdiff_t> next[SK_MAX_PHASES];  /* chunk counter of each phase */
    /* sk_claim_ordered's segments of each phase: chunks taken from the front (low 32 bits) and
       from the back (high 32 bits) */
    std::atomic<uint64_t> seg[SK_MAX_PHASES][SK_MAX_SEGMENTS];
    int threads_asked;  /* fixed before the team starts: chunking must not depend on the team */
};

static inline void sk_team_init(SkTeam* t, int threads_asked) {
    t->arrived.store(0);
    t->gen.store(0);
    t->sleepers.store(0);
    t->left.store(0);
    /* relaxed: the parallel region that follows publishes them (a sequentially consistent
       store is an xchg, and there are a thousand) */
    for (int i = 0; i < SK_MAX_PHASES; ++i) {
        t->next[i].store(0, std::memory_order_relaxed);
        for (int j = 0; j < SK_MAX_SEGMENTS; ++j) t->seg[i][j].store(0, std::memory_order_relaxed);
    }
    t->threads_asked = threads_asked > 0 ? threads_asked : 1;
}

/* Chunks of a phase of `work` units: 8 per thread (a late or slow thread takes fewer), more
   for big layers so that a chunk's rows keep their gathered tiles in cache (about 4096
   non-zeros each, the block of spmm.pyx's batch-tiled walk). */
static inline ptrdiff_t sk_phase_chunks(const SkTeam* t, ptrdiff_t work,
                                        ptrdiff_t block = 4096) {
    const ptrdiff_t by_threads = (ptrdiff_t)t->threads_asked * 8;
    const ptrdiff_t by_work = work / (block > 0 ? block : 1);
    return by_work > by_threads ? by_work : by_threads;
}

/* Threads in the running team (every thread gets the same answer), and this one's rank. */
static inline int sk_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
static inline int sk_team_rank(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline void sk_yield(void) {
#ifdef __linux__
    syscall(SYS_sched_yield);
#else
    sched_yield();
#endif
}

static inline void sk_futex(std::atomic<int>* word, int op, int val) {
#ifdef __linux__
    syscall(SYS_futex, reinterpret_cast<int*>(word), op, val, NULL, NULL, 0);
#else
    (void)word; (void)op; (void)val;
    sched_yield();
#endif
}

/* Wait until *word != val: spin SK_SPIN pauses (the usual imbalance of a phase), then yield
   the core for a while (if the thread we wait for shares our core with other work, it gets to
   run), then sleep on the futex if `sleepers` is given (the releaser wakes it). */
static inline bool sk_wait_change(std::atomic<int>* word, int val, std::atomic<int>* sleepers,
                                  int yields = SK_YIELDS) {
    for (int i = 0; i < SK_SPIN; ++i) {
        if (word->load(std::memory_order_acquire) != val) return true;
        SK_RELAX();
    }
    for (int i = 0; i < yields; ++i) {
        if (word->load(std::memory_order_acquire) != val) return true;
        sk_yield();
    }
    if (!sleepers) return word->load() != val;
    sleepers->fetch_add(1);
    while (word->load() == val) sk_futex(word, FUTEX_WAIT_PRIVATE, val);
    sleepers->fetch_sub(1);
    return true;
}

/* Sequentially consistent on both sides (store gen / load sleepers against add sleepers /
   load gen), so a sleeper either sees the new generation or is seen and woken. */
static inline void sk_barrier(SkTeam* t, int nt, int yields = SK_YIELDS) {
    if (nt <= 1) return;
    const int g = t->gen.load();
    if (t->arrived.fetch_add(1) == nt - 1) {
        t->arrived.store(0);
        t->gen.store(g + 1);
        if (t->sleepers.load()) sk_futex(&t->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
        return;
    }
    sk_wait_change(&t->gen, g, &t->sleepers, yields);
}

/* The last thing a thread does in the team.  OpenMP's closing barrier puts whoever arrives
   first to sleep under passive waiting, and with the master asleep the pass ends one wake-up
   later (tens of microseconds).  So the other threads leave first and the master spins until
   they have, plus a moment for them to reach OpenMP's barrier: arriving last, it never sleeps. */
static inline void sk_team_leave(SkTeam* t, int tid, int nt) {
    if (nt <= 1) return;
    if (tid != 0) {
        t->left.fetch_add(1);
        return;
    }
    /* a late thread (descheduled) is left to OpenMP's barrier after the spin and the yields */
    for (int n = t->left.load(); n < nt - 1; n = t->left.load())
        if (!sk_wait_change(&t->left, n, NULL)) break;
    for (int i = 0; i < 64; ++i) SK_RELAX();
}

/* Claim the next chunk of phase `phase` (0 .. n_chunks - 1), or -1 when none is left. */
static inline ptrdiff_t sk_claim(SkTeam* t, int phase, ptrdiff_t n_chunks) {
    const ptrdiff_t c = t->next[phase].fetch_add(1, std::memory_order_relaxed);
    return c < n_chunks ? c : -1;
}

/* Claim a chunk of phase `phase` so that each thread's chunks are mostly consecutive: the
   chunks are cut into one segment per thread (at most SK_MAX_SEGMENTS), a thread takes its own
   segment's chunks from the front and, when that is empty, the other segments' from the back
   (so a thread that wakes late still takes fewer chunks).  Two reasons:
   - a pass that writes through a permutation (the fused backward's gradient, in W's order):
     with chunks dealt out in turn, every cache line of the gradient was written by both threads
     and moved between the cores on nearly every write (a 1000 x 1000 backward took as long on
     2 threads as on 1 on an Intel Xeon guest); with consecutive chunks per thread a W row's
     entries split at one point;
   - a thread keeps about the same part of every array from step to step and from phase to
     phase (the forward's rows of a layer are the backward's columns of the next, and the
     update's chunks of W follow its rows), and reads it from its own cache: a line the other
     core wrote took 6x as long to read there (benchmarks/cache_limits.py).
   Each phase has its own segments, so phases may follow each other without a barrier. */
static inline ptrdiff_t sk_claim_ordered(SkTeam* t, int phase, ptrdiff_t n_chunks, int tid,
                                         int nt) {
    const int n_seg = nt < SK_MAX_SEGMENTS ? (nt > 0 ? nt : 1) : SK_MAX_SEGMENTS;
    std::atomic<uint64_t>* seg = t->seg[phase];
    for (int k = 0; k < n_seg; ++k) {
        const int s = (tid + k) % n_seg;
        const bool own = k == 0 && tid < n_seg;
        const ptrdiff_t lo = n_chunks * s / n_seg, hi = n_chunks * (s + 1) / n_seg;
        uint64_t cur = seg[s].load(std::memory_order_relaxed);
        for (;;) {
            const ptrdiff_t front = (ptrdiff_t)(cur & 0xffffffffu), back = (ptrdiff_t)(cur >> 32);
            if (lo + front >= hi - back) break;  /* segment empty */
            const uint64_t next = own ? cur + 1 : cur + ((uint64_t)1 << 32);
            if (seg[s].compare_exchange_weak(cur, next, std::memory_order_relaxed))
                return own ? lo + front : hi - 1 - back;
        }
    }
    return -1;
}

/* Rows [*r0, *r1) of chunk c when rows are split into n_chunks of about equal work, the work
   of rows [0, r) being indptr[r] + row_cost * r (non-zeros plus a per-row cost). */
template <typename I>
static inline void sk_chunk_rows(const I* indptr, ptrdiff_t n_rows, ptrdiff_t row_cost,
                                 ptrdiff_t c, ptrdiff_t n_chunks, ptrdiff_t* r0, ptrdiff_t* r1) {
    const double total = (double)indptr[n_rows] + (double)row_cost * (double)n_rows;
    ptrdiff_t bounds[2];
    for (int e = 0; e < 2; ++e) {
        const ptrdiff_t cc = c + e;
        if (cc <= 0) { bounds[e] = 0; continue; }
        if (cc >= n_chunks) { bounds[e] = n_rows; continue; }
        const double target = total * (double)cc / (double)n_chunks;
        ptrdiff_t lo = 0, hi = n_rows;  /* first r with work(r) >= target */
        while (lo < hi) {
            const ptrdiff_t mid = lo + (hi - lo) / 2;
            if ((double)indptr[mid] + (double)row_cost * (double)mid < target) lo = mid + 1;
            else hi = mid;
        }
        bounds[e] = lo;
    }
    *r0 = bounds[0];
    *r1 = bounds[1];
}

/* body(r0, r1) for each chunk of rows of phase `phase` this thread claims (n_chunks of about
   equal work, sk_chunk_rows; empty chunks are skipped); with ORDERED, claimed by
   sk_claim_ordered for thread tid of nt. */
template <bool ORDERED = false, typename I, typename Body>
static inline void sk_claim_rows(SkTeam* t, int phase, const I* indptr, ptrdiff_t n_rows,
                                 ptrdiff_t n_chunks, Body body, int tid = 0, int nt = 1) {
    for (;;) {
        const ptrdiff_t c = ORDERED ? sk_claim_ordered(t, phase, n_chunks, tid, nt)
                                    : sk_claim(t, phase, n_chunks);
        if (c < 0) return;
        ptrdiff_t r0, r1;
        sk_chunk_rows(indptr, n_rows, SK_ROW_COST, c, n_chunks, &r0, &r1);
        if (r0 < r1) body(r0, r1);
    }
}

#endif  /* SPARSEKIT_TEAM_HH */
