/* A whole training pass of a sparse MLP in one OpenMP team (team.hh), the bodies of
   sparsekit/_cython/mlp.pyx:
   - sk_mlp_forward: every layer's product with its bias, activation and dropout applied to each
     output row while it is still in L1 (the last layer: bias only);
   - sk_mlp_backward: from the top layer down, the fused backward (dx and the pattern gradient,
     dots.hh) with dx multiplied by the activation derivative of the layer below and that
     layer's bias gradient summed while the row is in L1; then, optionally, the optimizer
     update of every layer (momentum SGD or Adam/AdamW);
   - sk_mlp_step: both in one team, with the batch's gather first (batch.hh) and the loss called
     back on the master between them.
   Every row is computed by one thread with the same kernels and in the same order as the
   one-product-at-a-time path (spmm.pyx, elementwise.pyx, NumPy), so both give the same bits. */
#ifndef SPARSEKIT_MLP_HH
#define SPARSEKIT_MLP_HH

#include <stddef.h>
#include <stdint.h>

#include "batch.hh"
#include "epilogue.hh"
#include "dots.hh"
#include "spmm.hh"
#include "team.hh"

/* One layer as mlp.pyx passes it: W (n_out x n_in) in CSR with its transposed index, the
   bias, the buffers of this pass and the plans of spmm.pyx's _plan.  Every batch array of a
   pass (n rows x B samples) has its rows ld values apart (ld >= B, whole vectors when the
   backend pads them, so each row starts on a cache line).  Pointers are untyped so
   that Cython can fill one struct for every value and index type. */
typedef struct {
    const void* indptr; const void* indices; void* data;
    const void* t_indptr; const void* t_rows; const void* t_perm;
    const void* t_inv;  /* t_perm's inverse (W position -> transposed position), or NULL */
    void* bias;
    ptrdiff_t n_out, n_in, nnz;
    void* out;       /* forward: activation (hidden) or logits (last), n_out x n_batch */
    void* deriv;     /* forward: activation derivative, n_out x n_batch (hidden only;
                        NULL in inference) */
    double slope;    /* hidden activation's left slope */
    uint64_t seed;   /* dropout key of this layer and step */
    void* dz;        /* backward: gradient w.r.t. this layer's pre-activation (n_out x n_batch) */
    void* grad;      /* backward: weight gradient, W's CSR order */
    void* gbias;     /* backward: bias gradient */
    void* g_lin;     /* backward: the gradient in the transposed index's order (nnz), when
                        the pass gathers it (sk_gathers), or the batch-tiled walk's scratch */
    void* mom_w;     /* update state of W and of the bias (NULL: no update): SGD's velocity */
    void* mom_b;     /* or Adam's first moment, */
    void* sq_w;      /* and Adam's second moment */
    void* sq_b;
    int tv_f, pf_f, tv_b, pf_b;
} SkLayerPass;

/* The output layer when its rows are full (spmm.hh, sk_full_rows): units of up to
   SK_FULL_ROWS rows by two vectors of the batch, so a unit reads a slice of every input row
   once, and two threads read a half of the input each instead of the whole of it. */
template <typename T, typename I>
static void sk_full_phase(SkTeam* team, int phase, const SkLayerPass& L, const T* src,
                          ptrdiff_t B, ptrdiff_t ld, int tid, int nt) {
    const ptrdiff_t tile = 2 * SkVec<T>::N, n_tiles = (B + tile - 1) / tile;
    const ptrdiff_t n_blocks = (L.n_out + SK_FULL_ROWS - 1) / SK_FULL_ROWS;
    for (ptrdiff_t c; (c = sk_claim_ordered(team, phase, n_tiles * n_blocks, tid, nt)) >= 0;) {
        const ptrdiff_t blk = c % n_blocks, b0 = (c / n_blocks) * tile;
        sk_full_rows<T, I>((const T*)L.data, (const I*)L.indices, L.n_in,
                           blk * L.n_out / n_blocks, (blk + 1) * L.n_out / n_blocks, src, ld,
                           (const T*)L.bias, (T*)L.out, b0, b0 + tile < B ? b0 + tile : B);
    }
}

template <typename T, typename I>
static void sk_forward_phase(SkTeam* team, int phase, const SkLayerPass& L, const T* src,
                             ptrdiff_t B, ptrdiff_t ld, bool hidden, double rate, int tid,
                             int nt) {
    const I* indptr = (const I*)L.indptr;
    T* out = (T*)L.out;
    const T* bias = (const T*)L.bias;
    if (!hidden && L.n_out > 0 && L.nnz == L.n_out * L.n_in) {
        sk_full_phase<T, I>(team, phase, L, src, B, ld, tid, nt);
        return;
    }
    /* in double, as elementwise.pyx: the rate's float32 rounding would move the threshold */
    const uint64_t threshold = (uint64_t)(rate * 16777216.0);
    const T scale = (T)(1.0 / (1.0 - rate));
    /* ordered claims: each thread keeps about the same rows step after step, and they are the
       columns its backward claims, so the activations it reads there are in its own cache */
    sk_claim_rows<true>(team, phase, indptr, L.n_out, sk_phase_chunks(team, L.nnz),
                        [&](ptrdiff_t r0, ptrdiff_t r1) {
        sk_spmm_rows<T, I>(indptr, (const I*)L.indices, (const T*)L.data, (const I*)NULL, r0, r1,
                           src, B, ld, out, L.tv_f, L.pf_f);
        for (ptrdiff_t o = r0; o < r1; ++o) {
            T* row = out + o * ld;
            if (hidden)
                sk_act_row<T>(row, bias[o], row, L.deriv ? (T*)L.deriv + o * ld : (T*)NULL, B,
                              (T)L.slope, scale, threshold, sk_act_key(L.seed, o, B));
            else
                for (ptrdiff_t j = 0; j < B; ++j) row[j] = row[j] + bias[o];
        }
    }, tid, nt);
}

/* Where the forward's batch comes from when the pass gathers it itself: rows idx of the
   batch-major data set (n x F, F = the first layer's inputs), through the scratch rows
   (B x F). */
typedef struct {
    const void* data;
    const int64_t* idx;
    void* rows;
} SkGather;

/* The batch into x (F x B): the rows copied in chunks of 8 samples, then transposed in chunks of
   64 features (batch.hh).  In the forward's team, so the copy of the scattered rows runs on
   every thread, and a thread that wakes late joins it instead of the first layer. */
template <typename T>
static void sk_gather_phases(SkTeam* team, int phase, int tid, int nt, const SkGather& g,
                             ptrdiff_t F, ptrdiff_t B, ptrdiff_t ld, T* x) {
    const T* data = (const T*)g.data;
    T* rows = (T*)g.rows;
    const ptrdiff_t n_copy = (B + 7) / 8, n_tr = (F + 63) / 64;
    for (ptrdiff_t c; (c = sk_claim(team, phase, n_copy)) >= 0;)
        sk_copy_rows<T>(data, F, g.idx, c * 8, c * 8 + 8 < B ? c * 8 + 8 : B, rows);
    sk_barrier(team, nt);
    /* ordered, as the forward's rows: the first layer's backward reads x by these features */
    for (ptrdiff_t c; (c = sk_claim_ordered(team, phase + 1, n_tr, tid, nt)) >= 0;)
        sk_transpose_cols<T>(rows, B, F, c * 64, c * 64 + 64 < F ? c * 64 + 64 : F, x, ld);
    sk_barrier(team, nt);
}

/* The forward inside a team, on phases 0 .. n_layers + 1 (the last two for the gather). */
template <typename T, typename I>
static void sk_forward_body(SkTeam* team, int nt, int tid, SkLayerPass* layers, int n_layers,
                            T* x, ptrdiff_t B, ptrdiff_t ld, double rate,
                            const SkGather* gather) {
    if (gather) sk_gather_phases<T>(team, n_layers, tid, nt, *gather, layers[0].n_in, B, ld, x);
    const T* src = x;
    for (int l = 0; l < n_layers; ++l) {
        sk_forward_phase<T, I>(team, l, layers[l], src, B, ld, l < n_layers - 1, rate, tid,
                               nt);
        if (l < n_layers - 1) sk_barrier(team, nt);
        src = (const T*)layers[l].out;
    }
}

template <typename T, typename I>
static void sk_mlp_forward_t(SkLayerPass* layers, int n_layers, T* x, ptrdiff_t B, ptrdiff_t ld,
                             double rate, const SkGather* gather, int num_threads) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    #pragma omp parallel num_threads(num_threads)
    {
        const int nt = sk_team_size(), tid = sk_team_rank();
        sk_forward_body<T, I>(&team, nt, tid, layers, n_layers, x, B, ld, rate, gather);
        sk_team_leave(&team, tid, nt);
    }
}

/* Whether the backward writes layer L's gradient in the transposed index's order (g_lin) and
   gathers it into W's order afterwards (grad[i] = g_lin[t_inv[i]], in chunks of W's order),
   instead of writing grad[t_perm[k]] as it goes.  On more than one thread, the scattered writes
   put nearly every cache line of grad in both cores' hands: a 1000 x 1000 fused backward took
   as long on 2 threads as on 1 on an Intel Xeon guest (ordered claims, sk_claim_ordered, cut
   that to the line where each W row's entries change thread, about one line in three).  On one
   thread the scatter costs nothing, so it stays.  The same values either way. */
static inline bool sk_gathers(const SkLayerPass& L, int nt) {
    return nt > 1 && L.t_inv != NULL && L.g_lin != NULL && L.nnz > 0;
}

template <typename T, typename I>
static void sk_backward_phase(SkTeam* team, int phase, const SkLayerPass& L,
                              const SkLayerPass* below, const T* x, ptrdiff_t B,
                              ptrdiff_t ld, int tid, int nt) {
    const I* t_indptr = (const I*)L.t_indptr;
    T* dx = below ? (T*)below->dz : (T*)NULL;
    const bool gather = sk_gathers(L, nt);
    /* ordered claims: the gradient is written through t_perm (see sk_claim_ordered) */
    sk_claim_rows<true>(team, phase, t_indptr, L.n_in, sk_phase_chunks(team, 2 * L.nnz),
                        [&](ptrdiff_t r0, ptrdiff_t r1) {
        if (L.nnz == 0) {  /* no connection: dx is 0 and there is no gradient */
            if (dx)
                for (ptrdiff_t i = r0; i < r1; ++i)
                    for (ptrdiff_t j = 0; j < B; ++j) dx[i * ld + j] = 0;
        } else {
            sk_dot_rows<T, I>(t_indptr, (const I*)L.t_rows, (const I*)L.t_perm, (const T*)L.data,
                              r0, r1, (const T*)L.dz, x, B, ld, dx,
                              (T*)(gather ? L.g_lin : L.grad), (T*)L.g_lin, L.tv_b, L.pf_b,
                              !gather);
        }
        if (!dx) return;
        const T* d = (const T*)below->deriv;
        T* gb = (T*)below->gbias;
        for (ptrdiff_t i = r0; i < r1; ++i) {
            T* row = dx + i * ld;
            for (ptrdiff_t j = 0; j < B; ++j) row[j] = row[j] * d[i * ld + j];
            gb[i] = sk_row_sum(row, B);
        }
    }, tid, nt);
}

/* n parameters after the backward, in chunks claimed by the team: with g_t, the gradient first
   gathered into g from the transposed order (g[i] = g_t[inv[i]], when sk_gathers), then, with
   an update, the update while the chunk is in L1.  Chunks of 4096 values, so a 1000 x 1000
   layer's gather is split over the threads. */
template <typename T, typename I>
static void sk_update_phase(SkTeam* team, int phase, int tid, int nt, T* p, T* g, T* m, T* v,
                            ptrdiff_t n, const SkUpdate* update, const T* g_t = NULL,
                            const I* inv = NULL) {
    const ptrdiff_t chunk = 1 << 12, n_chunks = (n + chunk - 1) / chunk;
    /* ordered: a thread updates about the rows its forward computes (sk_claim_ordered) */
    for (ptrdiff_t k; (k = sk_claim_ordered(team, phase, n_chunks, tid, nt)) >= 0;) {
        const ptrdiff_t i0 = k * chunk, len = (i0 + chunk < n ? chunk : n - i0);
        if (g_t)
            for (ptrdiff_t i = i0; i < i0 + len; ++i) g[i] = g_t[inv[i]];
        if (update) sk_apply_update<T>(p + i0, g + i0, m + i0, v ? v + i0 : v, len, *update);
    }
}

/* The backward inside a team, on phases phase0 .. phase0 + n_layers (+ 2 n_layers with
   an update) - 1.  acts[l]: the input of layer l (acts[0] = x, then the hidden layers' outputs).
   The top layer's dz (the loss gradient of the logits) is given; the others are written. */
template <typename T, typename I>
static void sk_backward_body(SkTeam* team, int nt, int tid, int phase0, SkLayerPass* layers,
                             int n_layers, const T* const* acts, ptrdiff_t B, ptrdiff_t ld,
                             const SkUpdate* update) {
    if (tid == 0) {  /* the top layer's bias gradient (a few rows) */
        const SkLayerPass& top = layers[n_layers - 1];
        for (ptrdiff_t o = 0; o < top.n_out; ++o)
            ((T*)top.gbias)[o] = sk_row_sum((const T*)top.dz + o * ld, B);
    }
    bool any_gather = false;
    for (int l = 0; l < n_layers; ++l) any_gather = any_gather || sk_gathers(layers[l], nt);
    int phase = phase0;
    for (int l = n_layers - 1; l >= 0; --l) {
        sk_backward_phase<T, I>(team, phase++, layers[l], l > 0 ? &layers[l - 1] : NULL,
                                acts[l], B, ld, tid, nt);
        if (l > 0 || update || any_gather) sk_barrier(team, nt);
    }
    for (int l = 0; l < n_layers; ++l) {
        const SkLayerPass& L = layers[l];
        const bool gather = sk_gathers(L, nt);
        if (gather || update)
            sk_update_phase<T, I>(team, phase++, tid, nt, (T*)L.data, (T*)L.grad, (T*)L.mom_w,
                                  (T*)L.sq_w, L.nnz, update,
                                  gather ? (const T*)L.g_lin : (const T*)NULL,
                                  (const I*)L.t_inv);
        if (update)
            sk_update_phase<T, I>(team, phase++, tid, nt, (T*)L.bias, (T*)L.gbias, (T*)L.mom_b,
                                  (T*)L.sq_b, L.n_out, update);
    }
}

template <typename T, typename I>
static void sk_mlp_backward_t(SkLayerPass* layers, int n_layers, const T* const* acts,
                              ptrdiff_t B, ptrdiff_t ld, const SkUpdate* update,
                              int num_threads) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    #pragma omp parallel num_threads(num_threads)
    {
        const int nt = sk_team_size(), tid = sk_team_rank();
        sk_backward_body<T, I>(&team, nt, tid, 0, layers, n_layers, acts, B, ld, update);
        sk_team_leave(&team, tid, nt);
    }
}

/* The loss between the passes of a step: run on the master (the thread that called the pass,
   so it may take the GIL back), with every layer's forward written; it sets the top layer's
   dz.  It returns 1 to go on with the backward, 0 to stop the team after the forward. */
typedef int (*SkLossFn)(void* ctx);

/* The step's own loss (mlp.pyx's step with labels), an SkLossFn: the softmax cross-entropy of
   the top layer's output (rows ld apart) against the labels, with NumPy's exp loop
   (epilogue.hh's sk_softmax_ce); the gradient, rows ld apart, becomes the top layer's dz, and
   the loss goes to `value` (sk_cross_entropy_value, with NumPy's log loop).  No Python, so
   the master runs it without taking the GIL. */
struct SkSoftmaxLoss {
    SkLayerPass* top;
    const int64_t* labels;
    void *scratch, *probs, *picked, *grad;  /* B, C x B, B and C x ld values */
    ptrdiff_t B, ld;
    int is_double;
    SkUnaryLoop exp_loop, log_loop;
    void *exp_data, *log_data;
    double value;
};

template <typename T>
static void sk_softmax_loss_t(SkSoftmaxLoss* ce) {
    sk_softmax_ce((const T*)ce->top->out, ce->ld, ce->labels, ce->top->n_out, ce->B,
                  (T*)ce->scratch, (T*)ce->probs, (T*)ce->picked, (T*)ce->grad, ce->ld,
                  ce->exp_loop, ce->exp_data);
    ce->value = sk_cross_entropy_value((const T*)ce->picked, ce->B, (T*)ce->scratch,
                                       ce->log_loop, ce->log_data);
}

static int sk_softmax_loss(void* ctx) {
    SkSoftmaxLoss* ce = (SkSoftmaxLoss*)ctx;
    if (ce->is_double) sk_softmax_loss_t<double>(ce);
    else sk_softmax_loss_t<float>(ce);
    ce->top->dz = ce->grad;
    return 1;
}

/* Waiting threads yield the core this many times after their spin while the loss runs
   (a few microseconds in sk_softmax_loss, tens when called back into Python under the GIL)
   before they sleep: a thread woken from sleep starts the backward tens of microseconds late,
   which is what one team per step saves. */
#define SK_LOSS_YIELDS 400

/* A whole training step in one team: the forward (with the batch's gather), the loss on the
   master, the backward and the update.  One team, so the other threads are woken once per step
   instead of once per pass.  Returns what the loss returned. */
template <typename T, typename I>
static int sk_mlp_step_t(SkLayerPass* layers, int n_layers, T* x, ptrdiff_t B, ptrdiff_t ld,
                         double rate, const SkGather* gather, const T* const* acts,
                         const SkUpdate* update, SkLossFn loss, void* ctx, int num_threads) {
    SkTeam team;
    sk_team_init(&team, num_threads);
    std::atomic<int> go(0);
    #pragma omp parallel num_threads(num_threads)
    {
        const int nt = sk_team_size(), tid = sk_team_rank();
        sk_forward_body<T, I>(&team, nt, tid, layers, n_layers, x, B, ld, rate, gather);
        sk_barrier(&team, nt);
        if (tid == 0) go.store(loss(ctx));
        sk_barrier(&team, nt, SK_LOSS_YIELDS);
        if (go.load())
            sk_backward_body<T, I>(&team, nt, tid, n_layers + 2, layers, n_layers, acts, B, ld,
                                    update);
        sk_team_leave(&team, tid, nt);
    }
    return go.load();
}

/* x: the feature-major batch, read, or written first when `gather` is given. */
static void sk_mlp_forward(SkLayerPass* layers, int n_layers, void* x, ptrdiff_t B,
                           ptrdiff_t ld, double rate, const SkGather* gather, int is_double,
                           int is_int64, int num_threads) {
    if (is_double) {
        if (is_int64) sk_mlp_forward_t<double, int64_t>(layers, n_layers, (double*)x, B, ld, rate, gather, num_threads);
        else sk_mlp_forward_t<double, int32_t>(layers, n_layers, (double*)x, B, ld, rate, gather, num_threads);
    } else {
        if (is_int64) sk_mlp_forward_t<float, int64_t>(layers, n_layers, (float*)x, B, ld, rate, gather, num_threads);
        else sk_mlp_forward_t<float, int32_t>(layers, n_layers, (float*)x, B, ld, rate, gather, num_threads);
    }
}

static void sk_mlp_backward(SkLayerPass* layers, int n_layers, const void* const* acts,
                            ptrdiff_t B, ptrdiff_t ld, const SkUpdate* update, int is_double,
                            int is_int64, int num_threads) {
    if (is_double) {
        if (is_int64) sk_mlp_backward_t<double, int64_t>(layers, n_layers, (const double* const*)acts, B, ld, update, num_threads);
        else sk_mlp_backward_t<double, int32_t>(layers, n_layers, (const double* const*)acts, B, ld, update, num_threads);
    } else {
        if (is_int64) sk_mlp_backward_t<float, int64_t>(layers, n_layers, (const float* const*)acts, B, ld, update, num_threads);
        else sk_mlp_backward_t<float, int32_t>(layers, n_layers, (const float* const*)acts, B, ld, update, num_threads);
    }
}

static int sk_mlp_step(SkLayerPass* layers, int n_layers, void* x, ptrdiff_t B, ptrdiff_t ld,
                       double rate, const SkGather* gather, const void* const* acts,
                       const SkUpdate* update, SkLossFn loss, void* ctx, int is_double,
                       int is_int64, int num_threads) {
    if (is_double) {
        if (is_int64) return sk_mlp_step_t<double, int64_t>(layers, n_layers, (double*)x, B, ld, rate, gather, (const double* const*)acts, update, loss, ctx, num_threads);
        return sk_mlp_step_t<double, int32_t>(layers, n_layers, (double*)x, B, ld, rate, gather, (const double* const*)acts, update, loss, ctx, num_threads);
    }
    if (is_int64) return sk_mlp_step_t<float, int64_t>(layers, n_layers, (float*)x, B, ld, rate, gather, (const float* const*)acts, update, loss, ctx, num_threads);
    return sk_mlp_step_t<float, int32_t>(layers, n_layers, (float*)x, B, ld, rate, gather, (const float* const*)acts, update, loss, ctx, num_threads);
}

#endif  /* SPARSEKIT_MLP_HH */
