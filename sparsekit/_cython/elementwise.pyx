"""Fused elementwise kernels for hidden layers.

``bias_act_dropout`` adds the bias, applies a piecewise-linear activation (ReLU, leaky ReLU,
All-ReLU: ``x`` for x > 0, ``slope * x`` otherwise) and inverted dropout in one pass, and writes
the local derivative the backward pass multiplies by.  Dropout draws come from a counter-based
hash of (seed, element index), so they are identical for any thread count and need no state.
Beside it, the other per-step passes over a batch: ``softmax_cross_entropy``, ``transpose_into``
and ``indices_below`` (the range check of a batch's row indices); and ``apply_update``, an
optimizer's update of one parameter array when the step could not fuse it.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint64_t

import numpy as np

from ._bounds cimport all_below
from ._loops cimport UnaryLoop, unary_loop, unary_loop_fn, unary_probe
from ._types cimport floating
from ._update cimport SK_UPDATE_ADAM, SkUpdate, fill_update, sk_apply_update
from .._align import aligned_empty
from ._checks import check_threads

cdef extern from "batch.hh" nogil:
    # The fused forward's batch step (mlp.hh) transposes with it too.
    void sk_transpose_cols[T](const T* src, Py_ssize_t b, Py_ssize_t f, Py_ssize_t c0,
                              Py_ssize_t c1, T* out, Py_ssize_t ld)

cdef extern from "epilogue.hh" nogil:
    # The row epilogue the fused passes (mlp.hh) apply too: one implementation, same bits.
    void sk_act_row[T](const T* z, T b, T* a, T* d, Py_ssize_t n, T slope, T scale,
                       uint64_t threshold, uint64_t key)
    uint64_t sk_act_key(uint64_t seed, Py_ssize_t o, Py_ssize_t n_batch)
    void sk_softmax_ce[T](const T* z, Py_ssize_t ldz, const int64_t* labels, Py_ssize_t C,
                          Py_ssize_t B, T* s, T* probs, T* picked, T* grad, Py_ssize_t ldg,
                          unary_loop_fn exp_loop, void* exp_data)
    void sk_softmax_shift[T](const T* z, Py_ssize_t ldz, Py_ssize_t C, Py_ssize_t B, T* m,
                             T* out, Py_ssize_t ldo)
    void sk_softmax_finish[T](T* e, Py_ssize_t lde, const int64_t* labels, Py_ssize_t C,
                              Py_ssize_t B, T* s, T* probs, T* picked)

# NumPy's own exp loops, where they give np.exp's bits (_loops.pxd): the loss then needs no
# call of np.exp.
cdef UnaryLoop EXP_F32 = unary_loop(np.exp, np.float32, unary_probe())
cdef UnaryLoop EXP_F64 = unary_loop(np.exp, np.float64, unary_probe())

def bias_act_dropout(const floating[:, ::1] z_ob, const floating[::1] bias, double slope, double rate,
                     uint64_t seed, int num_threads=0):
    """Return ``(a_ob, d_ob)``: activations and d(a)/d(z), for z = z_ob + bias[:, None].

    Parameters
    ----------
    z_ob : ndarray of shape (n_out, n_batch)
        Pre-activations without bias, feature-major.  Not modified.
    bias : ndarray of shape (n_out,)
    slope : float
        Slope for non-positive inputs (0 for ReLU, +/-alpha for All-ReLU).
    rate : float
        Dropout probability in [0, 1); 0 disables dropout.
    seed : int
        Key of this draw (one per layer and step); the same key gives the same mask.
    """
    cdef Py_ssize_t n_out = z_ob.shape[0], n_batch = z_ob.shape[1], o
    if bias.shape[0] != n_out:
        raise ValueError(f"bias has {bias.shape[0]} entries, expected {n_out}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    cdef int nt = check_threads(num_threads)
    dtype = np.asarray(z_ob).dtype
    a_np = aligned_empty((n_out, n_batch), dtype)
    d_np = aligned_empty((n_out, n_batch), dtype)
    cdef floating[:, ::1] a = a_np
    cdef floating[:, ::1] d = d_np
    # Keep an element when its 24-bit uniform draw is >= rate * 2**24.
    cdef uint64_t threshold = <uint64_t>(rate * 16777216.0)
    cdef floating scale = <floating>(1.0 / (1.0 - rate))
    cdef floating s = <floating>slope
    if n_out == 0 or n_batch == 0:
        return a_np, d_np
    with nogil:
        for o in prange(n_out, schedule="static", num_threads=nt):
            sk_act_row(&z_ob[o, 0], bias[o], &a[o, 0], &d[o, 0], n_batch, s, scale, threshold,
                       sk_act_key(seed, o, n_batch))
    return a_np, d_np


def softmax_cross_entropy(const floating[:, ::1] logits_cb, labels_b):
    """``(probs_cb, dlogits_cb, picked_b)`` of the softmax cross-entropy of feature-major
    logits, with the bits of :func:`sparsekit.nn.activations.softmax_cross_entropy` (its
    exponential is NumPy's too), or None where that function must run instead: fewer than two
    samples (NumPy then sums the classes pairwise), or a label outside ``[0, n_classes)``
    (NumPy's indexing wraps negative ones or raises).  ``picked_b``: each sample's probability
    of its label; ``dlogits_cb`` is already divided by the batch size.
    """
    cdef Py_ssize_t C = logits_cb.shape[0], B = logits_cb.shape[1]
    labels = np.asarray(labels_b)
    if (B < 2 or C == 0 or labels.ndim != 1 or labels.shape[0] != B
            or labels.dtype.kind not in "iu"):
        return None
    cdef const int64_t[::1] lab = np.ascontiguousarray(labels, dtype=np.int64)
    if not all_below(lab, C):
        return None
    dtype = np.asarray(logits_cb).dtype
    probs_np = np.empty((C, B), dtype)
    grad_np = np.empty((C, B), dtype)
    picked_np = np.empty(B, dtype)
    scratch_np = np.empty(B, dtype)
    cdef floating[:, ::1] probs = probs_np
    cdef floating[:, ::1] grad = grad_np
    cdef floating[::1] picked = picked_np
    cdef floating[::1] scratch = scratch_np
    cdef const UnaryLoop* exp_loop = &EXP_F64 if floating is double else &EXP_F32
    if exp_loop.fn != NULL:
        with nogil:
            sk_softmax_ce(&logits_cb[0, 0], B, &lab[0], C, B, &scratch[0], &probs[0, 0],
                          &picked[0], &grad[0, 0], B, exp_loop.fn, exp_loop.data)
        return probs_np, grad_np, picked_np
    with nogil:  # the shifted logits go to grad, which NumPy exponentiates in place
        sk_softmax_shift(&logits_cb[0, 0], B, C, B, &scratch[0], &grad[0, 0], B)
    np.exp(grad_np, out=grad_np)
    with nogil:
        sk_softmax_finish(&grad[0, 0], B, &lab[0], C, B, &scratch[0], &probs[0, 0], &picked[0])
    return probs_np, grad_np, picked_np


def uses_exp_loop(dtype):
    """Whether :func:`softmax_cross_entropy` of ``dtype`` calls NumPy's exp loop itself (see
    _loops.pxd) rather than ``np.exp``."""
    dt = np.dtype(dtype)
    return (dt == np.float32 and EXP_F32.fn != NULL) or (dt == np.float64 and EXP_F64.fn != NULL)


def transpose_into(const floating[:, ::1] src, floating[:, ::1] out, int num_threads=0):
    """``out[...] = src.T`` in tiles of 16 x 64 (both tiles stay in L1; with AVX-512, float32
    blocks of 16 x 16 go through registers: batch.hh), the step that turns the gathered
    batch-major rows of a training batch into the feature-major batch.  NumPy's strided copy of
    ``src.T`` walks one of the two arrays a value per cache line."""
    cdef Py_ssize_t b = src.shape[0], f = src.shape[1], c0
    if out.shape[0] != f or out.shape[1] != b:
        raise ValueError(f"out must have shape ({f}, {b}), got ({out.shape[0]}, {out.shape[1]})")
    cdef int nt = check_threads(num_threads)
    if b == 0 or f == 0:
        return
    with nogil:
        for c0 in prange(0, f, 64, schedule="static", num_threads=nt):
            sk_transpose_cols(&src[0, 0], b, f, c0, min(c0 + 64, f), &out[0, 0], b)


def indices_below(const int64_t[::1] a, int64_t n):
    """Whether every entry of ``a`` lies in ``[0, n)`` (one typed pass)."""
    return all_below(a, n)


def apply_update(tuple rule not None, floating[::1] p, const floating[::1] g, list slots,
                 int num_threads=0):
    """An optimizer's update of ``p`` in place, with its state arrays ``slots`` (momentum SGD:
    ``[velocity]``; Adam/AdamW: ``[exp_avg, exp_avg_sq]``), from ``rule``, the optimizer's
    ``backend_rule``: the update the fused backward applies (epilogue.hh's sk_apply_update),
    hence the bits of ``Optimizer.update``, in one pass instead of NumPy's five (SGD) or
    fourteen (Adam).  Every array has ``p``'s length and dtype.
    """
    cdef SkUpdate s
    fill_update(&s, rule, "rule")
    cdef int adam = s.kind == SK_UPDATE_ADAM, nt = check_threads(num_threads)
    if len(slots) != 1 + adam:
        raise ValueError(f"a {rule[0]!r} update needs {1 + adam} state arrays, got {len(slots)}")
    cdef floating[::1] m = slots[0]
    cdef floating[::1] v = slots[1] if adam else slots[0]
    cdef Py_ssize_t n = p.shape[0], k, i0, chunk = 1 << 14
    if g.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"grad and state arrays must have the parameter's length {n}")
    if n == 0:
        return
    with nogil:
        for k in prange((n + chunk - 1) // chunk, schedule="static", num_threads=nt):
            i0 = k * chunk
            sk_apply_update(&p[i0], &g[i0], &m[i0], &v[i0], min(chunk, n - i0), s)
