# NumPy's own inner loop of a unary ufunc, for kernels that must give NumPy's bits (the
# softmax's exp, the cross-entropy's log) without calling NumPy: a call of np.exp costs
# microseconds of Python and needs the GIL, which the training step's team does not hold
# between its passes.
#
# The loop is the first of the ufunc's loops for the type that reproduces the ufunc itself bit
# for bit on a probe of values covering the whole range, contiguous and in place as the
# kernels call it; where none does (a NumPy that dispatches otherwise), the kernels keep
# calling the ufunc.
cimport numpy as cnp
from cpython.object cimport PyObject
from numpy cimport PyUFuncGenericFunction, npy_intp

import numpy as np

cnp.import_array()
cnp.import_ufunc()

ctypedef void (*unary_loop_fn)(char** args, const npy_intp* dims, const npy_intp* steps,
                               void* data) noexcept nogil

cdef extern from "ufunc.hh":
    # the ufunc's own fields, on NumPy before and after 2.5 (whose Cython declarations no
    # longer give `types`)
    ctypedef struct sk_ufunc_fields:
        int nin, nout, ntypes
        PyUFuncGenericFunction* functions
        void** data
        const char* types
    sk_ufunc_fields* sk_ufunc(PyObject* ufunc) noexcept


cdef struct UnaryLoop:
    unary_loop_fn fn  # NULL: not available, use the ufunc itself
    void* data


cdef inline void call_unary_loop(const UnaryLoop* loop, void* inout, npy_intp n,
                                 npy_intp itemsize) noexcept nogil:
    """``loop`` over n contiguous values in place (the caller checked loop.fn)."""
    cdef char* args[2]
    cdef npy_intp steps[2]
    args[0] = <char*>inout
    args[1] = <char*>inout
    steps[0] = itemsize
    steps[1] = itemsize
    loop.fn(args, &n, steps, loop.data)


cdef inline unary_probe():
    """Values on which a loop must give its ufunc's bits (for exp and log: every magnitude
    from underflow to overflow, dense around the softmax's (-inf, 0] and the probabilities'
    (0, 1], negative ones, the specials) in an odd number, so that a vector loop's tail is part
    of the check too."""
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 5e-324, -5e-324, 1.0]
    dense = np.linspace(-120.0, 100.0, 8_001)
    small = np.logspace(-45.0, 38.0, 4_001)
    wide = np.random.default_rng(0).uniform(-800.0, 800.0, 4_000)
    return np.concatenate([specials, dense, small, wide])


cdef inline UnaryLoop unary_loop(ufunc, dtype, probe):
    """The loop of ``ufunc`` for ``dtype -> dtype`` if it reproduces ``ufunc(probe)`` exactly
    (``probe`` cast to ``dtype`` first; casting and ``ufunc`` run with NumPy's warnings off).
    Anything else (not a NumPy ufunc, as when a library wraps np.exp) finds no loop."""
    cdef UnaryLoop loop
    loop.fn = NULL
    loop.data = NULL
    if type(ufunc) is not np.ufunc:
        return loop
    cdef sk_ufunc_fields* uf = sk_ufunc(<PyObject*>ufunc)
    cdef int code = np.dtype(dtype).num  # types holds type numbers, not characters
    cdef int i
    if uf.nin != 1 or uf.nout != 1 or uf.functions == NULL or uf.types == NULL:
        return loop
    with np.errstate(all="ignore"):
        x = np.array(probe, dtype=dtype)
        want = ufunc(x).view(np.uint8)
    for i in range(uf.ntypes):
        if (uf.types[2 * i] != code or uf.types[2 * i + 1] != code
                or uf.functions[i] == NULL):  # a loop NumPy registers elsewhere
            continue
        loop.fn = <unary_loop_fn>uf.functions[i]
        loop.data = uf.data[i]
        got = x.copy()  # contiguous, computed in place as the kernels call it
        call_unary_loop(&loop, cnp.PyArray_DATA(got), got.shape[0], got.itemsize)
        if np.array_equal(got.view(np.uint8), want):
            return loop
    loop.fn = NULL
    loop.data = NULL
    return loop
