"""Bad input gets a clear ValueError/TypeError naming the argument, never a crash.

The last part calls the raw Cython ``def`` wrappers directly with mismatched shapes: they must
check before entering ``nogil`` code, where a wrong size would read or write out of bounds.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from reference import to_backend

from sparsekit._cython import elementwise, rebuild, sampling, sddmm, select, spmm
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.csr import CSR

I32, I64, F32, F64 = np.int32, np.int64, np.float32, np.float64


class ForeignArray:
    """Quacks like an array of another device (a CuPy array on a CPU backend)."""

    __module__ = "cupy._core.core"

    def __init__(self, arr):
        self._arr = np.asarray(arr)
        self.shape, self.dtype, self.ndim = self._arr.shape, self._arr.dtype, self._arr.ndim


def foreign(be, arr):
    """``arr`` on a device other than ``be``'s: host NumPy for a GPU backend."""
    return ForeignArray(arr) if be.xp is np else np.asarray(arr)


def expect_error(exc, message: str, thunk, label: str = "") -> None:
    """``thunk()`` raises ``exc`` with a message matching ``message`` (any other error escapes)."""
    try:
        thunk()
    except exc as err:
        assert re.search(message, str(err)), f"{label}: {str(err)!r} does not match {message!r}"
        return
    pytest.fail(f"{label}: no {exc.__name__} raised")


# Row o of the 6 x 5 test layer stores these columns: no row empty, none full.
PATTERN = [[0, 2], [1], [0, 3, 4], [2], [1, 4], [0, 1, 2]]


def fixed_layer(dtype=F64) -> sp.csr_matrix:
    indptr = np.cumsum([0] + [len(r) for r in PATTERN])
    indices = np.concatenate(PATTERN)
    data = np.arange(1, indices.shape[0] + 1, dtype=dtype) / 4
    return sp.csr_matrix((data, indices, indptr), shape=(6, 5))


# --- the CSR container ------------------------------------------------------------------------
def csr_parts():
    """A valid (3 x 4) matrix: row 0 -> cols 0, 2; row 1 empty; row 2 -> col 1."""
    return dict(indptr=np.array([0, 2, 2, 3], I32), indices=np.array([0, 2, 1], I32),
                data=np.array([1.0, 2.0, 3.0], F32), shape=(3, 4))


def noncontig(a):
    out = np.repeat(a, 2)[::2]
    assert not out.flags.c_contiguous and np.array_equal(out, a)
    return out


CSR_CASES = {
    "data dtype int": (dict(data=np.array([1, 2, 3])), "data must be float32 or float64"),
    "data dtype float16": (dict(data=np.array([1, 2, 3], np.float16)), "data must be float"),
    "indices dtype float": (dict(indices=np.array([0.0, 2, 1])), "indptr and indices"),
    "indices uint32": (dict(indices=np.array([0, 2, 1], np.uint32)), "indptr and indices"),
    "index dtypes differ": (dict(indptr=np.array([0, 2, 2, 3], I64)), "indptr and indices"),
    "indices 2-D": (dict(indices=np.array([[0, 2, 1]], I32)), "indices must be 1-D"),
    "data non-contiguous": (dict(data=noncontig(np.array([1.0, 2, 3], F32))),
                            "data must be contiguous"),
    "indices non-contiguous": (dict(indices=noncontig(np.array([0, 2, 1], I32))),
                               "indices must be contiguous"),
    "indptr too short": (dict(indptr=np.array([0, 2, 3], I32)), "indptr has 3 entries"),
    "indptr start": (dict(indptr=np.array([1, 2, 2, 3], I32)), "indptr must start at 0"),
    "indptr end": (dict(indptr=np.array([0, 2, 2, 2], I32)), "indptr must start at 0 and end"),
    "indptr decreasing": (dict(indptr=np.array([0, 2, 1, 3], I32)), "indptr must be non-decr"),
    "data too short": (dict(data=np.array([1.0, 2], F32)), "data has 2 values"),
    "unsorted indices": (dict(indices=np.array([2, 0, 1], I32)), "sorted and unique"),
    "duplicate indices": (dict(indices=np.array([2, 2, 1], I32)), "sorted and unique"),
    "index past n_in": (dict(indices=np.array([0, 4, 1], I32)), r"indices must lie in \[0, 4\)"),
    "negative index": (dict(indices=np.array([-1, 2, 1], I32)), "indices must lie in"),
    "NaN in data": (dict(data=np.array([1.0, np.nan, 3], F32)), "data contains NaN"),
    "inf in data": (dict(data=np.array([1.0, 2, -np.inf], F64)), "data contains NaN or inf"),
    "negative shape": (dict(shape=(-3, 4)), "shape must be non-negative"),
    "index on another device": (dict(indices=ForeignArray([0, 2, 1])),
                                "indices lives on another device"),
}


@pytest.mark.parametrize("case", list(CSR_CASES))
def test_csr_refuses(case):
    change, message = CSR_CASES[case]
    parts = {**csr_parts(), **change}
    with pytest.raises(ValueError, match=message):
        CSR(**parts)


def test_csr_refuses_int32_only_when_too_small():
    with pytest.raises(ValueError, match="needs int64 indices"):
        CSR(np.zeros(2, I32), np.zeros(0, I32), np.zeros(0, F32), (1, 2**31))
    assert CSR(np.zeros(2, I64), np.zeros(0, I64), np.zeros(0, F32), (1, 2**31)).nnz == 0
    assert CSR(np.zeros(2, I32), np.zeros(0, I32), np.zeros(0, F32), (1, 2**31 - 1)).nnz == 0


def test_from_scipy_refuses_dense():
    with pytest.raises(ValueError, match="scipy.sparse"):
        CSR.from_scipy(np.eye(3))


# --- backend methods --------------------------------------------------------------------------
def layer(be, dtype=F64):
    w_sp = fixed_layer(dtype)
    return to_backend(be, w_sp), w_sp


def product_cases(be):
    """(label, thunk, message) for the product methods; W is 6 x 5 float64."""
    w, _ = layer(be)
    a = be.asarray
    x, dy = a(np.ones((5, 4))), a(np.ones((6, 4)))
    rows, cols = a(np.array([0, 5])), a(np.array([4, 0]))
    return [
        ("x float32 for float64 W", lambda: be.matmul(a(np.ones((5, 4), F32)), w), "x_ib"),
        ("x int", lambda: be.matmul(a(np.ones((5, 4), I64)), w), "x_ib"),
        ("x wrong rows", lambda: be.matmul(a(np.ones((4, 4))), w), "x_ib has 4 rows"),
        ("x 1-D", lambda: be.matmul(a(np.ones(5)), w), "x_ib must be 2-D"),
        ("x 3-D", lambda: be.matmul(a(np.ones((5, 4, 1))), w), "x_ib must be 2-D"),
        ("dy wrong rows", lambda: be.matmul_t(a(np.ones((5, 4))), w), "dy_ob has 5 rows"),
        ("dy dtype", lambda: be.matmul_t(a(np.ones((6, 4), F32)), w), "dy_ob"),
        ("grad batch", lambda: be.weight_grad(x, a(np.ones((6, 3))), w), "batch"),
        ("grad x rows", lambda: be.weight_grad(a(np.ones((6, 4))), dy, w), "x_ib has 6 rows"),
        ("backward batch", lambda: be.backward(x, a(np.ones((6, 3))), w), "batch"),
        ("backward dy rows", lambda: be.backward(x, a(np.ones((7, 4))), w), "dy_ob has 7 rows"),
        ("sampled length", lambda: be.sampled_grad(x, dy, rows, a(np.array([1]))), "rows"),
        ("sampled row range", lambda: be.sampled_grad(x, dy, a(np.array([0, 6])), cols),
         r"rows must lie in \[0, 6\)"),
        ("sampled negative col", lambda: be.sampled_grad(x, dy, rows, a(np.array([-1, 0]))),
         "cols must lie"),
        ("sampled col range", lambda: be.sampled_grad(x, dy, rows, a(np.array([0, 5]))),
         r"cols must lie in \[0, 5\)"),
        ("sampled float rows", lambda: be.sampled_grad(x, dy, a(np.array([0.0, 1.5])), cols),
         "rows must be an integer"),
        ("sampled int x", lambda: be.sampled_grad(a(np.ones((5, 4), I64)), dy, rows, cols),
         "x_ib"),
        ("sampled dy dtype", lambda: be.sampled_grad(x, a(np.ones((6, 4), F32)), rows, cols),
         "dy_ob"),
        ("sampled batch", lambda: be.sampled_grad(x, a(np.ones((6, 2))), rows, cols), "dy_ob"),
    ]


def test_products_refuse_bad_input(backend):
    for label, thunk, message in product_cases(backend):
        expect_error(ValueError, message, thunk, label)


def test_products_refuse_arrays_of_another_device(backend):
    be = backend
    w, _ = layer(be)
    x, dy = np.ones((5, 4)), np.ones((6, 4))
    checks = [
        (lambda: be.matmul(foreign(be, x), w), "x_ib"),
        (lambda: be.matmul_t(foreign(be, dy), w), "dy_ob"),
        (lambda: be.weight_grad(be.asarray(x), foreign(be, dy), w), "dy_ob"),
        (lambda: be.backward(foreign(be, x), be.asarray(dy), w), "x_ib"),
        (lambda: be.sampled_grad(be.asarray(x), be.asarray(dy), foreign(be, [0]),
                                 be.asarray(np.array([0]))), "rows"),
    ]
    for thunk, name in checks:
        expect_error(TypeError, f"{name} is a .* array but the {be.name} backend", thunk, name)


def test_select_refuses_bad_input(topo_backend):
    be = topo_backend
    v = be.asarray(np.array([3.0, 1.0, 2.0]))
    for k in (-1, 4):
        with pytest.raises(ValueError, match=rf"k must lie in \[0, 3\], got {k}"):
            be.select(v, k)
    with pytest.raises(ValueError, match="k must be a whole number"):
        be.select(v, 1.5)
    with pytest.raises(TypeError, match="k must be an integer"):
        be.select(v, None)
    with pytest.raises(ValueError, match="values contains NaN"):
        be.select(be.asarray(np.array([1.0, np.nan, 2.0])), 1)
    with pytest.raises(ValueError, match="values contains NaN or inf"):
        be.select(be.asarray(np.array([1.0, np.inf, 2.0])), 1, largest=False)
    with pytest.raises(ValueError, match="values must be 1-D"):
        be.select(be.asarray(np.ones((2, 2))), 1)
    with pytest.raises(TypeError, match="values"):
        be.select(foreign(be, [1.0, 2.0]), 1)


def test_sample_absent_refuses_impossible_requests(topo_backend):
    be = topo_backend
    w, w_sp = layer(be)
    free = 30 - w.nnz
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=f"m={free + 1} .*only {free} are free"):
        be.sample_absent(w, free + 1, rng)
    with pytest.raises(ValueError, match="m must be >= 0"):
        be.sample_absent(w, -1, rng)
    with pytest.raises(ValueError, match="m must be a whole number"):
        be.sample_absent(w, 2.5, rng)
    with pytest.raises(TypeError, match="m must be an integer"):
        be.sample_absent(w, None, rng)
    bad_weights = [
        (dict(row_weights=np.ones(5)), "row_weights must have length 6"),
        (dict(col_weights=np.ones(6)), "col_weights must have length 5"),
        (dict(row_weights=-np.ones(6)), "row_weights must be finite, non-negative"),
        (dict(col_weights=np.zeros(5)), "col_weights must be .*not all zero"),
        (dict(col_weights=np.array([1.0, np.nan, 1, 1, 1])), "col_weights must be finite"),
    ]
    for kwargs, message in bad_weights:
        expect_error(ValueError, message, lambda kw=kwargs: be.sample_absent(w, 1, rng, **kw),
                     str(kwargs))
    # Only row 0 may be drawn; it has (5 - its nnz) free positions.
    row_w = np.zeros(6)
    row_w[0] = 1
    room = 5 - int(w_sp.indptr[1])
    with pytest.raises(ValueError, match=f"only {room} free positions have non-zero"):
        be.sample_absent(w, room + 1, rng, row_weights=row_w)


def rebuild_cases(be):
    w, w_sp = layer(be)
    a = be.asarray
    keep = a(np.ones(w.nnz, bool))
    r_free, c_free = np.nonzero(w_sp.toarray() == 0)
    r, c, v = a(r_free[:2]), a(c_free[:2]), a(np.array([1.0, 2.0]))
    first_row, first_col = 0, int(w_sp.indices[0])  # a stored position of W
    return w, [
        ("keep length", lambda: be.rebuild(w, a(np.ones(w.nnz - 1, bool)), r, c, v),
         ValueError, "keep_mask must be a bool array of length nnz"),
        ("keep dtype", lambda: be.rebuild(w, a(np.ones(w.nnz, np.uint8)), r, c, v),
         ValueError, "keep_mask must be a bool"),
        ("new lengths", lambda: be.rebuild(w, keep, r, a(c_free[:1]), v),
         ValueError, "new_rows, new_cols and new_vals must have the same length"),
        ("new vals length", lambda: be.rebuild(w, keep, r, c, a(np.ones(3))),
         ValueError, "new_vals"),
        ("new row range", lambda: be.rebuild(w, keep, a(np.array([0, 6])), c, v),
         ValueError, r"new_rows must lie in \[0, 6\)"),
        ("new col negative", lambda: be.rebuild(w, keep, r, a(np.array([0, -1])), v),
         ValueError, "new_cols must lie"),
        ("new float rows", lambda: be.rebuild(w, keep, a(r_free[:2].astype(float)), c, v),
         ValueError, "new_rows must be an integer array"),
        ("new NaN", lambda: be.rebuild(w, keep, r, c, a(np.array([1.0, np.nan]))),
         ValueError, "new_vals contains NaN"),
        ("duplicate new", lambda: be.rebuild(w, keep, a(r_free[[0, 0]]), a(c_free[[0, 0]]), v),
         ValueError, "already present or repeats"),
        ("collides with kept", lambda: be.rebuild(
            w, keep, a(np.array([first_row])), a(np.array([first_col])), a(np.ones(1))),
         ValueError, "already present or repeats"),
        ("state length", lambda: be.rebuild(w, keep, r, c, v, a(np.ones(w.nnz + 1))),
         ValueError, r"states\[0\] has shape"),
        ("second state length", lambda: be.rebuild(w, keep, r, c, v, a(np.ones(w.nnz)),
                                                   a(np.ones(2))),
         ValueError, r"states\[1\] has shape"),
        ("foreign new_vals", lambda: be.rebuild(w, keep, r, c, foreign(be, [1.0, 2.0])),
         TypeError, "new_vals"),
        ("foreign state", lambda: be.rebuild(w, keep, r, c, v, foreign(be, np.ones(w.nnz))),
         TypeError, r"states\[0\]"),
    ]


def test_rebuild_refuses_bad_input(topo_backend):
    be = topo_backend
    w, cases = rebuild_cases(be)
    before = (w.indptr.copy(), w.indices.copy(), w.data.copy())
    for label, thunk, exc, message in cases:
        expect_error(exc, message, thunk, label)
    # Refused calls leave W untouched.
    for old, now in zip(before, (w.indptr, w.indices, w.data), strict=True):
        assert be.xp.array_equal(old, now)


def test_rebuild_reinserting_a_dropped_position_is_fine(topo_backend):
    be = topo_backend
    w, w_sp = layer(be)
    keep = np.ones(w.nnz, bool)
    keep[0] = False
    r, c = be.asarray(np.array([0])), be.asarray(w_sp.indices[:1].astype(np.int64))
    new_w, _ = be.rebuild(w, be.asarray(keep), r, c, be.asarray(np.array([9.0])))
    assert new_w.nnz == w.nnz and float(new_w.data[0]) == 9.0


def test_bias_act_dropout_refuses_bad_input(topo_backend):
    be = topo_backend
    z, bias = be.asarray(np.ones((4, 3))), be.asarray(np.zeros(4))
    for rate in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout rate must lie in \[0, 1\)"):
            be.bias_act_dropout(z, bias, 0.5, rate, 0)
    with pytest.raises(ValueError, match="bias"):
        be.bias_act_dropout(z, be.asarray(np.zeros(3)), 0.5, 0.1, 0)
    with pytest.raises(ValueError, match="z_ob"):
        be.bias_act_dropout(be.asarray(np.ones((4, 3), I64)), bias, 0.5, 0.1, 0)
    with pytest.raises(ValueError, match="z_ob"):
        be.bias_act_dropout(be.asarray(np.ones(4)), bias, 0.5, 0.1, 0)
    with pytest.raises(TypeError, match="z_ob"):
        be.bias_act_dropout(foreign(be, np.ones((4, 3))), bias, 0.5, 0.1, 0)


def test_asarray_refuses_other_devices():
    with pytest.raises(TypeError, match="cpu backend got an array from another device"):
        CpuBackend().asarray(ForeignArray([1.0]))


def test_negative_thread_count_is_refused():
    with pytest.raises(ValueError, match="num_threads must lie in"):
        CpuBackend(num_threads=-1)


# --- raw Cython wrappers: checked before nogil --------------------------------------------------
def raw_operands(index_dtype=I32, dtype=F64):
    w_sp = fixed_layer(dtype)
    indptr, indices = w_sp.indptr.astype(index_dtype), w_sp.indices.astype(index_dtype)
    t = spmm.transpose_index(indptr, indices, 5)
    return indptr, indices, w_sp.data.copy(), t, w_sp


@pytest.mark.parametrize("index_dtype", [I32, I64])
def test_raw_products_check_shapes(index_dtype):
    indptr, indices, data, (t_ptr, t_rows, t_perm), _ = raw_operands(index_dtype)
    x, dy = np.ones((5, 4)), np.ones((6, 4))
    nnz = indices.shape[0]
    cases = [
        (lambda: spmm.matmul(indptr, indices, data, np.ones((4, 4)), 5), "x_ib has 4 rows"),
        (lambda: spmm.matmul(indptr, indices, data, x, 6), "x_ib has 5 rows, expected 6"),
        (lambda: spmm.matmul(indptr, indices, data[:-1], x, 5), "data has"),
        (lambda: spmm.matmul(indptr[:-1], indices, data, x, 5), "indptr must"),
        (lambda: spmm.matmul(indptr[:0], indices, data, x, 5), "indptr must have at least"),
        (lambda: spmm.matmul(indptr, indices, data, x, 5, -2), "num_threads"),
        (lambda: spmm.matmul_t(t_ptr, t_rows, t_perm[:-1], data, dy, 6), "t_perm has"),
        (lambda: spmm.matmul_t(t_ptr, t_rows, t_perm, data, dy, 7), "dy_ob has 6 rows"),
        (lambda: spmm.matmul_t(t_ptr[:-1], t_rows, t_perm, data, dy, 6), "indptr must"),
        (lambda: spmm.backward(t_ptr, t_rows, t_perm, data, np.ones((4, 4)), dy, 6), "x_ib"),
        (lambda: spmm.backward(t_ptr, t_rows, t_perm, data, x, np.ones((6, 3)), 6), "dy_ob"),
        (lambda: spmm.backward(t_ptr, t_rows, t_perm, data, x, dy, 5), "dy_ob has 6 rows"),
        (lambda: spmm.backward(t_ptr, t_rows, t_perm, data[:-1], x, dy, 6), "t_perm has"),
        (lambda: spmm.transpose_index(indptr, indices, 2), r"indices must lie in \[0, n_cols"),
        (lambda: spmm.transpose_index(indptr, indices, -1), "n_cols must be >= 0"),
        (lambda: spmm.transpose_index(indptr[:-1], indices, 5), "indptr must"),
        (lambda: spmm.transpose_index(np.array([0, nnz - 1, 1, nnz], index_dtype), indices, 5),
         "non-decreasing"),
        (lambda: sddmm.weight_grad(indptr, indices, x, np.ones((5, 4)), 5), "dy_ob has 5 rows"),
        (lambda: sddmm.weight_grad(indptr, indices, np.ones((4, 4)), dy, 5), "x_ib has 4 rows"),
        (lambda: sddmm.weight_grad(indptr, indices, x, np.ones((6, 2)), 5), "dy_ob has batch"),
        (lambda: sddmm.weight_grad(indptr, indices[:-1], x, dy, 5), "indptr must"),
        (lambda: sddmm.sampled_grad(x, dy, np.array([0, 1], index_dtype),
                                    np.array([0], index_dtype)), "rows has 2 entries"),
        (lambda: sddmm.sampled_grad(x, dy, np.array([6], index_dtype),
                                    np.array([0], index_dtype)), "rows must lie"),
        (lambda: sddmm.sampled_grad(x, dy, np.array([0], index_dtype),
                                    np.array([5], index_dtype)), "cols must lie"),
        (lambda: sddmm.sampled_grad(x, np.ones((6, 5)), np.array([0], index_dtype),
                                    np.array([0], index_dtype)), "dy_ob has batch"),
    ]
    for i, (thunk, message) in enumerate(cases):
        expect_error(ValueError, message, thunk, f"case {i}")


def test_raw_products_refuse_mixed_types():
    indptr, indices, data, _, _ = raw_operands()
    with pytest.raises((TypeError, ValueError)):
        spmm.matmul(indptr, indices, data, np.ones((5, 4), F32), 5)
    with pytest.raises((TypeError, ValueError)):
        spmm.matmul(indptr, indices.astype(I64), data, np.ones((5, 4)), 5)
    with pytest.raises((TypeError, ValueError)):
        spmm.matmul(indptr, indices, data, np.ones((4, 5)).T, 5)  # not C-contiguous


def test_raw_topology_checks_shapes():
    indptr, indices, data, _, w_sp = raw_operands()
    nnz = indices.shape[0]
    keep = np.ones(nnz, np.uint8)
    r_free, c_free = np.nonzero(w_sp.toarray() == 0)
    nr, nc = r_free[:2].astype(I32), c_free[:2].astype(I32)
    vals = np.ones(2, data.dtype)
    cases = [
        (lambda: select.select(data, -1), "k must lie"),
        (lambda: select.select(data, nnz + 1), "k must lie"),
        (lambda: sampling.contains(indptr, indices, np.array([6], I64), np.array([0], I64)),
         "rows must lie"),
        (lambda: sampling.contains(indptr, indices, np.array([0, 1], I64), np.array([0], I64)),
         "rows has 2 entries"),
        (lambda: rebuild.rebuild_csr(indptr, indices, keep[:-1], nr, nc, 5, data, vals, False),
         "keep_mask has"),
        (lambda: rebuild.rebuild_csr(indptr, indices, keep, nr, nc[:1], 5, data, vals, False),
         "must have the same length"),
        (lambda: rebuild.rebuild_csr(indptr, indices, keep, nr + 6, nc, 5, data, vals, False),
         "new positions must lie"),
        (lambda: rebuild.rebuild_csr(indptr, indices, keep, nr, nc + 5, 5, data, vals, False),
         "new positions must lie"),
        (lambda: rebuild.rebuild_csr(indptr, indices, keep, nr, nc, 5, data, vals, False, 0,
                                     data[:-1]), "state has"),
        (lambda: rebuild.gather(np.array([0, nnz], I64), data), "src refers past the end"),
        (lambda: rebuild.gather(np.array([0, -3], I64), data, np.ones(2)),
         "src refers past the end"),
        (lambda: elementwise.bias_act_dropout(np.ones((4, 3)), np.zeros(3), 0.5, 0.1, 0),
         "bias has 3 entries"),
        (lambda: elementwise.bias_act_dropout(np.ones((4, 3)), np.zeros(4), 0.5, 1.0, 0),
         "rate"),
    ]
    for i, (thunk, message) in enumerate(cases):
        expect_error(ValueError, message, thunk, f"case {i}")


def test_raw_wrappers_handle_empty_operands():
    """Zero rows, zero columns, nnz = 0, batch 0: no pointer into an empty buffer is followed."""
    for n_out, n_in, n_batch in [(0, 3, 2), (3, 0, 2), (3, 3, 0), (0, 0, 0)]:
        w = sp.csr_matrix((n_out, n_in))
        indptr, indices = w.indptr.astype(I32), w.indices.astype(I32)
        data = np.zeros(0)
        x, dy = np.ones((n_in, n_batch)), np.ones((n_out, n_batch))
        assert spmm.matmul(indptr, indices, data, x, n_in).shape == (n_out, n_batch)
        t_ptr, t_rows, t_perm = spmm.transpose_index(indptr, indices, n_in)
        assert spmm.matmul_t(t_ptr, t_rows, t_perm, data, dy, n_out).shape == (n_in, n_batch)
        dx, g = spmm.backward(t_ptr, t_rows, t_perm, data, x, dy, n_out)
        assert dx.shape == (n_in, n_batch) and not dx.any() and g.shape == (0,)
        assert sddmm.weight_grad(indptr, indices, x, dy, n_in).shape == (0,)
        empty = np.zeros(0, I32)
        assert sddmm.sampled_grad(x, dy, empty, empty).shape == (0,)
        a, d = elementwise.bias_act_dropout(dy, np.zeros(n_out), 0.5, 0.5, 1)
        assert a.shape == d.shape == (n_out, n_batch)


# --- the training front door --------------------------------------------------------------------
def test_a_huge_epsilon_or_gamma_means_every_position_not_an_overflow():
    import sparsekit
    from sparsekit.nn.init import er_connections

    assert er_connections(8, 64, 1e308) == 8 * 64  # the ER cap, where epsilon * (n_in + n_out)
    d = sparsekit.load_dataset("digits")  # overflows a float
    res = sparsekit.train([64, 8, 10], d, epochs=1, epsilon=1e308, method="gse",
                          method_params={"gamma": 1e308})
    assert res.model.n_connections[0] == 64 * 8
    with pytest.raises(ValueError, match="epsilon must be a number > 0"):
        er_connections(8, 64, float("nan"))


def test_train_names_a_bad_callback_log_or_run_dir():
    import sparsekit

    d = sparsekit.load_dataset("digits")
    for kw, msg in ((dict(callbacks=5), "callbacks must be a sequence"),
                    (dict(callbacks=[5]), r"callbacks\[0\] is not callable"),
                    (dict(callbacks=print), "wrap a single one in a list"),
                    (dict(log=5), "log must be a callable"),
                    (dict(run_dir=5), "run_dir must be a path")):
        with pytest.raises(TypeError, match=msg):
            sparsekit.train([64, 8, 10], d, epochs=1, **kw)


def test_empty_data_files_are_one_line_errors(tmp_path):
    import struct

    from sparsekit.io.datasets import load_dataset
    from sparsekit.io.idx import read_idx

    (tmp_path / "empty.idx").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 0, 28, 28))
    assert read_idx(tmp_path / "empty.idx").shape == (0, 28, 28)
    np.savez(tmp_path / "e.npz", x_train=np.zeros((0, 20), np.float32),
             y_train=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="x_train has no rows"):
        load_dataset(str(tmp_path / "e.npz"))


def test_synthetic_refuses_a_huge_n_informative_at_once():
    from sparsekit.io.datasets import load_dataset

    with pytest.raises(ValueError, match="n_features .* must be >= n_informative"):
        load_dataset("synthetic", n_informative=10**12)  # 2 ** 10**12 is never computed


def test_inputs_that_overflow_the_network_are_named_not_predicted():
    from sparsekit import SparseMLP

    model = SparseMLP([4, 8, 3], seed=0)
    huge = np.array([[0.0, 1e300, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"beyond float32's range \(1e\+300, first at row 0, "
                                         r"column 1\)"):
        model.predict(huge)
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 0, column 1\)"):
        model.predict(np.array([[0.0, np.inf, 0.0, 0.0]]))
    # finite in float32, but the outputs overflow: refused, not predicted as class 0
    edge = np.full((3, 4), 3e38, dtype=np.float32)
    edge[0] = 0.0
    with pytest.raises(ValueError, match="outputs overflow to inf or NaN from row 1"):
        model.predict(edge)
    with pytest.raises(ValueError, match="outputs overflow"):
        model.evaluate(edge, np.zeros(3, dtype=np.int64))


def test_an_epsilon_that_leaves_a_layer_without_connections_is_refused():
    from sparsekit import SparseMLP, estimate_memory

    with pytest.raises(ValueError, match="gives a 3 x 16 layer no connections"):
        SparseMLP([40, 16, 3], epsilon=0.01)
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0, got '5'"):
        SparseMLP([40, 16, 3], epsilon="5")
    with pytest.raises(ValueError, match="layer_sizes must be a sequence of positive integers, "
                                         "got '784,10'"):
        estimate_memory("784,10")


def test_select_ranks_only_what_float64_orders_exactly(topo_backend):
    be = topo_backend
    big = be.asarray(np.array([2**62, 2**62 + 1, 0], np.int64))
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        be.select(big, 1)
    assert list(be.to_numpy(be.select(be.asarray(np.array([3, 1, 2])), 1))) == [0]
    with pytest.raises(TypeError, match="real numbers"):
        be.select(be.asarray(np.array([1 + 2j, 3])), 1)
    with pytest.raises(ValueError, match="k must lie in"):
        be.select(be.asarray(np.arange(5.0)), 10**30)


def test_thread_counts_are_bounded_integers():
    from sparsekit._cython.backend import CpuBackend
    from sparsekit._cython.threads import MAX_THREADS

    for bad, error in ((100_000, ValueError), (2**31, ValueError), (-1, ValueError),
                       (1.7, TypeError), (True, TypeError)):
        with pytest.raises(error, match="num_threads"):
            CpuBackend(num_threads=bad)
    be = CpuBackend(num_threads=2)
    with pytest.raises(ValueError, match="num_threads"):
        be.num_threads = MAX_THREADS + 1  # the command line's --threads sets it this way
    assert be.num_threads == 2 and CpuBackend(num_threads=np.int64(3)).num_threads == 3


def test_sample_absent_takes_a_seed_as_numpy_does(topo_backend):
    from reference import random_csr, to_backend

    w = to_backend(topo_backend, random_csr(np.random.default_rng(0), 6, 7, 0.3), np.float32,
                   np.int32)
    a = topo_backend.sample_absent(w, 5, 3)
    b = topo_backend.sample_absent(w, 5, np.random.default_rng(3))
    assert all(np.array_equal(topo_backend.to_numpy(x), topo_backend.to_numpy(y))
               for x, y in zip(a, b))
    topo_backend.sample_absent(w, 5, None)
