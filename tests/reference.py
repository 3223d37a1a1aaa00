"""Plain SciPy/NumPy oracles for the backend protocol, and random test matrices.

Every oracle works on the host in float64 with the most obvious code that computes the contract
of :mod:`sparsekit.backends`; none of it shares code with sparsekit beyond the CSR container.
W has shape ``(n_out, n_in)`` (rows are output neurons) and activations are feature-major.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sparsekit.nn.csr import CSR

U64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


# --- random matrices --------------------------------------------------------------------------
def random_csr(rng: np.random.Generator, n_out: int, n_in: int, density: float = 0.2,
               dtype=np.float64, empty_row_frac: float = 0.25) -> sp.csr_matrix:
    """A SciPy CSR of the given shape with sorted unique indices and no explicit zeros.

    About ``empty_row_frac`` of the rows are left empty; ``density`` 0 gives nnz = 0.  (SciPy
    picks the index dtype; :func:`to_backend` sets the one a test wants.)
    """
    indptr = [0]
    indices = []
    for _ in range(n_out):
        count = 0
        if n_in and rng.random() >= empty_row_frac:
            count = int(rng.binomial(n_in, density))
        indices.append(np.sort(rng.choice(n_in, size=count, replace=False)))
        indptr.append(indptr[-1] + count)
    idx = np.concatenate(indices) if indices else np.empty(0, np.int64)
    nnz = idx.shape[0]
    # Values away from zero, so "explicit zero" never blurs a structural test.
    data = rng.uniform(0.1, 1.0, nnz) * rng.choice([-1.0, 1.0], nnz)
    return sp.csr_matrix((data.astype(dtype), idx, np.asarray(indptr)), shape=(n_out, n_in))


def to_backend(backend, m: sp.csr_matrix, dtype=None, index_dtype=None) -> CSR:
    """The CSR container of ``m`` on ``backend``'s device, keeping (or setting) its dtypes."""
    dtype = np.dtype(dtype or m.dtype)
    idt = np.dtype(index_dtype or m.indices.dtype)
    return CSR(backend.asarray(m.indptr.astype(idt)), backend.asarray(m.indices.astype(idt)),
               backend.asarray(m.data.astype(dtype)), m.shape)


def host(backend, x) -> np.ndarray:
    return np.asarray(backend.to_numpy(x))


# Shapes that cover the edges: single row/column, empty layers, empty rows, wide and tall.
EDGE_SHAPES = [(1, 1), (1, 9), (9, 1), (7, 5), (0, 4), (4, 0), (33, 17), (17, 70), (70, 3)]


def shape_sweep(rng: np.random.Generator, n_random: int = 6):
    """``(n_out, n_in, density)`` cases: the edge shapes, nnz = 0, a dense one and random ones."""
    cases = [(r, c, 0.3) for r, c in EDGE_SHAPES]
    cases += [(6, 8, 0.0), (5, 6, 1.0)]
    for _ in range(n_random):
        cases.append((int(rng.integers(1, 90)), int(rng.integers(1, 90)),
                      float(rng.choice([0.02, 0.1, 0.5]))))
    return cases


# --- tolerances -------------------------------------------------------------------------------
def assert_close(got, ref, scale, n_terms: int, dtype, what: str = "") -> None:
    """``|got - ref| <= (n_terms + 2) * eps(dtype) * scale`` elementwise.

    ``ref`` is the exact-ish float64 result and ``scale`` the same sum over absolute values
    (e.g. ``|W| @ |x|``): a sum of ``n_terms`` products rounded in ``dtype``, in any order, is
    within ``n_terms * eps * scale`` of the truth (Higham's gamma_n bound), so this tolerance
    is rigorous and still catches any wrong index or value, whose error is of order ``scale``.
    """
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    assert got.shape == np.shape(ref), f"{what}: shape {got.shape}, expected {np.shape(ref)}"
    if got.size == 0:
        return
    eps = np.finfo(dtype).eps
    tol = (n_terms + 2) * eps * np.asarray(scale, dtype=np.float64) + np.finfo(dtype).tiny
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} entries off, worst error "
                           f"{err.max():.3g} against tolerance {tol.flat[np.argmax(err)]:.3g}")


# --- products ---------------------------------------------------------------------------------
def f64(m: sp.csr_matrix) -> sp.csr_matrix:
    return sp.csr_matrix(m, dtype=np.float64)


def matmul(w: sp.csr_matrix, x_ib: np.ndarray) -> np.ndarray:
    """``y_ob = W @ x_ib``."""
    return np.asarray(f64(w) @ x_ib.astype(np.float64))


def matmul_t(w: sp.csr_matrix, dy_ob: np.ndarray) -> np.ndarray:
    """``dx_ib = W.T @ dy_ob``."""
    return np.asarray(f64(w).T @ dy_ob.astype(np.float64))


def sampled_grad(x_ib, dy_ob, rows, cols) -> np.ndarray:
    """``g[j] = sum_b dy_ob[rows[j], b] * x_ib[cols[j], b]``."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.shape[0] == 0:
        return np.zeros(0)
    return np.einsum("jb,jb->j", dy_ob[rows].astype(np.float64),
                     x_ib[cols].astype(np.float64))


def pattern(w: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of every stored entry, in CSR order."""
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    return rows, w.indices.astype(np.int64)


def weight_grad(w: sp.csr_matrix, x_ib, dy_ob) -> np.ndarray:
    """SDDMM on W's pattern, in CSR order."""
    return sampled_grad(x_ib, dy_ob, *pattern(w))


def backward(w: sp.csr_matrix, x_ib, dy_ob, need_dx: bool = True):
    return (matmul_t(w, dy_ob) if need_dx else None), weight_grad(w, x_ib, dy_ob)


# --- elementwise ------------------------------------------------------------------------------
def _splitmix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def dropout_keep(shape, rate: float, seed: int) -> np.ndarray:
    """The documented counter-based mask, with Python integers.

    Element (o, j) is kept when the top 24 bits of ``splitmix64(seed + (o * n_batch + j) *
    golden)`` are ``>= rate * 2**24``.
    """
    n_out, n_batch = shape
    seed &= U64
    threshold = int(rate * 16777216.0)
    keep = np.ones(shape, dtype=bool)
    for o in range(n_out):
        for j in range(n_batch):
            keep[o, j] = (_splitmix((seed + (o * n_batch + j) * GOLDEN) & U64) >> 40) >= threshold
    return keep


def bias_act_dropout(z_ob, bias, slope: float, rate: float, seed: int):
    """``(a, d)`` in float64: activation ``x if x > 0 else slope * x`` and its derivative."""
    z = z_ob.astype(np.float64) + bias.astype(np.float64)[:, None]
    d = np.where(z > 0, 1.0, slope)
    a = d * z
    if rate > 0:
        keep = dropout_keep(z.shape, rate, seed)
        d = np.where(keep, d / (1 - rate), 0.0)
        a = np.where(keep, a / (1 - rate), 0.0)
    return a, d


# --- topology ---------------------------------------------------------------------------------
def select(values, k: int, largest: bool = True) -> np.ndarray:
    """Indices of the k largest/smallest values, ties to the lowest index, increasing."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values if largest else values, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def check_sample_absent(w: sp.csr_matrix, rows, cols, m: int, row_weights=None,
                        col_weights=None) -> None:
    """Assert the contract of ``sample_absent``'s answer (it is random, so no single oracle)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    assert rows.dtype.kind == "i" and cols.dtype.kind == "i", (rows.dtype, cols.dtype)
    assert rows.shape == cols.shape == (m,), (rows.shape, cols.shape, m)
    if m == 0:
        return
    n_out, n_in = w.shape
    assert rows.min() >= 0 and rows.max() < n_out and cols.min() >= 0 and cols.max() < n_in
    keys = rows.astype(np.int64) * n_in + cols
    assert np.all(np.diff(keys) > 0), "positions must be distinct and sorted by (row, col)"
    pr, pc = pattern(w)
    present = np.isin(keys, pr * n_in + pc)
    assert not present.any(), f"{int(present.sum())} sampled positions are already in W"
    if row_weights is not None:
        assert np.all(np.asarray(row_weights)[rows] > 0), "a row of weight 0 was sampled"
    if col_weights is not None:
        assert np.all(np.asarray(col_weights)[cols] > 0), "a column of weight 0 was sampled"


def rebuild(w: sp.csr_matrix, keep_mask, new_rows, new_cols, new_vals, *states):
    """``(W', [state', ...])``: kept entries plus new ones, sorted; states 0 at new slots."""
    n_in = w.shape[1]
    keep_mask = np.asarray(keep_mask, dtype=bool)
    pr, pc = pattern(w)
    keys = np.concatenate([(pr * n_in + pc)[keep_mask],
                           np.asarray(new_rows, np.int64) * n_in + np.asarray(new_cols, np.int64)])
    assert np.unique(keys).shape[0] == keys.shape[0], "oracle given colliding positions"
    order = np.argsort(keys)
    keys = keys[order]
    data = np.concatenate([w.data[keep_mask], np.asarray(new_vals, dtype=w.data.dtype)])[order]
    n_new = len(new_rows)
    out_states = [np.concatenate([np.asarray(s)[keep_mask], np.zeros(n_new, np.asarray(s).dtype)])
                  [order] for s in states]
    rows = keys // max(n_in, 1)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[0]))])
    new_w = sp.csr_matrix((data, keys - rows * n_in, indptr), shape=w.shape)
    return new_w, out_states


def csr_equal(got: sp.csr_matrix, ref: sp.csr_matrix) -> None:
    """Same shape, same pattern and bit-identical values (rebuild moves values, never sums)."""
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.data, ref.data)


def parallel_cpu(num_threads: int):
    """A CPU backend that runs every kernel on ``num_threads`` however small the input (its
    thresholds would keep test-sized layers on one thread)."""
    from sparsekit._cython.backend import CpuBackend

    be = CpuBackend(num_threads=num_threads)
    be.min_parallel_work = be.min_team_work = 0
    be.min_parallel_elements = be.min_parallel_entries = 0
    return be
