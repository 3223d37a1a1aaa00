"""GSE, Top-KAST, RigL (and the shared schedule): invariants after every update, the RigL limit
of GSE, Top-KAST's A ⊆ B, learning, the one rule on huge layers, and clear errors."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as scipy_sparse

from sparsekit import train
from sparsekit.growth import GSE, TopKAST, UpdateSchedule, cosine_drop_fraction, get_method
from sparsekit.growth.gse import absent_by_rank, distinct_ranks, sample_candidates
from sparsekit.growth.rigl import RigL, dense_topk_absent
from sparsekit.growth.schedule import output_grads
from sparsekit.nn.activations import softmax_cross_entropy
from sparsekit.nn.init import er_connections, erdos_renyi
from sparsekit.nn.layers import SparseLayer
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig


# --- helpers ----------------------------------------------------------------------------------
def blobs(seed=0, n=700, d=24, c=4):
    """Separable Gaussian blobs: (x_train, y_train, x_test, y_test), chance = 1 / c."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2.5
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x[:560], y[:560], x[560:], y[560:]


def step_cache(model, seed=0, batch=16):
    """Forward + backward on a random batch: the ``(acts, derivs, dlogits)`` the trainer passes."""
    be = model.backend
    rng = np.random.default_rng(seed)
    x = be.asarray(rng.standard_normal((model.layer_sizes[0], batch)).astype(model.dtype))
    y = be.asarray(rng.integers(0, model.layer_sizes[-1], batch))
    logits, acts, derivs = model.forward_train(x, rng.integers(0, 2**63, len(model.layers) - 1))
    _, _, dlogits = softmax_cross_entropy(be.xp, logits, y)
    model.backward(acts, derivs, dlogits)
    return acts, derivs, dlogits


def host_entries(be, layer):
    """``{(row, col): (value, velocity)}`` of a layer, on the host."""
    w = layer.w
    rows, cols = be.to_numpy(w.row_ids()), be.to_numpy(w.indices)
    vals, vel = be.to_numpy(w.data), be.to_numpy(layer.state_w["momentum"])
    return {(int(r), int(c)): (float(v), float(m)) for r, c, v, m in zip(rows, cols, vals, vel)}


def positions(be, w):
    return set(zip(be.to_numpy(w.row_ids()).tolist(), be.to_numpy(w.indices).tolist()))


def set_up(method, model, steps_per_epoch=10, epochs=10, seed=0):
    method.setup(model, steps_per_epoch, epochs, np.random.default_rng(seed))
    return method


# --- schedule -----------------------------------------------------------------------------------
def test_cosine_drop_fraction():
    assert cosine_drop_fraction(0.3, 0, 100) == pytest.approx(0.3)
    assert cosine_drop_fraction(0.3, 50, 100) == pytest.approx(0.15)
    assert cosine_drop_fraction(0.3, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_drop_fraction(0.3, 101, 100) == 0.0
    ts = np.arange(0, 101)
    vals = [cosine_drop_fraction(0.2, t, 100) for t in ts]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # non-increasing


def test_schedule_every_steps_and_t_end():
    s = UpdateSchedule(drop_fraction=0.4, every_steps=10, t_end=0.5)
    with pytest.raises(RuntimeError, match="setup"):
        s.due(0)
    s.setup(steps_per_epoch=10, epochs=10)  # 100 steps, T_end = 50
    due = [step + 1 for step in range(100) if s.due(step)]
    assert due == [10, 20, 30, 40]  # at 50 the cosine has reached 0; nothing after T_end
    assert s.fraction(9) == pytest.approx(0.2 * (1 + math.cos(math.pi * 10 / 50)))
    assert s.fraction(60) == 0.0


def test_schedule_per_epoch_never_after_last_step():
    s = UpdateSchedule(every_steps=None, t_end=1.0, anneal="constant", drop_fraction=0.25)
    s.setup(steps_per_epoch=7, epochs=4)
    assert [step + 1 for step in range(28) if s.due(step)] == [7, 14, 21]
    assert s.fraction(6) == 0.25


# --- invariants of gradient growth --------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: GSE(gamma=1.0, drop_fraction=0.3, every_steps=1),
    lambda: GSE(gamma=0.5, sampler="grabo", drop_fraction=0.4, every_steps=1),
    lambda: GSE(gamma=2.0, sampler="graest", drop_fraction=0.2, every_steps=1,
                evolve_output=True),
    lambda: GSE(gamma=1.0, scope="global", drop_fraction=0.3, every_steps=1),
    lambda: RigL(drop_fraction=0.3, every_steps=1, tile_elems=50),
    lambda: RigL(drop_fraction=0.3, every_steps=1, scope="global", evolve_output=True),
], ids=["gse-uniform", "gse-grabo", "gse-graest-output", "gse-global", "rigl-tiles",
        "rigl-global"])
def test_gradient_growth_invariants(topo_backend, make):
    be = topo_backend
    model = SparseMLP([30, 40, 35, 6], epsilon=3, seed=1, backend=be, dropout=0.0)
    method = set_up(make(), model, steps_per_epoch=5, epochs=4)
    rng = np.random.default_rng(3)
    for update in range(3):
        for layer in model.layers:  # recognisable momentum: 10 x the weight
            layer.ensure_state(("momentum",))
            layer.state_w["momentum"][...] = layer.w.data * 10
        before = [host_entries(be, layer) for layer in model.layers]
        cache = step_cache(model, seed=update)
        frac = method.schedule.fraction(update)
        stats = method.after_step(model, update, 0, rng, cache)
        assert stats["drop_fraction"] == pytest.approx(frac)
        evolving = [i for i in range(3) if i < 2 or method.evolve_output]
        total_before = sum(len(b) for b in before)
        for i, (layer, old) in enumerate(zip(model.layers, before)):
            layer.w.validate()  # sorted, unique, in bounds, finite
            assert layer.state_w["momentum"].shape == layer.w.data.shape
            new = host_entries(be, layer)
            grown, pruned = set(new) - set(old), set(old) - set(new)
            assert stats["replaced"][i] == len(grown)
            if i not in evolving:
                assert new == old
                continue
            for p in set(new) & set(old):  # kept: value and momentum travel together
                assert new[p][0] == old[p][0] and new[p][1] == pytest.approx(10 * old[p][0])
            for p in grown:
                assert new[p] == (0.0, 0.0)
            if method.scope == "layer":
                assert len(new) == len(old)
                free = layer.w.shape[0] * layer.w.shape[1] - len(old)
                assert len(grown) <= min(int(frac * len(old)), free)
                if free >= 2 * len(old):  # enough candidates: the whole budget is used
                    assert len(grown) == int(frac * len(old))
                # the pruned ones are the smallest magnitudes of the layer
                mags = sorted(abs(v) for v, _ in old.values())
                assert len(pruned) == len(grown)
                if pruned:
                    assert max(abs(old[p][0]) for p in pruned) <= mags[len(pruned) - 1]
        assert sum(layer.nnz for layer in model.layers) == total_before


def test_gse_with_huge_gamma_picks_what_rigl_picks(backend):
    model = SparseMLP([24, 30, 28, 5], epsilon=3, seed=4, backend=backend, dtype="float64",
                      dropout=0.0)
    model.keep_dz = True
    cache = step_cache(model, seed=1, batch=8)
    results = []
    for method in (GSE(gamma=1e6, every_steps=1, evolve_output=True),
                   RigL(every_steps=1, evolve_output=True, tile_elems=37)):
        clone = SparseMLP.from_layers([_copy_layer(layer) for layer in model.layers])
        clone.last_dz = model.last_dz
        set_up(method, clone, steps_per_epoch=4, epochs=4)
        method.after_step(clone, 0, 0, np.random.default_rng(0), cache)
        results.append([positions(backend, layer.w) for layer in clone.layers])
    assert results[0] == results[1]
    assert any(p != positions(backend, layer.w) for p, layer in zip(results[0], model.layers))


def _copy_layer(layer):
    out = SparseLayer(layer.w.copy(), layer.b.copy(), backend=layer.backend)
    out.state_w = {k: v.copy() for k, v in layer.state_w.items()}
    out.state_b = {k: v.copy() for k, v in layer.state_b.items()}
    return out


def test_rigl_tiles_match_a_dense_oracle(backend):
    rng = np.random.default_rng(0)
    w = erdos_renyi(23, 31, 2.0, rng=rng, backend=backend, dtype=np.float64)
    x = rng.standard_normal((31, 6))
    dz = rng.standard_normal((23, 6))
    dense = np.abs(dz @ x.T)
    host = w.to_scipy().toarray() != 0
    dense[host] = -1
    k = 40
    order = np.lexsort((np.arange(dense.size), -dense.ravel()))[:k]  # ties: lowest position
    for tile in (1, 31, 100, 10_000):
        rows, cols, scores = dense_topk_absent(backend, w, backend.asarray(x),
                                               backend.asarray(dz), k, tile)
        got = backend.to_numpy(rows).astype(np.int64) * 31 + backend.to_numpy(cols)
        assert sorted(got.tolist()) == sorted(order.tolist())
        np.testing.assert_allclose(np.sort(backend.to_numpy(scores)),
                                   np.sort(dense.ravel()[order]))


def test_distinct_ranks_is_a_uniform_subset():
    rng = np.random.default_rng(0)
    n, m, reps = 20, 7, 4000
    counts = np.zeros(n)
    pairs = np.zeros((n, n))
    for _ in range(reps):
        r = distinct_ranks(rng, n, m)
        assert r.dtype == np.int64 and r.shape == (m,)
        assert np.all(np.diff(r) > 0) and r[0] >= 0 and r[-1] < n  # sorted, distinct, in range
        counts[r] += 1
        pairs[np.ix_(r, r)] += 1
    # each value with probability m/n, each pair with m(m-1)/(n(n-1)): a uniform m-subset
    np.testing.assert_allclose(counts / reps, m / n, atol=0.035)
    off = pairs[~np.eye(n, dtype=bool)] / reps
    np.testing.assert_allclose(off, m * (m - 1) / (n * (n - 1)), atol=0.03)
    assert distinct_ranks(rng, 10**12, 3).shape == (3,)
    assert distinct_ranks(rng, 5, 0).shape == (0,)
    with pytest.raises(ValueError):
        distinct_ranks(rng, 3, 4)


@pytest.mark.parametrize("sample", [sample_candidates, absent_by_rank])
def test_gse_uniform_candidates_are_uniform_over_absent_positions(topo_backend, sample):
    """GSE's candidates (the backend's sampler, or the rank-space one where it has none) and the
    rank-space sampler itself: m distinct absent positions, sorted, each equally likely."""
    be = topo_backend
    rng = np.random.default_rng(1)
    w = erdos_renyi(9, 11, 2, rng=rng, backend=be)  # 40 of 99 positions stored
    present = positions(be, w)
    absent = [(r, c) for r in range(9) for c in range(11) if (r, c) not in present]
    m, reps = 12, 3000
    assert 2 * m < len(absent)
    counts = dict.fromkeys(absent, 0)
    for _ in range(reps):
        rows, cols = sample(be, w, m, rng)
        assert rows.dtype == w.indices.dtype and cols.dtype == w.indices.dtype
        got = list(zip(be.to_numpy(rows).tolist(), be.to_numpy(cols).tolist()))
        assert len(got) == m and got == sorted(set(got))  # distinct, (row, col)-sorted
        for p in got:
            counts[p] += 1  # KeyError if a stored position were returned
    freq = np.array(list(counts.values())) / reps
    np.testing.assert_allclose(freq, m / len(absent), atol=0.05)
    # full rows are skipped: rows 0 and 2 of this 5 x 8 layer are full, 17 positions are free
    dense = np.zeros((5, 8), dtype=np.float32)
    dense[[0, 2]] = 1
    dense[1, [0, 7]] = dense[3, 3] = dense[4, 4:] = 1
    full_rows = SparseLayer.from_scipy(scipy_sparse.csr_matrix(dense), backend=be).w
    seen = set()
    for _ in range(200):
        rows, cols = sample(be, full_rows, 6, rng)
        got = list(zip(be.to_numpy(rows).tolist(), be.to_numpy(cols).tolist()))
        assert len(got) == 6 and all(dense[p] == 0 for p in got)
        seen.update(got)
    assert len(seen) == int((dense == 0).sum())


def test_kept_gradients_equal_recomputed_ones(backend):
    model = SparseMLP([12, 16, 9, 3], epsilon=2, seed=0, backend=backend, dtype="float64")
    model.keep_dz = True
    cache = step_cache(model)
    kept = output_grads(model, cache)
    model.last_dz = None
    again = output_grads(model, cache)
    for a, b in zip(kept, again):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), rtol=1e-12)


# --- Top-KAST -----------------------------------------------------------------------------------
def check_topkast(be, model, method, b_sizes, a_sizes):
    """A ⊆ B, A = the top-|A| of |θ_B|, A's values are B's, sizes constant."""
    for i, layer in enumerate(model.layers):
        layer.w.validate()
        assert all(s.shape == layer.w.data.shape for s in layer.state_w.values())
        if i not in b_sizes:
            assert layer.w_forward is None
            continue
        assert layer.nnz == b_sizes[i]
        a = layer.w_forward
        a.validate()
        assert a.nnz == a_sizes[i] < layer.nnz
        b_entries = dict(zip(zip(be.to_numpy(layer.w.row_ids()).tolist(),
                                 be.to_numpy(layer.w.indices).tolist()),
                             be.to_numpy(layer.w.data).tolist()))
        a_pos = positions(be, a)
        assert a_pos <= set(b_entries)  # A ⊆ B
        a_vals = be.to_numpy(a.data)
        for p, v in zip(sorted(a_pos), a_vals):
            assert b_entries[p] == v
        if method.refresh_every == 1:
            outside = [abs(v) for p, v in b_entries.items() if p not in a_pos]
            assert min(abs(a_vals)) >= max(outside, default=0)


def test_topkast_a_inside_b_at_every_step(topo_backend):
    be = topo_backend
    x_tr, y_tr, x_te, y_te = blobs()
    model = SparseMLP([24, 40, 30, 4], epsilon=3, seed=0, backend=be)
    a_sizes = {i: model.layers[i].nnz for i in (0, 1)}
    method = TopKAST(every_steps=3, penalty=1e-5, t_end=0.9, refresh_every=1)
    seen = []
    original = method.after_step

    def checked(model, step, epoch, rng, cache=None):
        out = original(model, step, epoch, rng, cache)
        if epoch < 2 or step % 7 == 0:
            check_topkast(be, model, method, {i: 2 * a for i, a in a_sizes.items()}, a_sizes)
        seen.append(out)
        return out

    method.after_step = checked
    result = train(model, (x_tr, y_tr, x_te, y_te), method=method, epochs=3, batch_size=40,
                   seed=0, lr=0.05)
    assert sum(1 for s in seen if s and sum(s["replaced"])) >= 5  # B was refilled
    # After training the model is A only, at the forward budget.
    assert [layer.nnz for layer in result.model.layers[:2]] == [a_sizes[0], a_sizes[1]]
    assert all(layer.w_forward is None for layer in result.model.layers)
    assert result.history[0]["growth_forward_connections"][:2] == [a_sizes[0], a_sizes[1]]
    assert result.history[-1]["test_acc"] > 0.6


def test_topkast_forward_uses_a_and_gradient_covers_b(backend):
    model = SparseMLP([10, 14, 3], epsilon=2, seed=2, backend=backend, dtype="float64",
                      dropout=0.0)
    method = set_up(TopKAST(penalty=0.0), model)
    layer = model.layers[0]
    a, b = layer.w_forward, layer.w
    x = backend.asarray(np.random.default_rng(0).standard_normal((10, 5)))
    np.testing.assert_allclose(backend.to_numpy(layer.forward(x)),
                               a.to_scipy() @ backend.to_numpy(x))
    dz = backend.asarray(np.random.default_rng(1).standard_normal((14, 5)))
    dx, gw, _ = layer.backward(x, dz)
    np.testing.assert_allclose(backend.to_numpy(dx), a.to_scipy().T @ backend.to_numpy(dz))
    assert gw.shape == (b.nnz,)
    rows, cols = backend.to_numpy(b.row_ids()), backend.to_numpy(b.indices)
    expect = (backend.to_numpy(dz) @ backend.to_numpy(x).T)[rows, cols]
    np.testing.assert_allclose(backend.to_numpy(gw), expect)
    assert method.forward_connections(model)[0] == a.nnz == b.nnz // 2


def test_topkast_penalty_is_a_soft_threshold(backend):
    model = SparseMLP([10, 14, 3], epsilon=2, seed=2, backend=backend, dtype="float64")
    lam = 1e-3
    method = set_up(TopKAST(penalty=lam, refresh_every=1000), model)
    layer = model.layers[0]
    before = backend.to_numpy(layer.w.data).copy()
    in_a = np.zeros(layer.nnz, bool)
    in_a[backend.to_numpy(method._states[0].a_slots)] = True
    step = np.where(in_a, lam, lam * 14 * 10 / in_a.sum())
    method.after_step(model, 0, 0, np.random.default_rng(0), None)
    expect = np.sign(before) * np.maximum(np.abs(before) - step, 0)
    np.testing.assert_allclose(backend.to_numpy(layer.w.data), expect)


def test_topkast_penalty_reuses_its_buffer_and_zero_penalty_is_a_no_op(backend):
    model = SparseMLP([10, 14, 3], epsilon=2, seed=2, backend=backend)
    method = set_up(TopKAST(penalty=1e-3, refresh_every=1000), model)
    scratch = method._states[0].scratch
    assert scratch is not None and scratch.shape == model.layers[0].w.data.shape
    for step in range(3):
        method.after_step(model, step, 0, np.random.default_rng(0), None)
    assert method._states[0].scratch is scratch  # one buffer per layer, not one per step
    model = SparseMLP([10, 14, 3], epsilon=2, seed=2, backend=backend)
    method = set_up(TopKAST(penalty=0.0, refresh_every=1000), model)
    before = backend.to_numpy(model.layers[0].w.data).copy()
    method.after_step(model, 0, 0, np.random.default_rng(0), None)
    assert method._states[0].scratch is None
    np.testing.assert_array_equal(backend.to_numpy(model.layers[0].w.data), before)


def test_topkast_sizes_from_densities():
    model = SparseMLP([20, 30, 4], epsilon=2, seed=0)
    set_up(TopKAST(forward_density=0.1, backward_density=0.25), model)
    assert model.layers[0].w_forward.nnz == 60 and model.layers[0].nnz == 150
    with pytest.raises(ValueError, match="backward_density"):
        set_up(TopKAST(backward_density=0.01), SparseMLP([20, 30, 4], epsilon=2, seed=0))


def test_topkast_survives_importance_pruning():
    x_tr, y_tr, x_te, y_te = blobs(seed=1)
    res = train([24, 40, 30, 4], (x_tr, y_tr, x_te, y_te), method="topkast", epochs=3,
                batch_size=40, epsilon=3, seed=0, prune_start=1, prune_every=1,
                prune_percentile=20, lr=0.05)
    for layer in res.model.layers:
        layer.w.validate()
        assert layer.w_forward is None
    assert res.model.layer_sizes[1] < 40


# --- training end to end ------------------------------------------------------------------------
@pytest.mark.parametrize("method,params", [
    ("static", {}), ("set", {}), ("gse", {}), ("gse", {"sampler": "grabo"}),
    ("topkast", {}), ("rigl", {}),
])
def test_methods_learn_above_chance(backend, method, params):
    data = blobs(seed=2)
    res = train([24, 48, 32, 4], data, backend=backend, method=method, epochs=3, batch_size=40,
                epsilon=3, seed=0, lr=0.05, evolve_every=4, method_params=params)
    assert res.history[-1]["test_acc"] > 0.6  # chance is 0.25
    for layer in res.model.layers:
        layer.w.validate()
    assert res.model.n_connections[:2] == [er_connections(48, 24, 3), er_connections(32, 48, 3)]


@pytest.mark.parametrize("method", ["gse", "topkast"])
def test_resume_matches_uninterrupted(tmp_path, method):
    data = blobs(seed=3)
    kw = dict(method=method, epochs=3, batch_size=40, epsilon=3, seed=5, lr=0.05,
              evolve_every=3)
    full = train([24, 32, 16, 4], data, **kw)
    part = train([24, 32, 16, 4], data, run_dir=tmp_path, **kw,
                 callbacks=[lambda rec, m: rec["epoch"] == 2])
    assert len(part.history) == 2
    resumed = train([24, 32, 16, 4], data, run_dir=tmp_path, resume=True, **kw)
    strip = [{k: v for k, v in r.items() if not k.startswith("time")} for r in full.history]
    assert [{k: v for k, v in r.items() if not k.startswith("time")}
            for r in resumed.history] == strip
    for a, b in zip(full.model.layers, resumed.model.layers):
        np.testing.assert_array_equal(a.w.indices, b.w.indices)
        np.testing.assert_array_equal(a.w.data, b.w.data)
        np.testing.assert_array_equal(a.state_w["momentum"], b.state_w["momentum"])


def test_cli_passes_method_flags(tmp_path):
    out = tmp_path / "run"
    data = tmp_path / "blobs.npz"
    x_tr, y_tr, x_te, y_te = blobs()
    np.savez(data, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    args = [sys.executable, "-m", "sparsekit", "train", "--dataset", str(data), "--hidden", "16",
            "--epochs", "1", "--batch-size", "40", "--no-progress", "--no-plot"]
    r = subprocess.run([*args, "--method", "gse", "--gamma", "2", "--drop-fraction", "0.2",
                        "--t-end", "0.5", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["method_params"] == {"gamma": 2.0, "drop_fraction": 0.2, "t_end": 0.5}
    r = subprocess.run([*args, "--method", "set", "--gamma", "2", "--out", str(tmp_path / "r2")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "bad parameters for method 'set'" in r.stderr  # usage


# --- clear errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("method,params,match", [
    ("gse", {"gamma": 0}, "gamma"), ("gse", {"gamma": float("nan")}, "gamma"),
    ("gse", {"sampler": "magic"}, "sampler"), ("gse", {"drop_fraction": 1.5}, "drop_fraction"),
    ("gse", {"every_steps": 0}, "every_steps"), ("gse", {"every_steps": 2.5}, "every_steps"),
    ("gse", {"t_end": 0}, "t_end"), ("rigl", {"t_end": 2}, "t_end"),
    ("gse", {"anneal": "linear"}, "anneal"), ("gse", {"scope": "world"}, "scope"),
    ("rigl", {"max_positions": 0}, "max_positions"), ("rigl", {"tile_elems": -1}, "tile_elems"),
    ("topkast", {"forward_density": 0}, "forward_density"),
    ("topkast", {"forward_density": 0.2, "backward_density": 0.1}, "backward_density"),
    ("topkast", {"penalty": -1}, "penalty"), ("topkast", {"refresh_every": 0}, "refresh_every"),
    ("topkast", {"gamma": -2}, "gamma"), ("gse", {"zeta": 0.3}, "bad parameters"),
])
def test_bad_parameters_are_refused(method, params, match):
    with pytest.raises(ValueError, match=match):
        get_method(method, **params)


@pytest.mark.parametrize("method,params,match", [
    ("gse", {"gamma": 0}, "gamma"), ("gse", {"gamma": "x"}, "bad parameters.*'gamma': 'x'"),
    ("rigl", {"alpha": 1}, "unexpected keyword argument 'alpha'"),
    ("set", {"zeta": 2}, "zeta"), ("topkast", {"forward_density": 2.0}, "forward_density"),
])
def test_a_config_checks_its_method_parameters_before_any_work(method, params, match):
    # TrainConfig sets the method up once to check it, so train() and the estimators refuse
    # these with the method's own message before estimating memory or touching data.
    with pytest.raises(ValueError, match=match):
        TrainConfig(method=method, method_params=params)
    x, y = blobs()[:2]
    with pytest.raises(ValueError, match=match):
        train([x.shape[1], 16, 3], (x, y), epochs=1, method=method, method_params=params)


def test_bad_layers_and_oversized_rigl_are_refused():
    model = SparseMLP([10, 12, 3], epsilon=2, seed=0)
    with pytest.raises(ValueError, match="layers"):
        set_up(GSE(layers=[5]), model)
    big = SparseMLP([300, 300, 3], epsilon=2, seed=0)
    with pytest.raises(ValueError, match="use method='gse'"):
        set_up(RigL(max_positions=50_000), big)
    with pytest.raises(RuntimeError, match="setup"):
        GSE(every_steps=1).after_step(model, 0, 0, np.random.default_rng(0), None)
    method = set_up(GSE(every_steps=1), model)
    with pytest.raises(ValueError, match="cache"):
        method.after_step(model, 0, 0, np.random.default_rng(0), None)


# --- the one rule -------------------------------------------------------------------------------
def _one_layer_model(be, n, rng):
    w = erdos_renyi(n, n, 20, rng=rng, backend=be)
    return SparseMLP.from_layers([SparseLayer(w, backend=be)], dropout=0.0)


@pytest.mark.parametrize("n", [50_000, pytest.param(200_000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", ["set", "gse", "topkast"])
def test_huge_layer_update_in_onnz_memory(n, method):
    """One topology update of an n x n layer at ε = 20 (dense: n² x 4 bytes, 160 GB at 200 000)
    stays in O(nnz) memory, measured with tracemalloc."""
    from sparsekit.backends import get_backend

    be = get_backend("cpu")
    nnz = er_connections(n, n, 20)
    gc.collect()
    tracemalloc.start()
    try:
        rng = np.random.default_rng(0)
        model = _one_layer_model(be, n, rng)
        layer = model.layers[0]
        x = rng.standard_normal((n, 4)).astype(np.float32)
        dz = (rng.standard_normal((n, 4)) / n).astype(np.float32)
        cache = ([x], [], dz)
        if method == "set":
            stats = get_method("set", evolve_output=True).evolve(model, rng)
        else:
            m = get_method(method, every_steps=1, evolve_output=True, drop_fraction=0.3)
            set_up(m, model, steps_per_epoch=10, epochs=10)
            stats = m.after_step(model, 0, 0, rng, cache)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected_nnz = 2 * nnz if method == "topkast" else nnz
    assert layer.nnz == expected_nnz
    assert stats["replaced"][0] > 0.2 * (nnz if method != "set" else 0.5 * nnz)
    dense_bytes = n * n * 4
    assert peak < dense_bytes / 20, f"peak {peak / 1e9:.2f} GB vs dense {dense_bytes / 1e9:.0f} GB"
    assert peak / expected_nnz < 200, f"{peak / expected_nnz:.0f} bytes per connection"


def test_set_every_steps_does_not_evolve_after_the_final_step():
    from sparsekit import train
    from sparsekit.io.datasets import load_dataset

    data = load_dataset("synthetic", n_samples=600, n_features=20, n_classes=3,
                        n_clusters_per_class=2, seed=0)
    steps = data.x_train.shape[0] // 50
    last = train([20, 32, 3], data, epochs=3, batch_size=50, epsilon=4, seed=0, method="set",
                 evolve_every=steps).history[-1]
    assert last.get("growth_replaced") is None  # the last epoch ends on its final step
    with pytest.raises(ValueError, match="init must be one of"):
        train([20, 32, 3], data, epochs=1, method="set", method_params={"init": "he_unifrom"})
