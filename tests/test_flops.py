"""The energy proxy: operation counts of a step and of topology updates, and the trainer's
per-epoch ``flops`` / ``flops_dense``."""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit
from sparsekit.growth import get_method
from sparsekit.training.flops import OPT_OPS, FlopCounter, step_flops, update_flops


def _hand_count(shapes, b, dense):
    """The table of sparsekit.training.flops written out term by term."""
    total = 0
    last = len(shapes) - 1
    for k, (n_in, n_out, nnz) in enumerate(shapes):
        c = n_in * n_out if dense else nnz
        fwd = 2 * b * c + (b * n_out + 4 * b * n_out if k == last else 3 * b * n_out)
        back = 2 * b * c + b * n_in if k else 0
        grad = 2 * b * c + b * n_out
        total += fwd + back + grad + OPT_OPS * (c + n_out)
    return total


def test_step_flops_match_the_hand_count():
    model = sparsekit.SparseMLP([30, 40, 20, 5], epsilon=3, seed=0, backend="cpu")
    shapes = [(w.shape[1], w.shape[0], w.nnz) for w in (layer.w for layer in model.layers)]
    sparse, dense = step_flops(model, 16)
    assert sparse == _hand_count(shapes, 16, dense=False)
    assert dense == _hand_count(shapes, 16, dense=True)
    assert sparse < dense
    # Twice the batch: the per-sample terms double, the optimizer's do not.
    sparse2, _ = step_flops(model, 32)
    opt = OPT_OPS * sum(nnz + n_out for _, n_out, nnz in shapes)
    assert sparse2 - opt == 2 * (sparse - opt)


def test_wide_layers_save_width_times_over_dense():
    # At ε = 20 a width-w layer keeps ~40 of w inputs per neuron: the saving grows with w.
    small = sparsekit.SparseMLP([784, 2000, 2000, 10], seed=0, backend="cpu")
    wide = sparsekit.SparseMLP([784, 20000, 20000, 10], seed=0, backend="cpu")
    ratio = [d / s for s, d in (step_flops(m, 128) for m in (small, wide))]
    assert ratio[1] > 5 * ratio[0]


def test_update_flops_per_method():
    model = sparsekit.SparseMLP([30, 40, 20, 5], epsilon=3, seed=0, backend="cpu")
    nnz = model.n_connections
    set_ops = update_flops(model, get_method("set"), {"replaced": [7, 5]}, 16)
    assert set_ops == 4 * nnz[0] + 21 + 4 * nnz[1] + 15
    gse = get_method("gse", gamma=2.0)
    gse_ops = update_flops(model, gse, {"replaced": [3, 0, 0]}, 16)
    assert gse_ops == (2 * 16 + 2) * 2 * nnz[0] + 2 * nnz[0]
    assert update_flops(model, get_method("set"), {}, 16) == 0
    assert update_flops(model, get_method("set"), {"replaced": [0, 0]}, 16) == 0


def test_counter_accumulates_and_resets():
    model = sparsekit.SparseMLP([30, 40, 5], epsilon=3, seed=0, backend="cpu")
    c = FlopCounter(8)
    c.step(model)
    c.step(model)
    c.update(model, get_method("set"), {"replaced": [4]})
    rec = c.record()
    assert rec["flops"] == 2 * step_flops(model, 8)[0] + rec["flops_topology"]
    assert rec["flops_topology"] == 4 * model.n_connections[0] + 12
    c.reset()
    assert c.record() == {"flops": 0, "flops_dense": 0, "flops_topology": 0}


@pytest.mark.parametrize("method", ["set", "static"])
def test_history_reports_flops(method):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 20)).astype(np.float32)
    y = rng.integers(0, 3, 320)
    seen = []
    res = sparsekit.train([20, 60, 60, 3], (x, y), epochs=2, batch_size=64, method=method,
                          evolve_every=2, backend="cpu", epsilon=4,
                          callbacks=[lambda r, m: seen.append(step_flops(m, 64))])
    for rec, (sparse, dense) in zip(res.history, seen):
        steps = 320 // 64
        # SET keeps every layer's count, so every step of the epoch cost the same.
        assert rec["flops"] - rec["flops_topology"] == steps * sparse
        assert rec["flops_dense"] == steps * dense
        assert (rec["flops_topology"] > 0) == (method == "set")
