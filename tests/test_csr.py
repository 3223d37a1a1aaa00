"""The CSR container: valid inputs, int32/int64 indices, SciPy round trips, helpers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from reference import EDGE_SHAPES, host, random_csr, to_backend

from sparsekit.nn.csr import CSR, index_dtype_for


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_valid_matrices_round_trip(backend, dtype, index_dtype):
    """Every edge shape, on the device, with either index width (int64 is legal when small)."""
    rng = np.random.default_rng(0)
    for n_out, n_in in EDGE_SHAPES + [(5, 7)]:
        for density in (0.0, 0.4, 1.0):
            w_sp = random_csr(rng, n_out, n_in, density, dtype=dtype)
            w = to_backend(backend, w_sp, dtype, index_dtype)
            assert w.shape == (n_out, n_in) and w.nnz == w_sp.nnz
            assert w.dtype == dtype and w.indices.dtype == index_dtype
            assert w.xp is backend.xp
            back = w.to_scipy()
            assert isinstance(back, sp.csr_matrix) and back.shape == w_sp.shape
            assert (back != w_sp).nnz == 0
            rows = host(backend, w.row_ids())
            np.testing.assert_array_equal(rows, np.repeat(np.arange(n_out), np.diff(w_sp.indptr)))


def test_index_dtype_for():
    assert index_dtype_for(0, (3, 4)) == np.int32
    assert index_dtype_for(2**31 - 1, (2**31 - 1, 2**31 - 1)) == np.int32
    assert index_dtype_for(2**31, (3, 4)) == np.int64
    assert index_dtype_for(5, (2**31, 1)) == np.int64
    assert index_dtype_for(5, (1, 2**31)) == np.int64


def test_from_scipy_normalises():
    """Duplicates are summed, indices sorted, the value dtype kept or set."""
    coo = sp.coo_matrix((np.array([1.0, 2.0, 3.0]), (np.array([1, 0, 1]), np.array([2, 1, 2]))),
                        shape=(3, 4))
    w = CSR.from_scipy(coo)
    assert w.nnz == 2 and w.dtype == np.float64 and w.indices.dtype == np.int32
    np.testing.assert_array_equal(w.indptr, [0, 1, 2, 2])
    np.testing.assert_array_equal(w.indices, [1, 2])
    np.testing.assert_array_equal(w.data, [2.0, 4.0])
    unsorted = sp.csr_matrix((np.array([1.0, 2.0]), np.array([3, 0]), np.array([0, 2])),
                             shape=(1, 4))
    w = CSR.from_scipy(unsorted, dtype=np.float32)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w.indices, [0, 3])
    np.testing.assert_array_equal(w.data, [2.0, 1.0])
    assert CSR.from_scipy(sp.csr_matrix(np.eye(2, dtype=np.int64))).dtype == np.float32


def test_with_data_and_copy():
    w = CSR.from_scipy(sp.csr_matrix(np.array([[0, 1.0], [2.0, 0]])))
    v = w.with_data(np.array([5.0, 6.0]))
    assert v.indices is w.indices and v.indptr is w.indptr
    np.testing.assert_array_equal(v.to_scipy().toarray(), [[0, 5], [6, 0]])
    c = w.copy()
    c.data[0] = 9
    assert w.data[0] == 1.0
    assert not np.shares_memory(c.indices, w.indices) and not np.shares_memory(c.indptr,
                                                                               w.indptr)


def test_repr_and_empty_layers():
    assert "nnz=0" in repr(CSR(np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0),
                               (0, 5)))
    w = CSR(np.zeros(4, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), (3, 0))
    assert w.nnz == 0 and "density=0" in repr(w) and "index=int64" in repr(w)


def _small():
    return CSR(np.array([0, 2, 2, 5, 6], np.int32), np.array([0, 2, 1, 3, 4, 0], np.int32),
               np.arange(1, 7, dtype=np.float32), (4, 5))


def test_a_validated_pattern_cannot_be_changed_under_the_kernels():
    """The kernels trust a validated pattern: writing an out-of-range column into w.indices
    crashed the process in the next product."""
    indptr = np.array([0, 2, 2, 5, 6], np.int32)
    w = CSR(indptr, np.array([0, 2, 1, 3, 4, 0], np.int32), np.arange(1, 7, dtype=np.float32),
            (4, 5))
    for arr in (w.indices, w.indptr, w.copy().indices, w.with_data(w.data * 2).indptr):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 10**6
    assert indptr.flags.writeable  # the caller's own array is left as it was
    w.data[0] = 5.0  # the values stay writable (optimizers update them in place)


@pytest.mark.parametrize("data, message", [
    (np.zeros(3, np.float32), "of 6 values"),
    (np.zeros(6, np.float16), "dtype float16"),
    (np.zeros(12, np.float32)[::2], "contiguous"),
    ([1.0] * 6, "got list"),
    (np.zeros((6, 1), np.float32), r"shape \(6, 1\)"),
])
def test_with_data_checks_the_values(data, message):
    with pytest.raises(ValueError, match=message):
        _small().with_data(data)


@pytest.mark.parametrize("shape, message", [
    ((1.7, 5), "two integers"), ((4, 5, 1), "two integers"), (None, "two integers"),
    ((True, 5), "two integers"), ((3, 2**62), "more positions than int64"),
    ((1, 2**63), "more positions than int64"),
])
def test_shapes_are_two_integers_an_int64_can_number(shape, message):
    with pytest.raises(ValueError, match=message):
        CSR(np.zeros(2, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), shape)


def test_the_pattern_stays_read_only_through_pickle_and_deepcopy():
    import copy
    import pickle

    w = _small()
    for restored in (pickle.loads(pickle.dumps(w)), copy.deepcopy(w)):
        assert not restored.indices.flags.writeable and not restored.indptr.flags.writeable
        assert restored.data.flags.writeable
