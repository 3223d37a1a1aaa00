/* The memory limits the CPU kernels run against, measured on this machine (cache_limits.py
   compiles and runs it; it prints one JSON object per line).

   read: one core sums a buffer of a given size over and over with 64-byte vector loads (8
   independent accumulators), best of 5 timed runs; the size sets which level serves it (L1,
   L2, what lies beyond).  The gathered rows of a product at batch 128 are 512-byte reads of a
   buffer like these.

   handoff: one core writes a buffer, then another core (pinned) reads it, as the next phase of
   a training step reads the activations the other thread wrote; against the same core reading
   a buffer it wrote itself.  The two cores take turns through an atomic flag.

   gather: 512-byte rows read in a random order from a 512 MiB buffer, as the products of a
   layer of a million neurons read their operand.

   shared_gather: both cores gathering rows of a 512 KiB buffer at once, each from its own copy
   or both from the same one, as the two threads of a product share its operand.

   phases: the two cores take turns as the phases of a training step do, each writing half of
   a layer's output and then gathering rows from all of it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

typedef float vec __attribute__((vector_size(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float sum_buffer(const float *buf, size_t bytes) {
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    const vec *v = (const vec *)__builtin_assume_aligned(buf, 64);
    const size_t n = bytes / sizeof(vec);
    for (size_t i = 0; i < n; i += 8) {
        a0 += v[i];
        a1 += v[i + 1];
        a2 += v[i + 2];
        a3 += v[i + 3];
        a4 += v[i + 4];
        a5 += v[i + 5];
        a6 += v[i + 6];
        a7 += v[i + 7];
    }
    const vec s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    float r = 0;
    for (int j = 0; j < 16; ++j) r += s[j];
    return r;
}

static void fill_buffer(float *buf, size_t bytes, float v) {
    vec x = {0};
    for (int j = 0; j < 16; ++j) x[j] = v;
    for (size_t i = 0; i < bytes / sizeof(float); i += 16) memcpy(buf + i, &x, sizeof x);
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static volatile float sink;

static void read_bandwidth(size_t bytes) {
    float *buf = aligned_alloc(64, bytes);
    fill_buffer(buf, bytes, 1.0f);
    size_t reps = (size_t)(2e9 / (double)bytes);
    if (reps < 4) reps = 4;
    double best = 1e30;
    for (int t = 0; t < 5; ++t) {
        const double t0 = now();
        float acc = 0;
        for (size_t r = 0; r < reps; ++r) {
            acc += sum_buffer(buf, bytes);
            __asm__ volatile("" : : "r"(buf) : "memory");  /* read it again: no hoisting */
        }
        const double dt = now() - t0;
        sink = acc;
        if (dt < best) best = dt;
    }
    printf("{\"kind\": \"read\", \"bytes\": %zu, \"gb_per_s\": %.2f}\n", bytes,
           (double)bytes * (double)reps / best / 1e9);
    free(buf);
}

/* n row numbers below n_rows, at random (xorshift64 from `seed`); the caller frees them. */
static uint32_t *random_rows(size_t n, size_t n_rows, uint64_t seed) {
    uint32_t *idx = malloc(n * sizeof *idx);
    for (size_t i = 0; i < n; ++i) {
        seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
        idx[i] = (uint32_t)(seed % n_rows);
    }
    return idx;
}

/* Rows of 512 bytes (batch 128, float32) read in a random order from a buffer of `bytes`, as a
   product gathers its operand's rows; 8 rows in flight.  Huge pages where the kernel gives
   them (NumPy asks for them too on arrays this large). */
static void gather_bandwidth(size_t bytes) {
    const size_t row = 512, n_rows = bytes / row, n_idx = 1 << 22;
    float *buf = aligned_alloc(1 << 21, bytes);
#ifdef MADV_HUGEPAGE
    madvise(buf, bytes, MADV_HUGEPAGE);
#endif
    fill_buffer(buf, bytes, 1.0f);
    uint32_t *idx = random_rows(n_idx, n_rows, 0x9E3779B97F4A7C15ull);
    double best = 1e30;
    for (int t = 0; t < 3; ++t) {
        const double t0 = now();
        float acc = 0;
        for (size_t i = 0; i < n_idx; i += 8) {
            vec a = {0};
            for (int u = 0; u < 8; ++u) {
                const vec *r = (const vec *)(buf + (size_t)idx[i + u] * (row / sizeof(float)));
                a += ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            }
            acc += a[0];
        }
        const double dt = now() - t0;
        sink = acc;
        if (dt < best) best = dt;
    }
    printf("{\"kind\": \"gather\", \"bytes\": %zu, \"gb_per_s\": %.2f}\n", bytes,
           (double)n_idx * (double)row / best / 1e9);
    free(idx);
    free(buf);
}

/* Both cores gather 512-byte rows at random from a 512 KiB buffer at the same time, each from
   its own copy or both from one (as the threads of a product share its operand), against one
   core alone; ns per row. */
static struct {
    float *bufs[2];
    uint32_t *idx;
    size_t n_idx;
    int same, cpus[2];
    double ns[2];
} G;

static void pin(int cpu);

static double gather_rows(const float *buf, size_t off) {
    const double t0 = now();
    vec a = {0};
    for (size_t i = 0; i < G.n_idx; ++i) {
        const vec *r = (const vec *)(buf + (size_t)G.idx[(i + off) % G.n_idx] * 128);
        a += ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    }
    sink = a[0];
    return (now() - t0) / (double)G.n_idx * 1e9;
}

static void *gatherer(void *arg) {
    const int t = (int)(intptr_t)arg;
    pin(G.cpus[t]);
    G.ns[t] = gather_rows(G.same ? G.bufs[0] : G.bufs[t], (size_t)t * 12345);
    return NULL;
}

static void shared_gather(int cpu0, int cpu1) {
    const size_t bytes = 512 << 10, n_rows = bytes / 512;
    G.n_idx = (size_t)1 << 23;
    G.idx = random_rows(G.n_idx, n_rows, 0x2545F4914F6CDD1Dull);
    for (int t = 0; t < 2; ++t) {
        G.bufs[t] = aligned_alloc(64, bytes);
        fill_buffer(G.bufs[t], bytes, 1.0f);
    }
    G.cpus[0] = cpu0;
    G.cpus[1] = cpu1;
    pin(cpu0);
    gather_rows(G.bufs[0], 0);
    const double alone = gather_rows(G.bufs[0], 0);
    double both[2][2];
    for (G.same = 0; G.same < 2; ++G.same) {
        pthread_t th[2];
        for (int t = 0; t < 2; ++t) pthread_create(&th[t], NULL, gatherer, (void *)(intptr_t)t);
        for (int t = 0; t < 2; ++t) pthread_join(th[t], NULL);
        both[G.same][0] = G.ns[0];
        both[G.same][1] = G.ns[1];
    }
    printf("{\"kind\": \"shared_gather\", \"bytes\": %zu, \"alone_ns\": %.3f, "
           "\"own_copies_ns\": [%.3f, %.3f], \"one_copy_ns\": [%.3f, %.3f]}\n", bytes, alone,
           both[0][0], both[0][1], both[1][0], both[1][1]);
    for (int t = 0; t < 2; ++t) free(G.bufs[t]);
    free(G.idx);
}

static struct {
    float *buf;
    size_t bytes;
    int rounds, cpu;
    atomic_int turn;
    double other, own;
} H;

static void *reader(void *arg) {
    (void)arg;
    pin(H.cpu);
    double other = 0, own = 0;
    float acc = 0;
    for (int r = 0; r < H.rounds; ++r) {
        while (atomic_load(&H.turn) != 1) {}
        double t0 = now();
        acc += sum_buffer(H.buf, H.bytes);       /* written by the other core */
        other += now() - t0;
        fill_buffer(H.buf, H.bytes, 2.0f);
        t0 = now();
        acc += sum_buffer(H.buf, H.bytes);       /* written by this core */
        own += now() - t0;
        atomic_store(&H.turn, 0);
    }
    sink = acc;
    H.other = other / H.rounds;
    H.own = own / H.rounds;
    return NULL;
}

static void handoff(size_t bytes, int cpu0, int cpu1) {
    H.buf = aligned_alloc(64, bytes);
    H.bytes = bytes;
    H.rounds = 200;
    H.cpu = cpu1;
    atomic_store(&H.turn, 0);
    pthread_t th;
    pthread_create(&th, NULL, reader, NULL);
    pin(cpu0);
    for (int r = 0; r < H.rounds; ++r) {
        while (atomic_load(&H.turn) != 0) {}
        fill_buffer(H.buf, bytes, 1.0f);
        atomic_store(&H.turn, 1);
    }
    pthread_join(th, NULL);
    printf("{\"kind\": \"handoff\", \"bytes\": %zu, \"other_core_us\": %.2f, "
           "\"own_core_us\": %.2f}\n", bytes, H.other * 1e6, H.own * 1e6);
    free(H.buf);
}

/* Phases as in a 2-thread training step: each core writes its half of a 512 KiB buffer of
   512-byte rows (a layer's output), both wait at a barrier, then each gathers 20 000 rows at
   random from the whole buffer (the next layer's product, half of its 40 000 connections),
   and wait again; against the same phases when the buffer is not rewritten, so that every
   row stays in both cores' caches.  Mean microseconds per phase, core 0. */
static struct {
    float *buf;
    uint32_t *idx;
    int cpus[2], rewrite, rounds;
    atomic_int arrived;
    double write_us, gather_us;
} P;

static void phase_barrier(int *gen) {
    *gen += 2;
    atomic_fetch_add(&P.arrived, 1);
    while (atomic_load(&P.arrived) < *gen) {}
}

static void *phase_body(void *arg) {
    const int t = (int)(intptr_t)arg;
    const size_t half = 512, per = 20000;   /* rows of 512 bytes in each half; gathers */
    pin(P.cpus[t]);
    int gen = 0;
    double w = 0, g = 0;
    for (int r = 0; r < P.rounds + 50; ++r) {
        double t0 = now();
        if (P.rewrite || r == 0) fill_buffer(P.buf + (size_t)t * half * 128, half * 512, (float)r);
        double t1 = now();
        phase_barrier(&gen);
        double t2 = now();
        vec a = {0};
        for (size_t i = 0; i < per; ++i) {
            const vec *q = (const vec *)(P.buf + (size_t)P.idx[(size_t)t * per + i] * 128);
            a += ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
        }
        sink = a[0];
        double t3 = now();
        phase_barrier(&gen);
        if (r >= 50 && t == 0) {
            w += t1 - t0;
            g += t3 - t2;
        }
    }
    if (t == 0) {
        P.write_us = w / P.rounds * 1e6;
        P.gather_us = g / P.rounds * 1e6;
    }
    return NULL;
}

static void phases(int cpu0, int cpu1) {
    const size_t rows = 1024, per = 20000;
    P.buf = aligned_alloc(64, rows * 512);
    P.idx = random_rows(2 * per, rows, 0x5DEECE66Dull);
    P.cpus[0] = cpu0;
    P.cpus[1] = cpu1;
    P.rounds = 2000;
    double res[2][2];
    for (P.rewrite = 0; P.rewrite < 2; ++P.rewrite) {
        atomic_store(&P.arrived, 0);
        pthread_t th[2];
        for (int t = 0; t < 2; ++t) pthread_create(&th[t], NULL, phase_body, (void *)(intptr_t)t);
        for (int t = 0; t < 2; ++t) pthread_join(th[t], NULL);
        res[P.rewrite][0] = P.write_us;
        res[P.rewrite][1] = P.gather_us;
    }
    printf("{\"kind\": \"phases\", \"bytes\": %zu, \"gathers\": %zu, "
           "\"static_gather_us\": %.2f, \"rewritten_write_us\": %.2f, "
           "\"rewritten_gather_us\": %.2f}\n", rows * 512, per, res[0][1], res[1][0],
           res[1][1]);
    free(P.idx);
    free(P.buf);
}

int main(void) {
    const size_t read_sizes[] = {16 << 10, 32 << 10, 256 << 10, 512 << 10, 1 << 20,
                                 8 << 20, 64 << 20};
    for (size_t i = 0; i < sizeof read_sizes / sizeof *read_sizes; ++i)
        read_bandwidth(read_sizes[i]);
    gather_bandwidth((size_t)512 << 20);
    cpu_set_t s;
    sched_getaffinity(0, sizeof s, &s);
    int cpus[2], n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < 2; ++c)
        if (CPU_ISSET(c, &s)) cpus[n++] = c;
    if (n == 2) {
        const size_t sizes[] = {64 << 10, 256 << 10, 512 << 10, 1 << 20};
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; ++i)
            handoff(sizes[i], cpus[0], cpus[1]);
        shared_gather(cpus[0], cpus[1]);
        phases(cpus[0], cpus[1]);
    }
    return 0;
}
