"""Erdős–Rényi initialisation: connection count, uniform positions, value ranges, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from reference import host

from sparsekit.nn import init as init_mod
from sparsekit.nn.init import er_connections, erdos_renyi, init_values


def test_er_connections():
    assert er_connections(1000, 784, 20) == 35_680
    assert er_connections(10, 1000, 20) == 10_000  # capped: the layer is dense
    for args in [(0, 5, 20), (5, 0, 20), (5, 5, 0), (5, 5, -1.0), (5, 5, float("nan")),
                 (1, 1, 0.1)]:  # the last: a layer without connections
        with pytest.raises(ValueError):
            er_connections(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erdos_renyi(topo_backend, dtype):
    be = topo_backend
    w = erdos_renyi(300, 784, 20, rng=1, backend=be, dtype=dtype)
    w.validate()
    assert w.shape == (300, 784) and w.nnz == er_connections(300, 784, 20)
    assert w.dtype == dtype and w.indices.dtype == np.int32
    data = host(be, w.data)
    limit = np.sqrt(6 / 784)
    assert np.all(np.abs(data) <= limit) and np.abs(data).max() > 0.9 * limit
    assert abs(data.mean()) < 0.1 * limit
    # Positions are uniform: every output neuron gets about nnz / n_out inputs.
    counts = np.diff(host(be, w.indptr))
    assert abs(counts.mean() - w.nnz / 300) < 1e-9 and counts.std() < 3 * np.sqrt(w.nnz / 300)
    again = erdos_renyi(300, 784, 20, rng=1, backend=be, dtype=dtype)
    np.testing.assert_array_equal(host(be, again.indices), host(be, w.indices))
    np.testing.assert_array_equal(host(be, again.data), data)
    other = erdos_renyi(300, 784, 20, rng=2, backend=be, dtype=dtype)
    assert not np.array_equal(host(be, other.indices), host(be, w.indices))


def test_erdos_renyi_same_on_every_backend(topo_backend):
    from sparsekit._cython.backend import CpuBackend

    w = erdos_renyi(120, 90, 7, rng=3, backend=topo_backend)
    ref = erdos_renyi(120, 90, 7, rng=3, backend=CpuBackend())
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(host(topo_backend, getattr(w, name)), getattr(ref, name))


def _serial_values(rows, shape, rng, dtype, init, fan_in, counts):
    """What init_values computed before it could draw in parallel: NumPy's uniform in one go."""
    n_out, n_in = shape
    fin = (float(n_in) if fan_in == "dense"
           else np.maximum(np.asarray(counts, np.float64)[rows], 1.0))
    denom = fin if init == "he_uniform" else fin + (n_out if fan_in == "dense" else fin)
    vals = rng.uniform(-1.0, 1.0, rows.shape[0])
    vals *= np.sqrt(6.0 / denom)
    return vals.astype(dtype)


def _same_state(a, b) -> bool:
    """Bit generator states equal (MT19937's and Philox's hold arrays)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return bool(np.array_equal(a, b))


@pytest.mark.parametrize("m", [0, 1, 5, init_mod.MIN_CHUNK * 2 - 1, init_mod.MIN_CHUNK * 3 + 7])
@pytest.mark.parametrize("num_threads", [1, 2, 3, 8])
@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.PCG64DXSM,
                                           np.random.MT19937, np.random.Philox])
def test_init_values_on_threads_gives_numpys_serial_draw(m, num_threads, bit_generator):
    """Each thread count gives the values of one serial ``uniform`` draw and leaves the
    generator in its state, the buffered half of a 32-bit draw included (a generator that
    cannot jump ahead draws serially)."""
    rows = np.random.default_rng(m).integers(0, 40, m)
    counts = np.random.default_rng(1).integers(0, 30, 40)
    for init, fan_in, dtype in [("he_uniform", "dense", np.float32),
                                ("xavier_uniform", "actual", np.float64)]:
        want_rng = np.random.Generator(bit_generator(7))
        got_rng = np.random.Generator(bit_generator(7))
        for g in (want_rng, got_rng):
            g.integers(0, 10, dtype=np.uint32)  # leaves half a 64-bit draw buffered
        want = _serial_values(rows, (40, 90), want_rng, dtype, init, fan_in, counts)
        got = init_values(rows, (40, 90), got_rng, dtype, init, fan_in, counts, num_threads)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert _same_state(got_rng.bit_generator.state, want_rng.bit_generator.state)
        assert got_rng.integers(0, 1 << 30, 3, dtype=np.uint32).tolist() == \
            want_rng.integers(0, 1 << 30, 3, dtype=np.uint32).tolist()


def test_init_values_takes_a_legacy_random_state():
    rows = np.arange(3 * init_mod.MIN_CHUNK) % 7
    want_rng, got_rng = np.random.RandomState(3), np.random.RandomState(3)
    want = _serial_values(rows, (7, 100), want_rng, np.float32, "he_uniform", "dense", None)
    got = init_values(rows, (7, 100), got_rng, np.float32, num_threads=4)
    np.testing.assert_array_equal(got, want)
    assert got_rng.randint(1 << 30) == want_rng.randint(1 << 30)


def test_init_values_options():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(4), [1, 10, 100, 0])
    counts = np.bincount(rows, minlength=4)
    xavier = init_values(rows, (4, 50), rng, np.float32, "xavier_uniform")
    assert np.all(np.abs(xavier) <= np.sqrt(6 / 54))
    actual = init_values(rows, (4, 50), rng, np.float64, fan_in="actual", row_counts=counts)
    assert np.all(np.abs(actual) <= np.sqrt(6 / counts[rows]))
    assert np.abs(actual[rows == 0]).max() > np.sqrt(6 / 50)  # wider than the dense fan-in
    normal = init_values(rows, (4, 50), rng, np.float32, "normal")
    assert normal.dtype == np.float32 and 0.05 < normal.std() < 0.15
    with pytest.raises(ValueError, match="init must be one of"):
        init_values(rows, (4, 50), rng, np.float32, "glorot")
    with pytest.raises(ValueError, match="fan_in must be one of"):
        init_values(rows, (4, 50), rng, np.float32, fan_in="sparse")
    with pytest.raises(ValueError, match="row_counts"):
        init_values(rows, (4, 50), rng, np.float32, fan_in="actual")
