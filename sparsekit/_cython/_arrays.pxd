# The checked data pointer of a NumPy array, for the fused passes (mlp.pyx), which hand raw
# pointers to C++: every array of every step goes through it, so it uses NumPy's C API.
cimport numpy as cnp

import numpy as np

cnp.import_array()


cdef inline void* array_ptr(str what, int i, a, dtype, Py_ssize_t d0, Py_ssize_t d1=-1,
                            bint written=False, Py_ssize_t ld=-1) except NULL:
    """The data pointer of ``a`` after checking it is a C-contiguous, native-order ``dtype``
    array of shape ``(d0,)`` or ``(d0, d1)``, writeable if the pass writes to it; otherwise a
    one-line ValueError naming it (``what.format(i)``).  With ``ld`` (a batch array, d1 the
    batch) its rows must be ``ld`` values apart instead, each contiguous: a view ``[:, :d1]`` of
    rows padded to whole vectors (``mlp.batch_stride``).  The checks use NumPy's C API: they
    run for every array of every step."""
    cdef cnp.ndarray arr
    cdef int ndim = 1 if d1 < 0 else 2
    cdef Py_ssize_t item
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{what.format(i)} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    cdef bint bad = (cnp.PyArray_TYPE(arr) != (<cnp.dtype>dtype).type_num
                     or not cnp.PyArray_ISNOTSWAPPED(arr) or cnp.PyArray_NDIM(arr) != ndim
                     or cnp.PyArray_DIMS(arr)[0] != d0
                     or (ndim == 2 and cnp.PyArray_DIMS(arr)[1] != d1))
    if not bad and (ld < 0 or ndim == 1):
        bad = not cnp.PyArray_IS_C_CONTIGUOUS(arr)
    elif not bad:  # a row stride of 0 or 1 row, or 1 column, is never used
        item = cnp.PyArray_ITEMSIZE(arr)
        bad = ((d0 > 1 and cnp.PyArray_STRIDES(arr)[0] != ld * item)
               or (d1 > 1 and cnp.PyArray_STRIDES(arr)[1] != item))
    if bad:
        shape = (d0, d1)[:ndim]
        rows = "" if ld < 0 or ld == d1 else f" (rows {ld} values apart)"
        raise ValueError(f"{what.format(i)} must be a C-contiguous {np.dtype(dtype).name} array "
                         f"of shape {shape}{rows}, got {a.dtype.name} {a.shape}")
    if written and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what.format(i)} is read-only")
    if cnp.PyArray_SIZE(arr) == 0:  # never dereferenced; any non-NULL address will do
        return <void*>1
    return cnp.PyArray_DATA(arr)
