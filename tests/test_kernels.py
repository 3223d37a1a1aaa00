"""Products, SDDMM, selection and the fused activation against the SciPy/NumPy oracle.

Each test sweeps the shapes of :func:`reference.shape_sweep` (single row and column, empty
layers, empty rows, nnz = 0, fully dense, random) and batch sizes including 1 and sizes that
are not multiples of 4, for float32 and float64 values and int32 and int64 indices.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp
from reference import assert_close, host, parallel_cpu, random_csr, shape_sweep, to_backend

from sparsekit._cython.backend import CpuBackend
from sparsekit.backends import Backend
from sparsekit.nn.init import erdos_renyi

DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
BATCHES = [1, 3, 5, 13, 33]


def cases(seed: int, dtype):
    """(scipy W, n_batch) pairs; W's values already rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    for n_out, n_in, density in shape_sweep(rng):
        w = random_csr(rng, n_out, n_in, density, dtype=dtype)
        for n_batch in BATCHES:
            yield w, n_batch, rng


def operand(rng, backend, n, n_batch, dtype):
    x = rng.uniform(-1, 1, (n, n_batch)).astype(dtype)
    return x, backend.asarray(x)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(backend, dtype, index_dtype):
    for w_sp, n_batch, rng in cases(1, dtype):
        w = to_backend(backend, w_sp, dtype, index_dtype)
        x, x_dev = operand(rng, backend, w_sp.shape[1], n_batch, dtype)
        got = host(backend, backend.matmul(x_dev, w))
        assert_close(got, ref.matmul(w_sp, x), ref.matmul(abs(w_sp), abs(x)), w_sp.shape[1],
                     dtype, f"matmul {w!r} batch {n_batch}")


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_t(backend, dtype, index_dtype):
    for w_sp, n_batch, rng in cases(2, dtype):
        w = to_backend(backend, w_sp, dtype, index_dtype)
        dy, dy_dev = operand(rng, backend, w_sp.shape[0], n_batch, dtype)
        got = host(backend, backend.matmul_t(dy_dev, w))
        assert_close(got, ref.matmul_t(w_sp, dy), ref.matmul_t(abs(w_sp), abs(dy)),
                     w_sp.shape[0], dtype, f"matmul_t {w!r} batch {n_batch}")


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_grad(backend, dtype, index_dtype):
    for w_sp, n_batch, rng in cases(3, dtype):
        w = to_backend(backend, w_sp, dtype, index_dtype)
        x, x_dev = operand(rng, backend, w_sp.shape[1], n_batch, dtype)
        dy, dy_dev = operand(rng, backend, w_sp.shape[0], n_batch, dtype)
        got = host(backend, backend.weight_grad(x_dev, dy_dev, w))
        assert_close(got, ref.weight_grad(w_sp, x, dy), ref.weight_grad(w_sp, abs(x), abs(dy)),
                     n_batch, dtype, f"weight_grad {w!r} batch {n_batch}")


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward(backend, dtype, index_dtype, need_dx):
    for w_sp, n_batch, rng in cases(4, dtype):
        w = to_backend(backend, w_sp, dtype, index_dtype)
        x, x_dev = operand(rng, backend, w_sp.shape[1], n_batch, dtype)
        dy, dy_dev = operand(rng, backend, w_sp.shape[0], n_batch, dtype)
        dx, grad = backend.backward(x_dev, dy_dev, w, need_dx=need_dx)
        what = f"backward {w!r} batch {n_batch}"
        assert_close(host(backend, grad), ref.weight_grad(w_sp, x, dy),
                     ref.weight_grad(w_sp, abs(x), abs(dy)), n_batch, dtype, what)
        if need_dx:
            assert_close(host(backend, dx), ref.matmul_t(w_sp, dy),
                         ref.matmul_t(abs(w_sp), abs(dy)), w_sp.shape[0], dtype, what)
        else:
            assert dx is None


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_gathers_the_gradient_on_two_threads(dtype, index_dtype, tiled):
    """On two threads the fused backward writes the gradient in the transposed order and
    gathers it into W's order (t_inv): the bits of one thread's scattered writes, on every
    shape (empty rows, nnz = 0, one column), whole-row and batch-tiled walks."""
    from sparsekit._cython import spmm

    one, two = parallel_cpu(1), parallel_cpu(2)
    old = spmm._tuning()
    try:
        if tiled:
            spmm._tuning(tile_bytes=0, tile_fused=True)
        for w_sp, n_batch, rng in cases(7, dtype):
            results = []
            x = rng.uniform(-1, 1, (w_sp.shape[1], n_batch)).astype(dtype)
            dy = rng.uniform(-1, 1, (w_sp.shape[0], n_batch)).astype(dtype)
            for be in (one, two):
                w = to_backend(be, w_sp, dtype, index_dtype)
                results.append(be.backward(x, dy, w))
                assert (w._transpose_inv is not None) == (be is two)
            (dx1, g1), (dx2, g2) = results
            what = f"{w_sp.shape} nnz {w_sp.nnz} batch {n_batch}"
            np.testing.assert_array_equal(g2, g1, err_msg=what)
            np.testing.assert_array_equal(dx2, dx1, err_msg=what)
            assert_close(g2, ref.weight_grad(w_sp, x, dy),
                         ref.weight_grad(w_sp, abs(x), abs(dy)), n_batch, dtype, what)
    finally:
        spmm._tuning(*old)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_grad(backend, dtype, index_dtype):
    rng = np.random.default_rng(5)
    for n_out, n_in, _ in shape_sweep(rng):
        if n_out == 0 or n_in == 0:
            continue
        for n_batch in BATCHES:
            x, x_dev = operand(rng, backend, n_in, n_batch, dtype)
            dy, dy_dev = operand(rng, backend, n_out, n_batch, dtype)
            # Candidates in any order and with repeats: the SDDMM must not care.
            m = int(rng.integers(0, 3 * (n_out + n_in)))
            rows = rng.integers(0, n_out, m).astype(index_dtype)
            cols = rng.integers(0, n_in, m).astype(index_dtype)
            got = host(backend, backend.sampled_grad(x_dev, dy_dev, backend.asarray(rows),
                                                     backend.asarray(cols)))
            assert_close(got, ref.sampled_grad(x, dy, rows, cols),
                         ref.sampled_grad(abs(x), abs(dy), rows, cols), n_batch, dtype,
                         f"sampled_grad ({n_out}, {n_in}) m={m} batch {n_batch}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_with_empty_batch(backend, dtype):
    w_sp = random_csr(np.random.default_rng(6), 6, 4, 0.5, dtype=dtype)
    w = to_backend(backend, w_sp)
    x = backend.asarray(np.zeros((4, 0), dtype))
    dy = backend.asarray(np.zeros((6, 0), dtype))
    assert host(backend, backend.matmul(x, w)).shape == (6, 0)
    assert host(backend, backend.matmul_t(dy, w)).shape == (4, 0)
    np.testing.assert_array_equal(host(backend, backend.weight_grad(x, dy, w)), 0)
    dx, g = backend.backward(x, dy, w)
    assert host(backend, dx).shape == (4, 0)
    np.testing.assert_array_equal(host(backend, g), np.zeros(w.nnz))


def test_non_contiguous_operands_are_read_correctly(backend):
    """A strided or Fortran-ordered operand is copied, never misread."""
    rng = np.random.default_rng(7)
    w_sp = random_csr(rng, 20, 30, 0.3)
    w = to_backend(backend, w_sp)
    x_wide = rng.uniform(-1, 1, (30, 14))
    dy = np.asfortranarray(rng.uniform(-1, 1, (20, 7)))
    x_dev = backend.asarray(x_wide)[:, ::2]  # a strided view on the device
    dy_dev = backend.xp.asfortranarray(backend.asarray(dy))
    x = x_wide[:, ::2]
    assert_close(host(backend, backend.matmul(x_dev, w)), ref.matmul(w_sp, x),
                 ref.matmul(abs(w_sp), abs(x)), 30, np.float64, "strided matmul")
    assert_close(host(backend, backend.weight_grad(x_dev, dy_dev, w)),
                 ref.weight_grad(w_sp, x, dy), ref.weight_grad(w_sp, abs(x), abs(dy)), 7,
                 np.float64, "strided weight_grad")


def test_transpose_index_follows_new_values(backend):
    """``with_data`` keeps the cached column index; matmul_t must then read the new values."""
    rng = np.random.default_rng(8)
    w_sp = random_csr(rng, 25, 18, 0.3)
    w = to_backend(backend, w_sp)
    dy = rng.uniform(-1, 1, (25, 5))
    backend.matmul_t(backend.asarray(dy), w)  # builds the cache
    w_sp2 = w_sp.copy()
    w_sp2.data = rng.uniform(-1, 1, w_sp.nnz)
    w2 = w.with_data(backend.asarray(w_sp2.data))
    assert_close(host(backend, backend.matmul_t(backend.asarray(dy), w2)),
                 ref.matmul_t(w_sp2, dy), ref.matmul_t(abs(w_sp2), abs(dy)), 25, np.float64,
                 "matmul_t after with_data")


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_transpose_index_matches_generic(backend, index_dtype):
    """The backend's column index equals the base class's generic one (and is consistent)."""
    rng = np.random.default_rng(9)
    for n_out, n_in, density in shape_sweep(rng):
        w_sp = random_csr(rng, n_out, n_in, density)
        got = [host(backend, a) for a in
               backend.transpose_index(to_backend(backend, w_sp, index_dtype=index_dtype))]
        want = [host(backend, a) for a in Backend.transpose_index(
            backend, to_backend(backend, w_sp, index_dtype=index_dtype))]
        for g, e in zip(got, want, strict=True):
            assert g.dtype == np.dtype(index_dtype)
            np.testing.assert_array_equal(g, e)
        t_indptr, t_rows, t_perm = got
        csc = w_sp.tocsc()
        csc.sort_indices()
        np.testing.assert_array_equal(t_indptr, csc.indptr)
        np.testing.assert_array_equal(t_rows, csc.indices)
        rows, cols = ref.pattern(w_sp)
        np.testing.assert_array_equal(rows[t_perm], t_rows)


# --- selection ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_select(topo_backend, dtype):
    be = topo_backend
    rng = np.random.default_rng(10)
    for n in [1, 2, 7, 64, 1001]:
        # Few distinct values, so ties at the threshold are the rule, not the exception.
        for values in (rng.standard_normal(n), rng.integers(-3, 4, n).astype(float),
                       np.zeros(n), -np.abs(rng.standard_normal(n)) * (rng.random(n) < 0.5)):
            values = values.astype(dtype)
            for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
                for largest in (True, False):
                    got = host(be, be.select(be.asarray(values), k, largest))
                    assert got.dtype == np.int64
                    np.testing.assert_array_equal(got, ref.select(values, k, largest),
                                                  err_msg=f"{be.name} n={n} k={k} {largest}")


def test_select_accepts_integer_values(topo_backend):
    be = topo_backend
    values = np.array([5, -2, 7, 7, 0, -2, 3], dtype=np.int64)
    for k in range(8):
        for largest in (True, False):
            np.testing.assert_array_equal(host(be, be.select(be.asarray(values), k, largest)),
                                          ref.select(values, k, largest))


def test_contains(topo_backend):
    be = topo_backend
    rng = np.random.default_rng(11)
    for n_out, n_in, density in shape_sweep(rng):
        if n_out == 0 or n_in == 0:
            continue
        w_sp = random_csr(rng, n_out, n_in, density)
        w = to_backend(be, w_sp)
        rows = rng.integers(0, n_out, 200)
        cols = rng.integers(0, n_in, 200)
        want = np.asarray(w_sp[rows, cols] != 0).ravel()
        got = host(be, be.contains(w, be.asarray(rows), be.asarray(cols)))
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want)


# --- fused bias + activation + dropout ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_dropout(topo_backend, dtype):
    be = topo_backend
    rng = np.random.default_rng(12)
    for n_out, n_batch in [(1, 1), (7, 3), (16, 33), (40, 5)]:
        z = rng.standard_normal((n_out, n_batch)).astype(dtype)
        bias = rng.standard_normal(n_out).astype(dtype)
        for slope in (-0.6, 0.0, 0.75):
            for rate in (0.0, 0.3, 0.5):
                seed = int(rng.integers(0, 2**63))
                a, d = be.bias_act_dropout(be.asarray(z), be.asarray(bias), slope, rate, seed)
                a, d = host(be, a), host(be, d)
                ra, rd = ref.bias_act_dropout(z, bias, slope, rate, seed)
                what = f"{be.name} {n_out}x{n_batch} slope={slope} rate={rate}"
                # z + b, times the slope, times 1/(1-rate): three roundings.
                assert_close(a, ra, abs(ra) + abs(z.astype(np.float64)) + 1, 1, dtype, what)
                assert_close(d, rd, abs(rd), 1, dtype, what)
                np.testing.assert_array_equal(a == 0, (ra == 0), err_msg=what)


def test_dropout_mask_is_the_documented_hash(topo_backend):
    """Same seed, same mask on every backend: kept fraction ~ 1 - rate, mask from the hash."""
    be = topo_backend
    z = np.ones((50, 40))
    for rate, seed in [(0.1, 0), (0.5, 2**64 - 1), (0.9, -5)]:
        a, d = be.bias_act_dropout(be.asarray(z), be.asarray(np.zeros(50)), 0.5, rate, seed)
        keep = ref.dropout_keep(z.shape, rate, seed)
        np.testing.assert_array_equal(host(be, d) != 0, keep)
        assert abs(keep.mean() - (1 - rate)) < 0.05
        np.testing.assert_allclose(host(be, a)[keep], 1 / (1 - rate), rtol=1e-12)


def test_backends_agree_bit_for_bit_on_elementwise_and_topology(topo_backend):
    """Seeded draws are backend-independent; values of dropout equal to the last bit."""
    be, cpu = topo_backend, CpuBackend()
    rng = np.random.default_rng(13)
    z = rng.standard_normal((30, 17)).astype(np.float32)
    bias = rng.standard_normal(30).astype(np.float32)
    a1, d1 = be.bias_act_dropout(be.asarray(z), be.asarray(bias), -0.6, 0.25, 99)
    a2, d2 = cpu.bias_act_dropout(z, bias, -0.6, 0.25, 99)
    assert host(be, a1).tobytes() == a2.tobytes() and host(be, d1).tobytes() == d2.tobytes()
    w_sp = random_csr(rng, 40, 60, 0.1)
    r1, c1 = be.sample_absent(to_backend(be, w_sp), 300, np.random.default_rng(5))
    r2, c2 = cpu.sample_absent(to_backend(cpu, w_sp), 300, np.random.default_rng(5))
    np.testing.assert_array_equal(host(be, r1), r2)
    np.testing.assert_array_equal(host(be, c1), c2)


# --- thread-count independence ------------------------------------------------------------------
def same_bits(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what} differs between 1 and 2 threads"


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(dtype):
    one, two = parallel_cpu(1), parallel_cpu(2)  # every kernel on its thread count
    assert (one.num_threads, two.num_threads) == (1, 2)
    rng = np.random.default_rng(14)
    for n_out, n_in, n_batch in [(300, 400, 37), (1000, 50, 1), (3, 2000, 6)]:
        w_sp = random_csr(rng, n_out, n_in, 0.05, dtype=dtype)
        w1, w2 = to_backend(one, w_sp), to_backend(two, w_sp)
        x = rng.standard_normal((n_in, n_batch)).astype(dtype)
        dy = rng.standard_normal((n_out, n_batch)).astype(dtype)
        same_bits(one.matmul(x, w1), two.matmul(x, w2), "matmul")
        same_bits(one.matmul_t(dy, w1), two.matmul_t(dy, w2), "matmul_t")
        same_bits(one.weight_grad(x, dy, w1), two.weight_grad(x, dy, w2), "weight_grad")
        for need_dx in (True, False):
            (dx1, g1), (dx2, g2) = (one.backward(x, dy, w1, need_dx),
                                    two.backward(x, dy, w2, need_dx))
            same_bits(g1, g2, "backward grad")
            if need_dx:
                same_bits(dx1, dx2, "backward dx")
        rows = rng.integers(0, n_out, 5000)
        cols = rng.integers(0, n_in, 5000)
        same_bits(one.sampled_grad(x, dy, rows, cols), two.sampled_grad(x, dy, rows, cols),
                  "sampled_grad")
        bias = rng.standard_normal(n_out).astype(dtype)
        for k1, k2 in zip(one.bias_act_dropout(dy, bias, -0.6, 0.3, 7),
                          two.bias_act_dropout(dy, bias, -0.6, 0.3, 7), strict=True):
            same_bits(k1, k2, "bias_act_dropout")
        k = w_sp.nnz // 3
        same_bits(one.select(np.abs(w1.data), k, False), two.select(np.abs(w2.data), k, False),
                  "select")
        r1, c1 = one.sample_absent(w1, k, np.random.default_rng(3))
        r2, c2 = two.sample_absent(w2, k, np.random.default_rng(3))
        same_bits(r1, r2, "sample_absent rows")
        same_bits(c1, c2, "sample_absent cols")
        keep = rng.random(w_sp.nnz) < 0.7
        vals = rng.standard_normal(k).astype(dtype)
        state = rng.standard_normal(w_sp.nnz).astype(dtype)
        n1, (s1,) = one.rebuild(w1, keep, r1, c1, vals, state)
        n2, (s2,) = two.rebuild(w2, keep, r2, c2, vals, state)
        for name in ("indptr", "indices", "data"):
            same_bits(getattr(n1, name), getattr(n2, name), f"rebuild {name}")
        same_bits(s1, s2, "rebuild state")
    e1 = erdos_renyi(500, 300, 10, rng=4, backend=one, dtype=dtype)
    e2 = erdos_renyi(500, 300, 10, rng=4, backend=two, dtype=dtype)
    for name in ("indptr", "indices", "data"):
        same_bits(getattr(e1, name), getattr(e2, name), f"erdos_renyi {name}")


def test_cpu_batch_arrays_are_64_byte_aligned():
    """Products read feature-major rows with AVX-512 loads: a batch array 16 bytes off a cache
    line (what large NumPy allocations get) makes them 1.5-1.8x slower."""
    from sparsekit._align import aligned_empty, feature_major_batch

    be = CpuBackend(1)
    rng = np.random.default_rng(0)
    w = erdos_renyi(300, 500, epsilon=5, rng=rng, backend=be)
    x = feature_major_batch(rng.standard_normal((400, 500), dtype=np.float32),
                            rng.permutation(400)[:128], np.float32)
    assert x.shape == (500, 128) and x.flags.c_contiguous and x.ctypes.data % 64 == 0
    outs = [be.matmul(x, w), be.matmul_t(be.matmul(x, w), w),
            *be.bias_act_dropout(be.matmul(x, w), np.zeros(300, np.float32), 0.0, 0.5, 1),
            be.backward(x, be.matmul(x, w), w)[0]]
    assert all(o.ctypes.data % 64 == 0 for o in outs)
    for shape in [1, (3, 5), (1000, 128)]:
        assert aligned_empty(shape, np.float64).ctypes.data % 64 == 0
    assert not aligned_empty((7, 3), np.float32, zero=True).any()


# --- register tiles and batch tiles of the CPU products ----------------------------------------
# The CPU kernels hold up to 8 vectors of a batch row in registers (128 float32 / 64 float64 with
# AVX-512), then 4, 2, 1 vectors and a scalar tail; layers whose gathered operand outgrows L2
# walk the batch in tiles of 1, 2 or 4 vectors (forced here with spmm._tuning).
WIDE_BATCHES = [1, 7, 16, 31, 64, 100, 128, 129, 200, 257]


@pytest.fixture(params=["whole", "tiled1", "tiled2", "tiled4"])
def cpu_tiling(request):
    from sparsekit._cython import spmm

    old = spmm._tuning()
    if request.param != "whole":
        spmm._tuning(tile_bytes=0, prefetch_bytes=0, tile_vecs=int(request.param[-1]),
                     block_nnz=37, tile_fused=True, tile_t=True)
    yield request.param
    spmm._tuning(*old)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_products_on_wide_batches(cpu_tiling, dtype, index_dtype):
    be = parallel_cpu(2)  # every product on two threads, however small
    rng = np.random.default_rng(15)
    shapes = [(40, 70, 0.2), (5, 3, 1.0), (30, 20, 0.0), (90, 60, 0.05)]
    for n_out, n_in, density in shapes:
        w_sp = random_csr(rng, n_out, n_in, density, dtype=dtype)  # a quarter of rows empty
        w = to_backend(be, w_sp, dtype, index_dtype)
        for n_batch in WIDE_BATCHES:
            what = f"{cpu_tiling} {w!r} batch {n_batch}"
            x = rng.uniform(-1, 1, (n_in, n_batch)).astype(dtype)
            dy = rng.uniform(-1, 1, (n_out, n_batch)).astype(dtype)
            assert_close(be.matmul(x, w), ref.matmul(w_sp, x), ref.matmul(abs(w_sp), abs(x)),
                         n_in, dtype, "matmul " + what)
            want_dx = ref.matmul_t(w_sp, dy)
            dx_scale = ref.matmul_t(abs(w_sp), abs(dy))
            assert_close(be.matmul_t(dy, w), want_dx, dx_scale, n_out, dtype, "matmul_t " + what)
            want_g = ref.weight_grad(w_sp, x, dy)
            g_scale = ref.weight_grad(w_sp, abs(x), abs(dy))
            assert_close(be.weight_grad(x, dy, w), want_g, g_scale, n_batch, dtype,
                         "weight_grad " + what)
            for need_dx in (True, False):
                dx, g = be.backward(x, dy, w, need_dx=need_dx)
                assert_close(g, want_g, g_scale, n_batch, dtype, "backward grad " + what)
                if need_dx:
                    assert_close(dx, want_dx, dx_scale, n_out, dtype, "backward dx " + what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_products_at_every_batch_remainder(dtype):
    """Every batch from 1 to two register tiles and one more: the rest of a row after its
    whole tiles is one walk whose last vector is masked (1 to 8 vectors, 1 to all lanes), and
    no lane of it may read or write past the batch (the masked moves) or into the next row."""
    be = parallel_cpu(2)
    rng = np.random.default_rng(19)
    w_sp = random_csr(rng, 23, 31, 0.3, dtype=dtype)
    w = to_backend(be, w_sp, dtype, np.int32)
    lanes = 64 // np.dtype(dtype).itemsize
    for n_batch in range(1, 2 * 8 * lanes + 2):
        what = f"batch {n_batch}"
        x = rng.uniform(-1, 1, (31, n_batch)).astype(dtype)
        dy = rng.uniform(-1, 1, (23, n_batch)).astype(dtype)
        y = be.matmul(x, w)
        assert_close(y, ref.matmul(w_sp, x), ref.matmul(abs(w_sp), abs(x)), 31, dtype,
                     "matmul " + what)
        np.testing.assert_array_equal(be.matmul(np.ascontiguousarray(x[:, -1:]), w)[:, 0],
                                      y[:, -1], err_msg="matmul, last sample alone, " + what)
        want_dx = ref.matmul_t(w_sp, dy)
        dx_scale = ref.matmul_t(abs(w_sp), abs(dy))
        assert_close(be.matmul_t(dy, w), want_dx, dx_scale, 23, dtype, "matmul_t " + what)
        want_g = ref.weight_grad(w_sp, x, dy)
        g_scale = ref.weight_grad(w_sp, abs(x), abs(dy))
        assert_close(be.weight_grad(x, dy, w), want_g, g_scale, n_batch, dtype,
                     "weight_grad " + what)
        dx, g = be.backward(x, dy, w, need_dx=True)
        assert_close(g, want_g, g_scale, n_batch, dtype, "backward grad " + what)
        assert_close(dx, want_dx, dx_scale, 23, dtype, "backward dx " + what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_tiled_products_do_not_depend_on_thread_count(cpu_tiling, dtype):
    one, two = parallel_cpu(1), parallel_cpu(2)  # the thresholds would keep these on one thread
    rng = np.random.default_rng(16)
    for n_out, n_in, n_batch in [(300, 400, 200), (64, 900, 129), (500, 40, 128)]:
        w_sp = random_csr(rng, n_out, n_in, 0.05, dtype=dtype)
        w1, w2 = to_backend(one, w_sp), to_backend(two, w_sp)
        x = rng.standard_normal((n_in, n_batch)).astype(dtype)
        dy = rng.standard_normal((n_out, n_batch)).astype(dtype)
        same_bits(one.matmul(x, w1), two.matmul(x, w2), "matmul")
        same_bits(one.matmul_t(dy, w1), two.matmul_t(dy, w2), "matmul_t")
        same_bits(one.weight_grad(x, dy, w1), two.weight_grad(x, dy, w2), "weight_grad")
        for need_dx in (True, False):
            (dx1, g1), (dx2, g2) = one.backward(x, dy, w1, need_dx), two.backward(x, dy, w2, need_dx)
            same_bits(g1, g2, "backward grad")
            if need_dx:
                same_bits(dx1, dx2, "backward dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_products_of_a_sample_do_not_depend_on_its_batch(cpu_tiling, dtype):
    """Bit for bit, a sample's column of ``matmul`` and ``matmul_t`` is the same alone or at any
    position of a batch of any width (register tiles of 8/4/2/1 vectors, the scalar tail, batch
    tiles): scikit-learn's estimator checks require predictions invariant to sample order and
    to taking subsets."""
    be = parallel_cpu(2)  # every product on two threads, however small
    rng = np.random.default_rng(17)
    w = to_backend(be, random_csr(rng, 50, 80, 0.2, dtype=dtype))
    for n_batch in [17, 20, 60, 130, 257]:
        x = rng.standard_normal((80, n_batch)).astype(dtype)
        dy = rng.standard_normal((50, n_batch)).astype(dtype)
        y_full, dx_full = be.matmul(x, w), be.matmul_t(dy, w)
        for j in range(n_batch):
            np.testing.assert_array_equal(be.matmul(np.ascontiguousarray(x[:, [j]]), w)[:, 0],
                                          y_full[:, j], err_msg=f"matmul batch {n_batch} col {j}")
            np.testing.assert_array_equal(be.matmul_t(np.ascontiguousarray(dy[:, [j]]), w)[:, 0],
                                          dx_full[:, j], err_msg=f"matmul_t batch {n_batch} col {j}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_products_on_misaligned_operands(dtype, threads):
    """An operand 16 bytes off a cache line (what np.load and large np.empty give) is realigned
    by a copy when it is gathered often enough: the pattern gradients' by a copy per thread
    while it fits in L2 and the copies stay small, by one shared copy past that (tile_bytes or
    thread_copy_bytes 0 here); the results are the bits of the same calls on aligned copies
    either way."""
    from sparsekit._cython import spmm

    be = parallel_cpu(threads)  # every product on these threads, however small
    rng = np.random.default_rng(18)
    w_sp = random_csr(rng, 60, 50, 0.3, dtype=dtype)
    w = to_backend(be, w_sp)
    n_batch = 64

    def misaligned(n):
        buf = np.empty(n * n_batch * np.dtype(dtype).itemsize + 128, np.uint8)
        start = (16 - buf.ctypes.data) % 64
        a = buf[start:start + n * n_batch * np.dtype(dtype).itemsize].view(dtype)
        a = a.reshape(n, n_batch)
        a[...] = rng.uniform(-1, 1, (n, n_batch))
        assert a.ctypes.data % 64 == 16
        return a

    from sparsekit._align import aligned_empty

    x, dy = misaligned(50), misaligned(60)
    xa, dya = aligned_empty(x.shape, dtype), aligned_empty(dy.shape, dtype)
    xa[...], dya[...] = x, dy
    old = spmm._tuning()
    try:
        results = []
        # realigned per thread, by one shared copy (tile_bytes 0 may also tile the walks, so
        # each case is compared with its own aligned call), never
        cases = ({"realign_reuse": 0}, {"realign_reuse": 0, "thread_copy_bytes": 0},
                 {"realign_reuse": 0, "tile_bytes": 0}, {"realign_reuse": 10**9})
        for case in cases:
            spmm._tuning(**case)
            got, want = ([be.matmul(xs, w), be.matmul_t(dys, w), be.weight_grad(xs, dys, w),
                          *be.backward(xs, dys, w)] for xs, dys in ((x, dy), (xa, dya)))
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=str(case))
            results.append(got)
            spmm._tuning(*old)
    finally:
        spmm._tuning(*old)
    for other in (results[1], results[3]):
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    assert_close(results[0][0], ref.matmul(w_sp, x), ref.matmul(abs(w_sp), abs(x)), 50, dtype,
                 "misaligned matmul")
    assert_close(results[0][2], ref.weight_grad(w_sp, x, dy),
                 ref.weight_grad(w_sp, abs(x), abs(dy)), n_batch, dtype, "misaligned SDDMM")


@pytest.mark.parametrize("threads", [2, 3])
def test_pattern_gradients_share_one_copy_made_in_chunks(threads):
    """An operand too large to copy once per thread gets one aligned copy made by the whole
    team in chunks of 2^14 values (products.hh, sk_team_copy): x here is 5 chunks and dy 2,
    each with a short last one, so every thread copies some and waits for the others' before
    it gathers.  The bits are those of the same calls on aligned operands."""
    from sparsekit._align import aligned_empty
    from sparsekit._cython import spmm

    be = parallel_cpu(threads)
    rng = np.random.default_rng(20)
    n_out, n_in, n_batch = 200, 530, 128  # x: 67 840 values, dy: 25 600

    def off_line(n, offset):
        buf = aligned_empty(n * n_batch + 16, np.float32)
        a = buf[offset // 4:offset // 4 + n * n_batch].reshape(n, n_batch)
        a[...] = rng.uniform(-1, 1, a.shape)
        return a

    w_sp = random_csr(rng, n_out, n_in, 0.05, dtype=np.float32)
    w = to_backend(be, w_sp)
    x, dy = off_line(n_in, 16), off_line(n_out, 48)
    xa, dya = aligned_empty(x.shape, np.float32), aligned_empty(dy.shape, np.float32)
    xa[...], dya[...] = x, dy
    old = spmm._tuning()
    try:
        spmm._tuning(realign_reuse=0, thread_copy_bytes=0)
        got = [be.weight_grad(x, dy, w), *be.backward(x, dy, w)]
    finally:
        spmm._tuning(*old)
    want = [be.weight_grad(xa, dya, w), *be.backward(xa, dya, w)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_close(got[0], ref.weight_grad(w_sp, x, dy), ref.weight_grad(w_sp, abs(x), abs(dy)),
                 n_batch, np.float32, "SDDMM on a shared copy")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_vecs", [None, 1, 2, 4])
def test_cpu_products_walk_misaligned_rows_from_the_line(dtype, tile_vecs):
    """Forward and matmul_t on an operand that starts at any element of a cache line (rows of
    whole lines) give the bits of the same call on an aligned copy, for every batch width the
    walks treat apart (one vector, a register tile, a tile and one more vector, several tiles)
    and batch-tiled walks; AVX-512 builds mask the lanes before the row instead of copying."""
    from sparsekit._cython import spmm

    item = np.dtype(dtype).itemsize
    lanes = 64 // item
    be = parallel_cpu(2)
    rng = np.random.default_rng(19)
    dense = random_csr(rng, 37, 29, 0.3, dtype=dtype).toarray()
    dense[5] = 0  # an empty output row
    dense[:, 3] = 0  # an input no output reads (an empty row of the transposed index)
    w_sp = sp.csr_matrix(dense)
    w = to_backend(be, w_sp)

    def placed(n_rows, n_batch, offset):
        buf = np.empty(n_rows * n_batch * item + 128, np.uint8)
        start = (offset - buf.ctypes.data) % 64
        a = buf[start:start + n_rows * n_batch * item].view(dtype).reshape(n_rows, n_batch)
        a[...] = rng.uniform(-1, 1, (n_rows, n_batch))
        assert a.ctypes.data % 64 == offset
        return a

    old = spmm._tuning()
    try:
        if tile_vecs is not None:  # every gathered operand "outgrows L2": batch-tiled walks
            spmm._tuning(tile_bytes=0, tile_vecs=tile_vecs, tile_t=True, realign_reuse=10**9)
        else:
            spmm._tuning(realign_reuse=10**9)  # the copy, where it is still made, never
        for n_batch in (lanes, 2 * lanes, 8 * lanes, 9 * lanes, 17 * lanes):
            for offset in range(item, 64, item):
                x, dy = placed(29, n_batch, offset), placed(37, n_batch, offset)
                for got, want, what in (
                        (be.matmul(x, w), be.matmul(x.copy(), w), "matmul"),
                        (be.matmul_t(dy, w), be.matmul_t(dy.copy(), w), "matmul_t")):
                    np.testing.assert_array_equal(
                        got, want, err_msg=f"{what} batch {n_batch} offset {offset}")
                assert_close(be.matmul(x, w), ref.matmul(w_sp, x), ref.matmul(abs(w_sp), abs(x)),
                             29, dtype, f"misaligned matmul, batch {n_batch}")
    finally:
        spmm._tuning(*old)


# --- the generic xp products of Backend: where a new backend starts, and products="cupy" --------
class GenericProducts(Backend):
    """Nothing but the base class's code."""

    name = "generic"


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("test", [test_matmul, test_matmul_t, test_weight_grad, test_sampled_grad],
                         ids=lambda f: f.__name__)
def test_generic_products(test, dtype, index_dtype):
    test(GenericProducts(), dtype, index_dtype)


@pytest.mark.parametrize("need_dx", [True, False])
def test_generic_backward(need_dx):
    test_backward(GenericProducts(), np.float64, np.int32, need_dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_products_edge_cases(dtype):
    test_products_with_empty_batch(GenericProducts(), dtype)
    test_non_contiguous_operands_are_read_correctly(GenericProducts())


def test_generic_products_in_any_chunking():
    """The gathered dots and the scattered products bound their memory by chunks of the list:
    chunks smaller than, equal to and larger than it give the oracle's result."""
    from sparsekit.backends.base import _gathered_dots, _scatter_products

    rng = np.random.default_rng(7)
    w_sp = random_csr(rng, 37, 23, 0.3)
    rows, cols = ref.pattern(w_sp)
    x = rng.uniform(-1, 1, (23, 9))
    dy = rng.uniform(-1, 1, (37, 9))
    for chunk in (9, 50, 9 * w_sp.nnz, 10**6):
        np.testing.assert_allclose(_gathered_dots(x, dy, rows, cols, chunk),
                                   ref.weight_grad(w_sp, x, dy), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_scatter_products(np, rows, cols, w_sp.data, x, 37, chunk),
                                   ref.matmul(w_sp, x), rtol=1e-12, atol=1e-12)
    assert _gathered_dots(x[:, :0], dy[:, :0], np.array([1]), np.array([2])).tolist() == [0]


def test_generic_sampled_grad_refuses_bad_candidates():
    be = GenericProducts()
    x, dy = np.ones((4, 3)), np.ones((5, 3))
    for rows, cols, message in [([0, 5], [0, 0], "rows must lie"), ([0, -1], [0, 0], "rows"),
                                ([0, 0], [4, 0], "cols must lie"), ([0], [0, 1], "1-D of one")]:
        with pytest.raises(ValueError, match=message):
            be.sampled_grad(x, dy, np.array(rows), np.array(cols))
    with pytest.raises(ValueError, match="batch"):
        be.sampled_grad(x, np.ones((5, 2)), np.array([0]), np.array([0]))


def test_a_product_alone_and_a_whole_pass_have_their_own_thread_thresholds(monkeypatch):
    """A product called on its own opens a parallel region of its own, a pass shares one team
    with all its layers: at a size between the two thresholds the pass gets every thread and
    the product one."""
    from sparsekit._cython import backend as cpu_backend
    from sparsekit.nn.model import SparseMLP

    be = CpuBackend(num_threads=2)
    assert be.min_team_work < be.min_parallel_work
    seen = {}

    def spy(module, name):
        real = getattr(module, name)

        def call(*args):
            seen[name] = args[-2] if name == "forward" else args[-1]
            return real(*args)
        monkeypatch.setattr(module, name, call)

    spy(cpu_backend.spmm, "matmul")
    spy(cpu_backend.mlp, "forward")
    model = SparseMLP([64, 256, 10], epsilon=10, backend=be, seed=0)
    n_batch = -(-be.min_team_work // sum(layer.nnz for layer in model.layers))
    assert model.layers[0].nnz * n_batch < be.min_parallel_work
    x = np.ones((64, n_batch), np.float32)
    be.matmul(x, model.layers[0].w)
    be.mlp_forward(model.layers, model.activations, x, 0.0, [0])
    assert seen == {"matmul": 1, "forward": 2}
