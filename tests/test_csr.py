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
    c.indices[0] = 0
    assert w.data[0] == 1.0 and w.indices[0] == 1


def test_repr_and_empty_layers():
    assert "nnz=0" in repr(CSR(np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0),
                               (0, 5)))
    w = CSR(np.zeros(4, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), (3, 0))
    assert w.nnz == 0 and "density=0" in repr(w) and "index=int64" in repr(w)
