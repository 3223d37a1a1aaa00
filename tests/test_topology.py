"""Properties of sample_absent and rebuild (hypothesis), sampling uniformity, dense layers."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import check_sample_absent, csr_equal, host, parallel_cpu, random_csr, to_backend
from scipy import stats

from sparsekit.nn.csr import CSR
from sparsekit.nn.init import erdos_renyi

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layers(draw, max_dim: int = 30):
    """A random SciPy CSR (empty rows, nnz = 0 and full layers included) and index dtype."""
    n_out = draw(st.integers(1, max_dim))
    n_in = draw(st.integers(1, max_dim))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.8, 1.0]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    w = random_csr(np.random.default_rng(seed), n_out, n_in, density, dtype=dtype,
                   empty_row_frac=draw(st.sampled_from([0.0, 0.3])))
    return w, draw(st.sampled_from([np.int32, np.int64]))


def free_grid(w: sp.csr_matrix) -> np.ndarray:
    """Boolean (n_out, n_in) grid of absent positions (tests only: tiny layers)."""
    return w.toarray() == 0  # random_csr stores no explicit zeros


def positive_weights(draw, n: int):
    kind = draw(st.sampled_from(["none", "uniform", "sparse"]))
    if kind == "none":
        return None
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 2.0, n)
    if kind == "sparse":
        p[rng.random(n) < 0.5] = 0
        p[rng.integers(n)] = 1.0  # never all zero
    return p


# --- sample_absent --------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_sample_absent_properties(topo_backend, data):
    be = topo_backend
    w_sp, idt = data.draw(layers())
    row_w = positive_weights(data.draw, w_sp.shape[0])
    col_w = positive_weights(data.draw, w_sp.shape[1])
    free = free_grid(w_sp)
    allowed = free.copy()
    if row_w is not None:
        allowed &= (row_w > 0)[:, None]
    if col_w is not None:
        allowed &= (col_w > 0)[None, :]
    room = int(allowed.sum())
    m = data.draw(st.integers(0, room))
    seed = data.draw(st.integers(0, 2**32 - 1))
    w = to_backend(be, w_sp, index_dtype=idt)
    rows, cols = be.sample_absent(w, m, np.random.default_rng(seed), row_weights=row_w,
                                  col_weights=col_w)
    rows, cols = host(be, rows), host(be, cols)
    check_sample_absent(w_sp, rows, cols, m, row_w, col_w)
    if m == room:  # nothing left to choose: it must be exactly the allowed positions
        r_all, c_all = np.nonzero(allowed)
        np.testing.assert_array_equal(rows, r_all)
        np.testing.assert_array_equal(cols, c_all)
    with pytest.raises(ValueError, match="m=|non-zero sampling weight"):
        be.sample_absent(w, room + 1, np.random.default_rng(seed), row_weights=row_w,
                         col_weights=col_w)


def chi2_pvalue(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.shape[0]
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, counts.shape[0] - 1))


@pytest.mark.parametrize("shape, density, m", [
    ((20, 30), 0.1, 40),   # sparse layer: rejection sampling
    ((8, 9), 0.6, 12),     # nearly full layer: the free positions are listed
])
def test_sample_absent_is_uniform(topo_backend, shape, density, m):
    """Chi-square (loose: p > 1e-4 with fixed seeds) over the free positions, and per draw."""
    be = topo_backend
    w_sp = random_csr(np.random.default_rng(0), *shape, density, empty_row_frac=0.0)
    w = to_backend(be, w_sp)
    free_keys = np.flatnonzero(free_grid(w_sp).ravel())
    rng = np.random.default_rng(1)
    counts = np.zeros(shape[0] * shape[1], np.int64)
    n_trials = 60_000 // m
    for _ in range(n_trials):
        rows, cols = be.sample_absent(w, m, rng)
        counts[host(be, rows).astype(np.int64) * shape[1] + host(be, cols)] += 1
    assert counts.sum() == n_trials * m
    assert counts[np.setdiff1d(np.arange(counts.shape[0]), free_keys)].sum() == 0
    assert chi2_pvalue(counts[free_keys]) > 1e-4


def test_sample_absent_follows_row_weights(backend):
    """With row marginals, rows are drawn about in proportion to their weights."""
    w_sp = sp.csr_matrix((4, 200))
    w = to_backend(backend, sp.csr_matrix(w_sp, dtype=np.float32))
    weights = np.array([1.0, 2.0, 3.0, 0.0])
    rng = np.random.default_rng(2)
    counts = np.zeros(4)
    for _ in range(400):
        rows, _ = backend.sample_absent(w, 5, rng, row_weights=weights)
        counts += np.bincount(host(backend, rows), minlength=4)
    assert counts[3] == 0
    np.testing.assert_allclose(counts / counts.sum(), weights / weights.sum(), atol=0.03)


def test_weighted_sampling_on_a_nearly_full_layer(topo_backend):
    """Little weight on the free positions must not stall the sampler (it once gave up after
    200 rejection rounds about a third of the time here), and draws follow the weights."""
    be = topo_backend
    dense = np.ones((30, 30), np.float32)
    dense[0, 0] = 0
    w = to_backend(be, sp.csr_matrix(dense))
    weights = np.full(30, 2.0)
    weights[0] = 0.1
    for seed in range(30):
        rows, cols = be.sample_absent(w, 1, np.random.default_rng(seed), row_weights=weights,
                                      col_weights=weights)
        assert (int(host(be, rows)[0]), int(host(be, cols)[0])) == (0, 0)
    dense = np.ones((3, 4), np.float32)
    dense[:, 0] = 0
    w = to_backend(be, sp.csr_matrix(dense))
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    for _ in range(3000):
        rows, _ = be.sample_absent(w, 1, rng, row_weights=np.array([1.0, 2.0, 3.0]))
        counts[int(host(be, rows)[0])] += 1
    np.testing.assert_allclose(counts / 3000, [1 / 6, 2 / 6, 3 / 6], atol=0.03)


# --- rebuild --------------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_rebuild_properties(topo_backend, data):
    be = topo_backend
    w_sp, idt = data.draw(layers())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    nnz = w_sp.nnz
    keep = rng.random(nnz) < data.draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    # New positions anywhere not kept: absent ones and re-inserted dropped ones.
    open_grid = free_grid(w_sp)
    r_old, c_old = ref.pattern(w_sp)
    open_grid[r_old[~keep], c_old[~keep]] = True
    open_keys = np.flatnonzero(open_grid.ravel())
    m = data.draw(st.integers(0, open_keys.shape[0]))
    new_keys = rng.permutation(rng.choice(open_keys, m, replace=False))  # any order
    n_in = w_sp.shape[1]
    new_rows, new_cols = new_keys // n_in, new_keys % n_in
    if data.draw(st.booleans()):
        new_rows, new_cols = new_rows.astype(idt), new_cols.astype(idt)
    new_vals = rng.standard_normal(m).astype(w_sp.dtype)
    new_vals[rng.random(m) < 0.2] = 0  # GSE grows weights at exactly 0: they stay stored
    momentum = rng.standard_normal(nnz).astype(np.float32)
    age = rng.integers(0, 100, nnz)
    w = to_backend(be, w_sp, index_dtype=idt)
    new_w, states = be.rebuild(w, be.asarray(keep), be.asarray(new_rows), be.asarray(new_cols),
                               be.asarray(new_vals), be.asarray(w_sp.data.copy()),
                               be.asarray(momentum), be.asarray(age))
    assert isinstance(new_w, CSR) and len(states) == 3
    new_w.validate()  # sorted, unique, in bounds, finite, right index dtype
    assert new_w.shape == w_sp.shape and new_w.dtype == w_sp.dtype
    assert new_w.nnz == int(keep.sum()) + m
    got = new_w.to_scipy()
    want, want_states = ref.rebuild(w_sp, keep, new_rows, new_cols, new_vals, w_sp.data,
                                    momentum, age)
    csr_equal(got, want)
    old_data, mom, ages = (host(be, s) for s in states)
    for s, orig, exp in zip((old_data, mom, ages), (w_sp.data, momentum, age), want_states,
                            strict=True):
        assert s.dtype == orig.dtype and s.shape == (new_w.nnz,)
        np.testing.assert_array_equal(s, exp)
    # The state that was the old data equals the new data where kept, and is 0 where new.
    is_new = np.ones(new_w.nnz, bool)
    kept_keys = (r_old * n_in + c_old)[keep]
    g_rows, g_cols = ref.pattern(got)
    is_new[np.isin(g_rows * n_in + g_cols, kept_keys)] = False
    assert int(is_new.sum()) == m
    np.testing.assert_array_equal(old_data[~is_new], got.data[~is_new])
    np.testing.assert_array_equal(old_data[is_new], 0)


def test_rebuild_accepts_new_values_of_another_float_dtype(topo_backend):
    be = topo_backend
    w_sp = random_csr(np.random.default_rng(3), 5, 6, 0.3, dtype=np.float32)
    w = to_backend(be, w_sp)
    free = np.argwhere(free_grid(w_sp))[:2]
    new_w, _ = be.rebuild(w, be.asarray(np.ones(w.nnz, bool)), be.asarray(free[:, 0]),
                          be.asarray(free[:, 1]), be.asarray(np.array([0.5, -1.25])))
    assert new_w.dtype == np.float32 and new_w.nnz == w.nnz + 2


# --- dense and nearly dense layers ----------------------------------------------------------
def test_fully_dense_layer(topo_backend):
    """ε large enough makes a 10 x 1000 layer dense; a SET step must then regrow exactly the
    pruned positions, the only free ones."""
    be = topo_backend
    w = erdos_renyi(10, 1000, 20, rng=0, backend=be)
    assert w.nnz == 10_000
    w.validate()
    np.testing.assert_array_equal(host(be, w.indptr), np.arange(11) * 1000)
    rows, cols = be.sample_absent(w, 0, np.random.default_rng(0))
    assert host(be, rows).shape == host(be, cols).shape == (0,)
    with pytest.raises(ValueError, match="m=1 .*only 0 are free"):
        be.sample_absent(w, 1, np.random.default_rng(0))

    k = 3000
    drop = be.select(be.xp.abs(w.data), k, largest=False)
    keep = be.xp.ones(w.nnz, dtype=bool)
    keep[drop] = False
    pruned, (mom,) = be.rebuild(w, keep, *(be.asarray(np.zeros(0, np.int64)),) * 2,
                                be.asarray(np.zeros(0, np.float32)), be.asarray(w.data.copy()))
    assert pruned.nnz == 7000
    rows, cols = be.sample_absent(pruned, k, np.random.default_rng(1))
    r_old, c_old = ref.pattern(w.to_scipy())
    dropped = np.sort(host(be, drop))
    np.testing.assert_array_equal(host(be, rows), r_old[dropped])
    np.testing.assert_array_equal(host(be, cols), c_old[dropped])
    vals = be.asarray(np.full(k, 0.25, np.float32))
    regrown, (mom2,) = be.rebuild(pruned, be.xp.ones(pruned.nnz, dtype=bool), rows, cols, vals,
                                  mom)
    assert regrown.nnz == 10_000
    regrown.validate()
    np.testing.assert_array_equal(host(be, regrown.indices), host(be, w.indices))
    data, mom2 = host(be, regrown.data), host(be, mom2)
    old = host(be, w.data)
    np.testing.assert_array_equal(data[dropped], 0.25)
    np.testing.assert_array_equal(mom2[dropped], 0)
    kept = np.setdiff1d(np.arange(10_000), dropped)
    np.testing.assert_array_equal(data[kept], old[kept])
    np.testing.assert_array_equal(mom2[kept], old[kept])


def test_layer_with_few_free_positions(topo_backend):
    be = topo_backend
    full = sp.csr_matrix(np.ones((10, 1000), np.float32))
    holes = np.array([[0, 5], [0, 999], [3, 0], [7, 500], [9, 1], [9, 2], [9, 998]])
    dense = full.toarray()
    dense[holes[:, 0], holes[:, 1]] = 0
    w_sp = sp.csr_matrix(dense)
    w = to_backend(be, w_sp)
    rng = np.random.default_rng(4)
    rows, cols = be.sample_absent(w, 7, rng)
    np.testing.assert_array_equal(np.c_[host(be, rows), host(be, cols)], holes)
    for m in (1, 3, 6):
        rows, cols = be.sample_absent(w, m, rng)
        check_sample_absent(w_sp, host(be, rows), host(be, cols), m)
    # Weighted: only rows 0 and 9 may be drawn, which hold 5 of the holes.
    row_w = np.zeros(10)
    row_w[[0, 9]] = [1.0, 4.0]
    rows, cols = be.sample_absent(w, 5, rng, row_weights=row_w)
    np.testing.assert_array_equal(np.c_[host(be, rows), host(be, cols)], holes[[0, 1, 4, 5, 6]])
    with pytest.raises(ValueError, match="non-zero sampling weight"):
        be.sample_absent(w, 6, rng, row_weights=row_w)
    with pytest.raises(ValueError, match="m=8"):
        be.sample_absent(w, 8, rng)


def test_set_step_on_er_layer(topo_backend):
    """One SET step: prune the 30 % smallest |w|, regrow as many, nnz constant, states aligned."""
    be = topo_backend
    w = erdos_renyi(60, 90, 5, rng=5, backend=be)
    nnz = w.nnz
    k = int(0.3 * nnz)
    drop = be.select(be.xp.abs(w.data), k, largest=False)
    keep = be.xp.ones(nnz, dtype=bool)
    keep[drop] = False
    assert float(be.xp.abs(w.data)[drop].max()) <= float(be.xp.abs(w.data)[keep].min())
    rows, cols = be.sample_absent(w, k, np.random.default_rng(6))
    check_sample_absent(w.to_scipy(), host(be, rows), host(be, cols), k)
    new_w, (state,) = be.rebuild(w, keep, rows, cols, be.asarray(np.zeros(k, np.float32)),
                                 be.xp.arange(nnz, dtype=be.xp.float32) + 1)
    new_w.validate()
    assert new_w.nnz == nnz
    state = host(be, state)
    assert np.count_nonzero(state == 0) == k
    # Kept entries keep their order, so their old slots (state - 1) increase.
    assert np.all(np.diff(state[state > 0]) > 0)


# --- CPU kernels: per-row uniform sampler, radix select, fused SET prune, one-pass rebuild ------
from sparsekit._cython import sampling, select  # noqa: E402
from sparsekit._cython.backend import CpuBackend  # noqa: E402
from sparsekit.backends import Backend  # noqa: E402


def _sample(w_sp, idt, m, seed, threads):
    return sampling.sample_absent_uniform(w_sp.indptr.astype(idt), w_sp.indices.astype(idt),
                                          w_sp.shape[1], m, np.random.default_rng(seed), threads)


@PROPERTY
@given(data=st.data())
def test_uniform_sampler_kernel_properties(data):
    """Count, distinct, absent, sorted, index dtype; the same answer for 1, 2 and 3 threads and
    from run to run (full rows, empty rows and nnz = 0 come from ``layers``)."""
    w_sp, idt = data.draw(layers())
    free = w_sp.shape[0] * w_sp.shape[1] - w_sp.nnz
    m = data.draw(st.integers(0, free))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rows, cols = _sample(w_sp, idt, m, seed, 1)
    assert rows.dtype == idt and cols.dtype == idt
    check_sample_absent(w_sp, rows, cols, m)
    for threads in (2, 3, 1):
        r2, c2 = _sample(w_sp, idt, m, seed, threads)
        np.testing.assert_array_equal(r2, rows)
        np.testing.assert_array_equal(c2, cols)
    if m == free:
        r_all, c_all = np.nonzero(free_grid(w_sp))
        np.testing.assert_array_equal(rows, r_all)
        np.testing.assert_array_equal(cols, c_all)


def test_uniform_sampler_kernel_is_uniform_over_subsets():
    """Every m-subset of the free positions equally likely (not only every position): a 2 x 3
    layer with one connection has 5 free positions, so 10 pairs, counted over 20 000 draws.
    The per-row draws and the duplicate rounds must not favour any split over rows."""
    w_sp = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], np.float32))
    free_keys = np.flatnonzero(free_grid(w_sp).ravel())
    pairs = {(int(a), int(b)): 0 for i, a in enumerate(free_keys) for b in free_keys[i + 1:]}
    rng = np.random.default_rng(11)
    for _ in range(20_000):
        rows, cols = sampling.sample_absent_uniform(w_sp.indptr, w_sp.indices, 3, 2, rng)
        keys = rows.astype(np.int64) * 3 + cols
        pairs[(int(keys[0]), int(keys[1]))] += 1
    assert chi2_pvalue(np.array(list(pairs.values()))) > 1e-4


@pytest.mark.parametrize("shape, density, m", [
    ((12, 15), 0.5, 60),    # half full, m = 2/3 of the free positions: several rounds
    ((40, 25), 0.05, 30),   # sparse: per-row draws, few duplicates
])
def test_uniform_sampler_kernel_is_uniform_over_positions(shape, density, m):
    w_sp = random_csr(np.random.default_rng(2), *shape, density, empty_row_frac=0.2)
    free_keys = np.flatnonzero(free_grid(w_sp).ravel())
    counts = np.zeros(shape[0] * shape[1], np.int64)
    rng = np.random.default_rng(3)
    n_trials = 80_000 // m
    for _ in range(n_trials):
        rows, cols = sampling.sample_absent_uniform(w_sp.indptr, w_sp.indices, shape[1], m,
                                                    rng, 2)
        counts[rows.astype(np.int64) * shape[1] + cols] += 1
    assert counts.sum() == n_trials * m
    assert counts[np.setdiff1d(np.arange(counts.size), free_keys)].sum() == 0
    assert chi2_pvalue(counts[free_keys]) > 1e-4


def test_uniform_sampler_kernel_refuses_bad_input():
    w_sp = random_csr(np.random.default_rng(0), 4, 5, 0.5)
    free = 20 - w_sp.nnz
    with pytest.raises(ValueError, match=f"m={free + 1} .*only {free} are free"):
        sampling.sample_absent_uniform(w_sp.indptr, w_sp.indices, 5, free + 1,
                                       np.random.default_rng(0))
    with pytest.raises(ValueError, match="m must be >= 0"):
        sampling.sample_absent_uniform(w_sp.indptr, w_sp.indices, 5, -1,
                                       np.random.default_rng(0))
    with pytest.raises(ValueError, match="row longer than n_cols"):
        sampling.sample_absent_uniform(w_sp.indptr, w_sp.indices, 1, 0,
                                       np.random.default_rng(0))


def test_cpu_sample_absent_does_not_depend_on_threads():
    w = erdos_renyi(300, 400, 20, rng=1, backend=CpuBackend())
    m = int(0.3 * w.nnz)
    got = [parallel_cpu(t).sample_absent(w, m, np.random.default_rng(7))
           for t in (1, 2, 4)]
    for rows, cols in got[1:]:
        np.testing.assert_array_equal(rows, got[0][0])
        np.testing.assert_array_equal(cols, got[0][1])
    check_sample_absent(w.to_scipy(), got[0][0], got[0][1], m)


def _values(draw, n):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    kind = draw(st.sampled_from(["normal", "ties", "signed_zeros", "tiny"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = rng.standard_normal(n)
    if kind == "ties":
        v = np.round(v * 2) / 2
    elif kind == "signed_zeros":
        v[rng.random(n) < 0.3] = -0.0
        v[rng.random(n) < 0.2] = 0.0
    elif kind == "tiny":
        v = v * 1e-40 if dtype == np.float32 else v * 1e-310  # subnormals
    return v.astype(dtype)


@PROPERTY
@given(data=st.data())
def test_radix_select_equals_the_generic_select(data):
    n = data.draw(st.sampled_from([1, 2, 17, 300, 70_000]))
    v = _values(data.draw, n)
    k = data.draw(st.integers(0, n))
    largest = data.draw(st.booleans())
    want = Backend.select(Backend(), v, k, largest)
    for threads in (1, 2, 3):
        got = select.select(v, k, largest, threads)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


class _Generic(Backend):
    """The generic xp code (no fused prune kernel)."""


@PROPERTY
@given(data=st.data())
def test_sign_prune_keep_equals_the_two_selections(data):
    from sparsekit.growth.set import magnitude_keep_mask

    n = data.draw(st.sampled_from([0, 1, 5, 300, 70_000]))
    v = _values(data.draw, n)
    if n and data.draw(st.booleans()):
        v[data.draw(st.integers(0, n - 1))] = np.nan  # never dropped, never counted
    zeta = data.draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.99, 1.0]))
    want = magnitude_keep_mask(_Generic(), v, zeta)
    for threads in (1, 2, 3):
        got = select.sign_prune_keep(v, zeta, threads)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(magnitude_keep_mask(CpuBackend(), v, zeta), want)


def test_sign_prune_keep_refuses_bad_zeta():
    with pytest.raises(ValueError, match="zeta must lie"):
        select.sign_prune_keep(np.ones(3), 1.5)


def test_cpu_rebuild_does_not_depend_on_threads():
    w = erdos_renyi(300, 400, 20, rng=2, backend=CpuBackend())
    keep = CpuBackend().sign_prune_keep(w.data, 0.3)
    m = w.nnz - int(keep.sum())
    rows, cols = CpuBackend().sample_absent(w, m, np.random.default_rng(1))
    vals = np.linspace(-1, 1, m).astype(np.float32)
    mom = np.arange(w.nnz, dtype=np.float32)
    got = [parallel_cpu(t).rebuild(w, keep, rows, cols, vals, mom) for t in (1, 2, 3)]
    want, want_states = ref.rebuild(w.to_scipy(), keep, rows, cols, vals, mom)
    for new_w, (state,) in got:
        csr_equal(new_w.to_scipy(), want)
        np.testing.assert_array_equal(state, want_states[0])


@PROPERTY
@given(data=st.data())
def test_uniform_sampler_numpy_twin_gives_the_same_positions(data):
    """The shared host path (generic and GPU backends) draws the same positions as the Cython
    kernel for a seed, including several row blocks and duplicate rounds."""
    from sparsekit.backends.host import sample_uniform_rows

    w_sp, idt = data.draw(layers(max_dim=80))
    free = w_sp.shape[0] * w_sp.shape[1] - w_sp.nnz
    m = data.draw(st.integers(0, free))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rows, cols = _sample(w_sp, idt, m, seed, 2)
    r2, c2 = sample_uniform_rows(w_sp.indptr.astype(np.int64), w_sp.indices.astype(np.int64),
                                 w_sp.shape[1], m, np.random.default_rng(seed))
    np.testing.assert_array_equal(r2, rows)
    np.testing.assert_array_equal(c2, cols)
