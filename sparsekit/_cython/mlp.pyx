"""Fused training passes of a sparse MLP: the forward and the backward (+ the optimizer update)
of all layers in one OpenMP team each, or a whole training step in one (mlp.hh, team.hh).

One product at a time, a training step of the default 784-1000-1000-1000-10 network opens
about fifteen parallel regions, and with passive waiting each one wakes the other threads again
(about 70 us per region on a 2-core virtual machine, as long as a whole product): two threads
were slower than one.  These passes open one region each (:func:`step`: one per step, with the
batch's gather and the loss inside) and hand rows out in chunks, so a second thread helps as
soon as it is awake.  They run the same row kernels as the single
products (spmm.hh) and the same epilogues as elementwise.pyx and NumPy (epilogue.hh), so a step
gives the same bits either way, on any thread count.

The checking ``def`` wrappers validate every array before the GIL is released; the backend
(:meth:`sparsekit._cython.backend.CpuBackend.mlp_forward`) owns the buffers and decides when a
model qualifies (piecewise-linear activations, one value and index type).
"""
from libc.stdint cimport int64_t, uint64_t

from ._arrays cimport array_ptr as _ptr
from ._bounds cimport all_below, all_below_ptr
from ._loops cimport UnaryLoop, unary_loop, unary_loop_fn, unary_probe
from ._update cimport SkUpdate, fill_update
from ._types cimport floating

import numpy as np
cimport numpy as cnp

from ._checks import check_threads
from .spmm import walk_plan

cnp.import_array()


cdef extern from "mlp.hh" nogil:
    ctypedef struct SkLayerPass:
        const void* indptr
        const void* indices
        void* data
        const void* t_indptr
        const void* t_rows
        const void* t_perm
        const void* t_inv
        void* bias
        Py_ssize_t n_out, n_in, nnz
        void* out
        void* deriv
        double slope
        uint64_t seed
        void* dz
        void* grad
        void* gbias
        void* g_lin
        void* mom_w
        void* mom_b
        void* sq_w
        void* sq_b
        int tv_f, pf_f, tv_b, pf_b
    ctypedef struct SkGather:
        const void* data
        const int64_t* idx
        void* rows
    void sk_mlp_forward(SkLayerPass* layers, int n_layers, void* x, Py_ssize_t B,
                        Py_ssize_t ld, double rate, const SkGather* gather, int is_double,
                        int is_int64, int num_threads)
    void sk_mlp_backward(SkLayerPass* layers, int n_layers, const void* const* acts,
                         Py_ssize_t B, Py_ssize_t ld, const SkUpdate* update, int is_double,
                         int is_int64, int num_threads)
    ctypedef int (*SkLossFn)(void* ctx) noexcept nogil
    int sk_mlp_step(SkLayerPass* layers, int n_layers, void* x, Py_ssize_t B, Py_ssize_t ld,
                    double rate, const SkGather* gather, const void* const* acts,
                    const SkUpdate* update, SkLossFn loss, void* ctx, int is_double,
                    int is_int64, int num_threads)
    ctypedef struct SkSoftmaxLoss:
        SkLayerPass* top
        const int64_t* labels
        void *scratch, *probs, *picked, *grad
        Py_ssize_t B, ld
        int is_double
        unary_loop_fn exp_loop, log_loop
        void *exp_data, *log_data
        double value
    int sk_softmax_loss(void* ctx)
    T sk_row_sum[T](const T* a, Py_ssize_t n)

# NumPy's exp and log loops where they give the ufuncs' bits (_loops.pxd), for the loss of a
# step's team.
cdef UnaryLoop EXP_F32 = unary_loop(np.exp, np.float32, unary_probe())
cdef UnaryLoop EXP_F64 = unary_loop(np.exp, np.float64, unary_probe())
cdef UnaryLoop LOG_F32 = unary_loop(np.log, np.float32, unary_probe())
cdef UnaryLoop LOG_F64 = unary_loop(np.log, np.float64, unary_probe())


def has_own_loss(dtype):
    """Whether :func:`step` can compute the loss itself (``labels``) for ``dtype``: NumPy's exp
    and log loops of that type gave the ufuncs' bits."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return EXP_F32.fn != NULL and LOG_F32.fn != NULL
    return dt == np.float64 and EXP_F64.fn != NULL and LOG_F64.fn != NULL

#: Phases one team can hold (team.hh's SK_MAX_PHASES): a backward with an update uses 3 per
#: layer.
MAX_LAYERS = 21
#: ... and a whole step (:func:`step`) 4 per layer and 2 for the batch.
MAX_STEP_LAYERS = 15


def batch_stride(Py_ssize_t n_batch, Py_ssize_t itemsize):
    """The row stride (in values) the passes read fastest for a batch of ``n_batch``: rounded
    up to whole 64-byte vectors, so every row starts on a cache line.  A row stride of 100
    floats left three rows in four off a line, and their gathered loads straddle two
    (``benchmarks/results/batch-sizes.md``: batch 100 cost 1.33-1.38x per sample of 96 or 112)."""
    cdef Py_ssize_t lanes = max(1, 64 // itemsize)
    return (n_batch + lanes - 1) // lanes * lanes


def row_stride(arrays, Py_ssize_t B):
    """The row stride (in values) of a pass's batch arrays of batch ``B``: the rows' distance in
    the first of ``arrays`` with more than one row, else ``B`` (the checks of ``_ptr`` then hold
    every other array to it)."""
    for a in arrays:
        if (isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[0] > 1 and a.itemsize
                and a.strides[0] % a.itemsize == 0 and a.strides[0] >= B * a.itemsize):
            return a.strides[0] // a.itemsize
    return B


cdef _types(layers):
    """``(value dtype, index dtype)`` shared by every layer, checked."""
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise ValueError(f"layers must hold 1 to {MAX_LAYERS} layers, got {len(layers)}")
    dt = np.asarray(layers[0]["data"]).dtype
    it = np.asarray(layers[0]["indices"]).dtype
    if dt not in (np.float32, np.float64) or it not in (np.int32, np.int64):
        raise ValueError(f"layers need float32/float64 values and int32/int64 indices, got "
                         f"{dt} and {it}")
    return dt, it


cdef void _fill_common(SkLayerPass* L, int i, dict layer, dt, it, Py_ssize_t n_in,
                       bint written=False) except *:
    # written: the pass updates the weights and the bias in place (the optimizer update)
    if layer["n_in"] != n_in:
        raise ValueError(f"layers[{i}] has {layer['n_in']} inputs but gets {n_in}")
    indptr, indices, data = layer["indptr"], layer["indices"], layer["data"]
    cdef Py_ssize_t n_out = indptr.shape[0] - 1 if isinstance(indptr, np.ndarray) else -1
    if n_out < 0:
        raise ValueError(f"layers[{i}]['indptr'] must be a 1-D array of n_out + 1 offsets")
    cdef Py_ssize_t nnz = indices.shape[0] if isinstance(indices, np.ndarray) else -1
    L.indptr = _ptr("layers[{}]['indptr']", i, indptr, it, n_out + 1, -1)
    L.indices = _ptr("layers[{}]['indices']", i, indices, it, nnz, -1)
    L.data = _ptr("layers[{}]['data']", i, data, dt, nnz, -1, written)
    L.bias = _ptr("layers[{}]['bias']", i, layer["bias"], dt, n_out, -1, written)
    if indptr[0] != 0 or indptr[n_out] != nnz:
        raise ValueError(f"layers[{i}]['indptr'] must start at 0 and end at nnz={nnz}")
    L.n_out, L.n_in, L.nnz = n_out, n_in, nnz
    L.mom_w = L.mom_b = L.sq_w = L.sq_b = NULL
    L.g_lin = L.grad = L.gbias = L.dz = L.out = L.deriv = NULL
    L.t_indptr = L.t_rows = L.t_perm = L.t_inv = NULL


def forward(list layers, x_ib, list outs, list derivs, slopes, seeds, double rate,
            int num_threads=0, gather=None):
    """All layers' forward products with bias, activation and dropout, in one team.

    Parameters
    ----------
    layers : list of dict
        ``indptr``, ``indices``, ``data`` (W of shape (n_out, n_in) in CSR, validated CSR
        contents: every index below ``n_in``), ``n_in`` and ``bias`` of each layer, inputs
        first.
    x_ib : ndarray of shape (n_in, n_batch)
        Feature-major input batch (64-byte aligned for speed).
    outs : list of ndarray
        ``(n_out, n_batch)`` per layer: the hidden activations and, last, the logits (bias
        added).  Written.
    derivs : list of ndarray or None
        ``(n_out, n_batch)`` per hidden layer: activation derivative with dropout.  Written.
        None for a layer whose derivative is not wanted (inference): the pass then writes
        only the activation, with the same bits.
    slopes : sequence of float
        Left slope of each hidden layer's piecewise-linear activation.
    seeds : sequence of int
        Dropout key of each hidden layer (as :func:`sparsekit._cython.elementwise.bias_act_dropout`).
    rate : float
        Dropout rate in [0, 1).
    gather : tuple, optional
        ``(data, idx, rows)``: first fill ``x_ib`` (then written) with the rows ``idx`` (int64,
        each in ``[0, len(data))``) of the batch-major ``data`` (n x n_in, C-contiguous, the
        value dtype), copied through the scratch ``rows`` (n_batch x n_in), in the same team:
        ``x_ib`` gets exactly ``data[idx].T``.
    """
    dt, it = _types(layers)
    cdef int n = len(layers), nt = check_threads(num_threads)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    if not isinstance(x_ib, np.ndarray) or x_ib.ndim != 2:
        raise ValueError("x_ib must be a 2-D NumPy array (features x batch)")
    cdef Py_ssize_t B = x_ib.shape[1], n_in = x_ib.shape[0], ld = row_stride([x_ib, *outs], B)
    cdef void* x = _ptr("x_ib", 0, x_ib, dt, n_in, B, gather is not None, ld)
    cdef SkGather g
    cdef SkGather* g_ptr = _gather(&g, gather, dt, n_in, B)
    passes = np.zeros(n * sizeof(SkLayerPass), dtype=np.uint8)
    cdef SkLayerPass* L = <SkLayerPass*>cnp.PyArray_DATA(<cnp.ndarray>passes)
    _fill_forward(L, layers, outs, derivs, slopes, seeds, dt, it, n_in, B, ld, False, True)
    cdef int is_double = dt == np.float64, is_int64 = it == np.int64
    if B == 0:
        return
    with nogil:
        sk_mlp_forward(L, n, x, B, ld, rate, g_ptr, is_double, is_int64, nt)


cdef void _fill_forward(SkLayerPass* L, list layers, list outs, list derivs, slopes, seeds, dt,
                        it, Py_ssize_t n_in, Py_ssize_t B, Py_ssize_t ld, bint written=False,
                        bint derivs_optional=False) except *:
    """The forward's fields of every layer (:func:`forward`'s arguments), checked (``written``:
    the weights and biases must be writeable, for the update of :func:`step`;
    ``derivs_optional``: a derivative may be None, for a pass that only infers)."""
    cdef int n = len(layers), i
    if len(outs) != n or len(derivs) != n - 1 or len(slopes) != n - 1 or len(seeds) != n - 1:
        raise ValueError("outs needs one array per layer; derivs, slopes and seeds one per "
                         "hidden layer")
    for i in range(n):
        _fill_common(&L[i], i, layers[i], dt, it, n_in, written)
        L[i].out = _ptr("outs[{}]", i, outs[i], dt, L[i].n_out, B, True, ld)
        if i < n - 1:
            if not (derivs_optional and derivs[i] is None):
                L[i].deriv = _ptr("derivs[{}]", i, derivs[i], dt, L[i].n_out, B, True, ld)
            L[i].slope = float(slopes[i])
            L[i].seed = int(seeds[i]) & 0xFFFFFFFFFFFFFFFF
        L[i].tv_f, L[i].pf_f = walk_plan(n_in, L[i].n_out, L[i].nnz, B, dt.itemsize, "forward")
        n_in = L[i].n_out


cdef SkGather* _gather(SkGather* g, gather, dt, Py_ssize_t n_in, Py_ssize_t B) except? NULL:
    """``g`` filled from :func:`forward`'s ``gather`` after checking it (every index in range:
    the copy runs without the GIL), or NULL when there is none."""
    if gather is None:
        return NULL
    if not isinstance(gather, tuple) or len(gather) != 3:
        raise ValueError("gather must be a tuple (data, idx, rows)")
    data, idx, rows = gather
    n_rows = data.shape[0] if isinstance(data, np.ndarray) and data.ndim == 2 else 0
    g.data = _ptr("gather data", 0, data, dt, n_rows, n_in)
    g.idx = <const int64_t*>_ptr("gather idx", 0, idx, np.dtype(np.int64), B)
    g.rows = _ptr("gather rows", 0, rows, dt, B, n_in, True)
    if not all_below_ptr(g.idx, B, n_rows):
        raise ValueError(f"gather idx must lie in [0, {n_rows}), the rows of gather data")
    return g


def backward(list layers, list acts, list derivs, list dzs, list grads, list gbiases,
             update=None, int num_threads=0):
    """All layers' gradients (and optionally the optimizer update) in one team.

    Parameters
    ----------
    layers : list of dict
        As for :func:`forward`, plus ``t_indptr``, ``t_rows``, ``t_perm`` (W's transposed index,
        :func:`sparsekit._cython.spmm.transpose_index`), optionally ``t_inv``, the inverse of
        ``t_perm`` (with it, on more than one thread, the gradient is written in the transposed
        order and gathered into W's, see mlp.hh's ``sk_gathers``), and with ``update`` its state:
        ``mom_w`` (aligned with ``data``) and ``mom_b`` (with ``bias``), SGD's velocities or
        Adam's first moments, and for Adam ``sq_w`` and ``sq_b``, the second moments.
    acts : list of ndarray
        The input of each layer: ``x_ib``, then the hidden activations of :func:`forward`.
    derivs : list of ndarray
        The hidden layers' activation derivatives of :func:`forward`.
    dzs : list of ndarray
        ``(n_out, n_batch)`` per layer: the last one holds the gradient of the loss w.r.t. the
        logits (read); the others are written (gradient w.r.t. each hidden pre-activation).
    grads, gbiases : list of ndarray
        Weight gradient (``nnz``, W's CSR order) and bias gradient (``n_out``) per layer.
        Written.
    update : tuple, optional
        An optimizer's ``backend_rule`` (:mod:`sparsekit.training.optim`) to apply to every
        layer afterwards: ``("sgd", lr, momentum, weight_decay, coupled, nesterov)``
        (:class:`~sparsekit.training.optim.MomentumSGD`) or ``("adam", decoupled, *constants)``
        (:class:`~sparsekit.training.optim.Adam`, ``AdamW``; the constants of
        ``Adam._constants``).
    """
    dt, it = _types(layers)
    cdef int n = len(layers), i, nt = check_threads(num_threads)
    if len(acts) != n or len(derivs) != n - 1 or len(dzs) != n or len(grads) != n \
            or len(gbiases) != n:
        raise ValueError("acts, dzs, grads and gbiases need one array per layer, derivs one "
                         "per hidden layer")
    if not isinstance(acts[0], np.ndarray) or acts[0].ndim != 2:
        raise ValueError("acts[0] must be a 2-D NumPy array (features x batch)")
    cdef Py_ssize_t B = acts[0].shape[1], n_in = acts[0].shape[0]
    cdef Py_ssize_t ld = row_stride(acts + dzs[:-1], B)
    if B == 0:
        raise ValueError("acts[0] holds an empty batch")
    passes = np.zeros(n * sizeof(SkLayerPass), dtype=np.uint8)
    ptrs = np.zeros(n, dtype=np.uintp)
    cdef SkLayerPass* L = <SkLayerPass*>cnp.PyArray_DATA(<cnp.ndarray>passes)
    cdef void** act_ptrs = <void**>cnp.PyArray_DATA(<cnp.ndarray>ptrs)
    cdef SkUpdate rule
    cdef SkUpdate* rule_ptr = fill_update(&rule, update, "update")
    for i in range(n):
        _fill_common(&L[i], i, layers[i], dt, it, n_in, update is not None)
        act_ptrs[i] = _ptr("acts[{}]", i, acts[i], dt, n_in, B, False, ld)
        n_in = L[i].n_out
    top = _with_stride(dzs[n - 1], ld, B)  # the loss gradient, as the rows above
    g_lins = _fill_backward(L, layers, derivs, dzs[:n - 1] + [top], grads, gbiases, update, dt,
                            it, acts[0].shape[0], B, ld, True, nt)
    cdef int is_double = dt == np.float64, is_int64 = it == np.int64
    with nogil:
        sk_mlp_backward(L, n, act_ptrs, B, ld, rule_ptr, is_double, is_int64, nt)


cdef list _fill_backward(SkLayerPass* L, list layers, list derivs, list dzs, list grads,
                         list gbiases, update, dt, it, Py_ssize_t n_in, Py_ssize_t B,
                         Py_ssize_t ld, bint top_dz, int nt):
    """The backward's fields of every layer (:func:`backward`'s arguments; ``_fill_common``
    done), checked; the top layer's dz only if ``top_dz`` (else the loss sets it).  Returns the
    scratch arrays the pass needs, to be kept alive until it ends."""
    cdef int n = len(layers), i
    g_lins = []
    for i in range(n):
        layer = layers[i]
        L[i].t_indptr = _ptr("layers[{}]['t_indptr']", i, layer["t_indptr"], it, n_in + 1, -1)
        L[i].t_rows = _ptr("layers[{}]['t_rows']", i, layer["t_rows"], it, L[i].nnz, -1)
        L[i].t_perm = _ptr("layers[{}]['t_perm']", i, layer["t_perm"], it, L[i].nnz, -1)
        if layer["t_indptr"][0] != 0 or layer["t_indptr"][n_in] != L[i].nnz:
            raise ValueError(f"layers[{i}]['t_indptr'] must start at 0 and end at nnz")
        t_inv = layer.get("t_inv") if nt > 1 else None
        if t_inv is not None:
            L[i].t_inv = _ptr("layers[{}]['t_inv']", i, t_inv, it, L[i].nnz, -1)
        if i < n - 1 or top_dz:
            L[i].dz = _ptr("dzs[{}]", i, dzs[i], dt, L[i].n_out, B, i < n - 1, ld)
        L[i].grad = _ptr("grads[{}]", i, grads[i], dt, L[i].nnz, -1, True)
        L[i].gbias = _ptr("gbiases[{}]", i, gbiases[i], dt, L[i].n_out, -1, True)
        if i < n - 1:
            L[i].deriv = _ptr("derivs[{}]", i, derivs[i], dt, L[i].n_out, B, False, ld)
        if update is not None:
            L[i].mom_w = _ptr("layers[{}]['mom_w']", i, layer["mom_w"], dt, L[i].nnz, -1, True)
            L[i].mom_b = _ptr("layers[{}]['mom_b']", i, layer["mom_b"], dt, L[i].n_out, -1, True)
        if update is not None and update[0] == "adam":
            L[i].sq_w = _ptr("layers[{}]['sq_w']", i, layer["sq_w"], dt, L[i].nnz, -1, True)
            L[i].sq_b = _ptr("layers[{}]['sq_b']", i, layer["sq_b"], dt, L[i].n_out, -1, True)
        L[i].tv_b, L[i].pf_b = walk_plan(L[i].n_out, n_in, L[i].nnz, B, dt.itemsize, "backward")
        if L[i].tv_b or L[i].t_inv != NULL:
            g_lin = np.empty(L[i].nnz, dtype=dt)
            g_lins.append(g_lin)
            L[i].g_lin = cnp.PyArray_DATA(<cnp.ndarray>g_lin)
        else:
            L[i].g_lin = L[i].grad
        n_in = L[i].n_out
    return g_lins


def step(list layers, x_ib, list outs, list derivs, slopes, seeds, double rate, gather, loss,
         list dzs, list grads, list gbiases, update=None, int num_threads=0, labels=None):
    """A training step in one team: :func:`forward` (filling ``x_ib`` first when ``gather`` is
    given), then the loss on the calling thread, then :func:`backward`.

    One team instead of two, so the other threads are woken once per step.  ``loss`` is called
    with no argument, holding the GIL, once every layer's output is written; it returns the
    gradient of the loss with respect to the logits (``outs[-1]``'s shape, C-contiguous, the
    value dtype), which the backward reads as the top layer's dz, or None to end the step
    after the forward.  ``dzs`` holds the hidden layers' dz arrays (one fewer than
    ``layers``); the other arguments are :func:`forward`'s and :func:`backward`'s.  Returns
    what ``loss`` returned; an exception it raised is raised here once the team has ended.

    ``labels`` (int64, one per sample, each a class of the logits; at least 2 samples): the
    loss is instead the mean softmax cross-entropy against them, computed by the calling
    thread in C without the GIL (mlp.hh's sk_softmax_loss; ``loss`` is not called), and the
    step returns ``(value, probs, dlogits)`` with the bits of
    :func:`sparsekit.nn.activations.softmax_cross_entropy` (a 35-50 us call back into Python
    after the passes, whose data evict the interpreter's, on the default network).
    """
    dt, it = _types(layers)
    cdef int n = len(layers), i, nt = check_threads(num_threads)
    if n > MAX_STEP_LAYERS:
        raise ValueError(f"a step in one team takes at most {MAX_STEP_LAYERS} layers, got {n}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    if not isinstance(x_ib, np.ndarray) or x_ib.ndim != 2 or x_ib.shape[1] == 0:
        raise ValueError("x_ib must be a 2-D NumPy array (features x batch) of a non-empty batch")
    if len(dzs) != n - 1 or len(grads) != n or len(gbiases) != n:
        raise ValueError("dzs needs one array per hidden layer, grads and gbiases one per layer")
    cdef Py_ssize_t B = x_ib.shape[1], n_in = x_ib.shape[0], ld = row_stride([x_ib, *outs], B)
    cdef void* x = _ptr("x_ib", 0, x_ib, dt, n_in, B, gather is not None, ld)
    cdef SkGather g
    cdef SkGather* g_ptr = _gather(&g, gather, dt, n_in, B)
    passes = np.zeros(n * sizeof(SkLayerPass), dtype=np.uint8)
    ptrs = np.zeros(n, dtype=np.uintp)
    cdef SkLayerPass* L = <SkLayerPass*>cnp.PyArray_DATA(<cnp.ndarray>passes)
    cdef void** act_ptrs = <void**>cnp.PyArray_DATA(<cnp.ndarray>ptrs)
    cdef SkUpdate rule
    cdef SkUpdate* rule_ptr = fill_update(&rule, update, "update")
    _fill_forward(L, layers, outs, derivs, slopes, seeds, dt, it, n_in, B, ld,
                  update is not None)
    g_lins = _fill_backward(L, layers, derivs, dzs + [None], grads, gbiases, update, dt, it, n_in,
                            B, ld, False, nt)
    act_ptrs[0] = x
    for i in range(1, n):
        act_ptrs[i] = L[i - 1].out
    cdef int is_double = dt == np.float64, is_int64 = it == np.int64
    cdef _Loss call = None
    cdef SkSoftmaxLoss ce
    cdef void* ctx
    cdef SkLossFn loss_fn
    if labels is None:
        call = _Loss()
        call.fn, call.dt, call.top, call.B, call.ld = loss, dt, L + (n - 1), B, ld
        ctx, loss_fn = <void*>call, _call_loss
    else:
        arrays = _softmax_arrays(&ce, labels, L[n - 1].n_out, B, ld, dt)
        ce.top = L + (n - 1)
        ctx, loss_fn = <void*>&ce, sk_softmax_loss
    with nogil:
        sk_mlp_step(L, n, x, B, ld, rate, g_ptr, act_ptrs, rule_ptr, loss_fn, ctx, is_double,
                    is_int64, nt)
    if labels is not None:
        probs, grad = arrays[:2]
        return (dt.type(ce.value), probs,
                grad if ld == B else np.ascontiguousarray(grad))
    if call.error is not None:
        raise call.error
    return call.dlogits


cdef tuple _softmax_arrays(SkSoftmaxLoss* ce, labels, Py_ssize_t C, Py_ssize_t B,
                           Py_ssize_t ld, dtype):
    """Check ``labels`` and fill ``ce`` (but its top layer) for :func:`step`'s own loss;
    returns the arrays it points to (probs, the gradient as a ``[:, :B]`` view of rows ``ld``
    apart, the scratch, the labels), which must outlive the team."""
    if not has_own_loss(dtype):
        raise ValueError("labels: this NumPy's exp and log loops do not give its bits")
    if (not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (B,)
            or B < 2):
        raise ValueError(f"labels must be an int64 array of shape ({B},), of 2 samples or more")
    lab_a = np.ascontiguousarray(labels)
    cdef const int64_t[::1] lab = lab_a
    if not all_below(lab, C):
        raise ValueError(f"labels must lie in [0, {C})")
    probs, grad = np.empty((C, B), dtype), np.empty((C, ld), dtype)[:, :B]
    scratch = np.empty(2 * B, dtype)  # the class sums (then the logs), the picked probabilities
    cdef char* s = <char*>cnp.PyArray_DATA(<cnp.ndarray>scratch)
    ce.labels, ce.scratch, ce.picked = &lab[0], s, s + B * cnp.PyArray_ITEMSIZE(scratch)
    ce.probs, ce.grad = cnp.PyArray_DATA(<cnp.ndarray>probs), cnp.PyArray_DATA(<cnp.ndarray>grad)
    cdef const UnaryLoop* ex = &EXP_F64 if dtype == np.float64 else &EXP_F32
    cdef const UnaryLoop* lg = &LOG_F64 if dtype == np.float64 else &LOG_F32
    ce.B, ce.ld, ce.is_double = B, ld, dtype == np.float64
    ce.exp_loop, ce.exp_data, ce.log_loop, ce.log_data = ex.fn, ex.data, lg.fn, lg.data
    return probs, grad, scratch, lab_a


cdef class _Loss:
    """What :func:`step`'s team calls between its passes (mlp.hh's SkLossFn)."""
    cdef object fn, dlogits, rows, error, dt
    cdef SkLayerPass* top
    cdef Py_ssize_t B, ld


cdef int _call_loss(void* ctx) noexcept nogil:
    with gil:
        return _run_loss(<_Loss>ctx)


cdef int _run_loss(_Loss call) noexcept:
    """``call.fn()``; 1 with the top layer's dz set to its result, 0 to stop (None returned,
    or an exception, kept for :func:`step` to raise: the team must end first)."""
    try:
        dlogits = call.fn()
        if dlogits is None:
            return 0
        call.rows = _with_stride(dlogits, call.ld, call.B)
        call.top.dz = _ptr("the loss gradient", 0, call.rows, call.dt, call.top.n_out, call.B,
                           False, call.ld)
        call.dlogits = dlogits
        return 1
    except BaseException as exc:
        call.error = exc
        return 0


def _with_stride(a, Py_ssize_t ld, Py_ssize_t B):
    """``a`` (the loss gradient: a C-contiguous batch array, as the loss returns it) copied
    into rows ``ld`` values apart when the pass's other arrays have them (a few rows: the
    logits'); anything else as it is, for ``_ptr`` to check."""
    if (ld == B or not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] < 2
            or a.shape[1] != B or not a.flags.c_contiguous):
        return a
    rows = np.empty((a.shape[0], ld), dtype=a.dtype)[:, :B]
    rows[...] = a
    return rows


def row_sums(const floating[:, ::1] z_ob):
    """``z_ob.sum(axis=1)`` with NumPy's summation order (pairwise), as the fused backward
    computes bias gradients (and the step's own loss its mean: a 1-D sum has the same order)."""
    out = np.empty(z_ob.shape[0], dtype=np.asarray(z_ob).dtype)
    cdef floating[::1] o = out
    cdef Py_ssize_t r
    for r in range(z_ob.shape[0]):
        o[r] = sk_row_sum(&z_ob[r, 0], z_ob.shape[1]) if z_ob.shape[1] else 0
    return out
