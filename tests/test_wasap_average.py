"""WASAP-SGD without MPI: union-support averaging, pruning to the budget, the stale-gradient
filter, model messages, and argument checks."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from sparsekit import SparseMLP, train
from sparsekit.backends import get_backend
from sparsekit.nn.csr import CSR
from sparsekit.nn.init import erdos_renyi
from sparsekit.parallel import (
    average_models,
    budget_keep_mask,
    prune_to_budget,
    remap_values,
    union_average,
)
from sparsekit.parallel.loop import pack, unpack
from sparsekit.parallel.transfer import pack_model, unpack_model

CPU = get_backend("cpu")


def csr(entries: dict, shape=(3, 4)) -> CSR:
    """A CSR from ``{(row, col): value}``."""
    rows, cols = zip(*entries)
    m = sp.coo_matrix((list(entries.values()), (rows, cols)), shape=shape)
    return CSR.from_scipy(m, dtype=np.float32)


def as_dict(w: CSR) -> dict:
    m = w.to_scipy().tocoo()
    return {(int(r), int(c)): float(v) for r, c, v in zip(m.row, m.col, m.data)}


# Two workers' hand-made supports on a 3 x 4 layer.
W1 = {(0, 0): 1.0, (0, 2): -2.0, (1, 1): 0.5, (2, 3): 3.0}
W2 = {(0, 0): 3.0, (1, 1): -0.5, (1, 3): 0.4, (2, 0): -1.0}
UNION = {(0, 0): 2.0, (0, 2): -1.0, (1, 1): 0.0, (1, 3): 0.2, (2, 0): -0.5, (2, 3): 1.5}


def test_union_average_is_the_mean_over_the_union_with_absent_as_zero():
    avg, (vel,) = union_average([csr(W1), csr(W2)],
                                [[csr(W1).data * 10], [csr(W2).data * 10]])
    got = as_dict(avg)
    assert set(got) == set(UNION)  # every position of either worker, nothing else
    for key, value in UNION.items():
        assert got[key] == pytest.approx(value)
    # Momentum is averaged on the same support, aligned with the values.
    np.testing.assert_allclose(vel, avg.data * 10, rtol=1e-6)
    avg.validate()


def test_pruning_back_to_budget_removes_zeros_then_sign_split_smallest():
    avg, _ = union_average([csr(W1), csr(W2)])
    # Budget 4 of 6: the exact zero at (1, 1) goes first, then one more removal.  With 2
    # negative and 3 positive weights, zeta' = 1/5 rounds to 0 negatives and 1 positive: the
    # smallest positive (0.2).
    pruned, _ = prune_to_budget(CPU, avg, 4)
    assert as_dict(pruned) == pytest.approx({(0, 0): 2.0, (0, 2): -1.0, (2, 0): -0.5,
                                             (2, 3): 1.5})
    # Budget 2: three removals after the zero; round(3 * 2/5) = 1 negative (the one closest to
    # zero, -0.5) and 2 positives (0.2 and 1.5).
    pruned, _ = prune_to_budget(CPU, avg, 2)
    assert as_dict(pruned) == pytest.approx({(0, 0): 2.0, (0, 2): -1.0})


@pytest.mark.parametrize("budget", [0, 1, 3, 5, 6, 9])
def test_budget_is_met_exactly(budget):
    avg, (vel,) = union_average([csr(W1), csr(W2)], [[csr(W1).data], [csr(W2).data]])
    pruned, (pvel,) = prune_to_budget(CPU, avg, budget, vel)
    assert pruned.nnz == min(budget, avg.nnz) and pvel.shape == (pruned.nnz,)
    kept = as_dict(pruned)
    assert set(kept) <= set(UNION)
    # What survives is never smaller in magnitude, within its sign, than what was removed.
    removed = {k: v for k, v in UNION.items() if k not in kept}
    for sign in (-1, 1):
        k_vals = [abs(v) for v in kept.values() if np.sign(v) == sign]
        r_vals = [abs(v) for v in removed.values() if np.sign(v) == sign]
        if k_vals and r_vals:
            assert min(k_vals) >= max(r_vals)


def test_budget_keep_mask_keeps_zeros_beyond_the_removals():
    data = np.array([0.0, 0.0, 0.0, 1.0, -1.0], np.float32)
    keep = budget_keep_mask(CPU, data, 4)
    assert keep.sum() == 4 and keep[3] and keep[4]
    with pytest.raises(ValueError, match="budget"):
        budget_keep_mask(CPU, data, -1)


def test_one_worker_average_is_the_identity_bitwise():
    w = erdos_renyi(50, 40, 5, rng=np.random.default_rng(0), backend=CPU)
    vel = np.random.default_rng(1).standard_normal(w.nnz).astype(np.float32)
    avg, (avel,) = union_average([w], [[vel]])
    pruned, (pvel,) = prune_to_budget(CPU, avg, w.nnz, avel)
    for a, b in ((w.indptr, pruned.indptr), (w.indices, pruned.indices), (w.data, pruned.data),
                 (vel, pvel)):
        np.testing.assert_array_equal(a, b)


def test_average_models_keeps_each_layers_budget():
    sizes = [30, 40, 20, 5]
    models = [SparseMLP(sizes, epsilon=4, seed=s) for s in range(3)]
    for m in models:  # give biases and optimizer state (Adam's two slots) something to average
        for layer in m.layers:
            layer.ensure_state(("exp_avg", "exp_avg_sq"))
            layer.b[:] = 1.0
            layer.state_w["exp_avg"][:] = 2.0
            layer.state_w["exp_avg_sq"][:] = 3.0
            layer.state_b["exp_avg"][:] = 5.0
    budgets = [m - 7 for m in models[0].n_connections]
    avg = average_models(models, budgets)
    assert avg.layer_sizes == sizes and avg.n_connections == budgets
    for layer in avg.layers:
        layer.w.validate()
        np.testing.assert_allclose(layer.b, 1.0)
        # State 2 at a position all three share stays 2; present in one worker, 2/3.
        for slot, v in (("exp_avg", 2.0), ("exp_avg_sq", 3.0)):
            allowed = v * np.array([1.0, 2 / 3, 1 / 3])
            state = layer.state_w[slot]
            assert state.shape == layer.w.data.shape
            assert np.isclose(state[:, None], allowed, rtol=1e-6).any(axis=1).all()
        np.testing.assert_allclose(layer.state_b["exp_avg"], 5.0)
    with pytest.raises(ValueError, match="layer sizes"):
        average_models([models[0], SparseMLP([30, 41, 20, 5], epsilon=4, seed=0)], budgets)
    with pytest.raises(ValueError, match="budgets"):
        average_models(models, budgets[:1])


def test_remap_values_filters_a_gradient_to_the_current_topology():
    old = csr({(0, 0): 1.0, (0, 2): 1.0, (1, 1): 1.0, (2, 3): 1.0})
    new = csr({(0, 0): 1.0, (1, 1): 1.0, (1, 3): 1.0, (2, 0): 1.0})
    grad = np.array([10.0, 20.0, 30.0, 40.0], np.float32)  # aligned with old's entries
    out = remap_values(old, new, grad)
    # New order: (0,0), (1,1), (1,3), (2,0): kept entries carry over, new ones get 0, removed
    # ones ((0,2), (2,3)) are dropped.
    np.testing.assert_array_equal(out, [10.0, 30.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="values"):
        remap_values(old, new, grad[:3])


def test_huge_layer_averaging_is_o_nnz():
    n = 200_000  # dense, one such matrix would take 160 GB
    ws = [erdos_renyi(n, n, 5, rng=np.random.default_rng(s), backend=CPU) for s in range(2)]
    nnz = ws[0].nnz
    gc.collect()
    tracemalloc.start()
    try:
        avg, _ = union_average(ws)
        pruned, _ = prune_to_budget(CPU, avg, nnz)
        out = remap_values(ws[0], pruned, ws[0].data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert avg.nnz > 1.9 * nnz and pruned.nnz == nnz and out.shape == (nnz,)
    assert peak < 200 * nnz, f"peak {peak / 1e6:.0f} MB for {nnz} connections"


def test_model_message_round_trip():
    model = SparseMLP([12, 20, 3], epsilon=3, seed=0, dropout=0.1, activation="relu")
    for layer in model.layers:
        layer.ensure_state(("exp_avg", "exp_avg_sq"))
        layer.state_w["exp_avg"][:] = np.arange(layer.nnz)
        layer.state_w["exp_avg_sq"][:] = -np.arange(layer.nnz)
        layer.state_b["exp_avg_sq"][:] = 7
    meta, index, values = pack_model(model)
    assert index.dtype == np.int32 and values.dtype == np.float32
    back = unpack_model(meta, index.copy(), values.copy(), CPU)
    assert back.config() == model.config()
    for a, b in zip(model.layers, back.layers):
        for x, y in ((a.w.indptr, b.w.indptr), (a.w.indices, b.w.indices), (a.w.data, b.w.data),
                     (a.b, b.b), *((a.state_w[s], b.state_w[s]) for s in a.state_w),
                     *((a.state_b[s], b.state_b[s]) for s in a.state_b)):
            np.testing.assert_array_equal(x, y)
        assert list(b.state_w) == ["exp_avg", "exp_avg_sq"]
    with pytest.raises(ValueError, match="header"):
        unpack_model(meta, index[:-1], values, CPU)


def test_gradient_buffer_is_values_and_biases_only():
    model = SparseMLP([12, 20, 3], epsilon=3, seed=0)
    pairs = [(layer.w.data, layer.b) for layer in model.layers]
    flat = pack(np, pairs)
    assert flat.size == sum(model.n_connections) + 20 + 3
    for (a, b), (x, y) in zip(pairs, unpack(flat, model)):
        np.testing.assert_array_equal(a, x)
        np.testing.assert_array_equal(b, y)


@pytest.mark.parametrize("kwargs, match", [
    ({"parallel": "horovod"}, "parallel must be"),
    ({"parallel": "wasap", "wasap_mode": "semi"}, "wasap_mode must be one of"),
    ({"parallel": "wasap", "phase1_fraction": 1.5}, "phase1_fraction"),
    ({"parallel": "wasap", "wasap_mode": "async", "prune_start": 3}, "prune_start"),
    ({"parallel": "wasap", "method": "rigl"}, "supports methods 'set' and 'static'"),
])
def test_bad_parallel_arguments(kwargs, match):
    x = np.zeros((64, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        train([4, 8, 2], (x, np.zeros(64, int)), **kwargs)


def test_unknown_options_are_refused_before_any_mpi():
    x, y = np.zeros((64, 4), np.float32), np.zeros(64, int)
    with pytest.raises(TypeError, match="unknown training option 'future_option'"):
        train([4, 8, 2], (x, y), parallel="wasap", future_option=3)


@pytest.mark.parametrize("abort", ["returns", "raises", "blocks"])
def test_failing_rank_ends_even_if_mpi_abort_does_not(abort):
    """MPI_Abort was seen to come back under load; the rank must still end (non-zero, message
    printed) instead of reaching MPI_Finalize and waiting there for peers that wait for it."""
    import subprocess
    import sys
    import time

    script = f"""
import time
from sparsekit.parallel import comm as c
c.ABORT_GRACE_SECONDS, c.ABORT_DEADLINE_SECONDS = 0, 2
class FakeComm:
    rank, size = 1, 3
    def abort(self, code):
        if "{abort}" == "raises":
            raise RuntimeError("abort failed")
        if "{abort}" == "blocks":
            time.sleep(60)
with c.guarded(FakeComm()):
    raise ValueError("injected")
"""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0 and time.monotonic() - start < 20
    assert "sparsekit[rank 1/3]: ValueError: injected; aborting all ranks" in proc.stderr


def test_the_option_digest_reads_numbers_by_value():
    import json

    from sparsekit.parallel.wasap import _as_floats

    def text(options):
        return json.dumps(_as_floats(options), sort_keys=True)

    assert text({"gamma": 1, "b": [1, 2.0], "f": True}) == \
        text({"gamma": 1.0, "b": (1.0, 2), "f": True})
    assert text({"f": True}) != text({"f": 1.0})
