"""SET and importance pruning: invariants after every topology change."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import parallel_cpu

from sparsekit.growth import SET, get_method, magnitude_keep_mask
from sparsekit.nn.model import SparseMLP
from sparsekit.training.pruning import neuron_importance, prune_neurons


def _positions(w):
    return set(zip(w.row_ids().tolist(), w.indices.tolist()))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), zeta=st.floats(0.05, 0.9),
       sizes=st.lists(st.integers(2, 40), min_size=3, max_size=5),
       epsilon=st.floats(0.5, 6))
def test_set_invariants(seed, zeta, sizes, epsilon):
    model = SparseMLP(sizes, epsilon=epsilon, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # distinct, recognisable momentum
        layer.ensure_state(("momentum",))
        layer.state_w["momentum"][:] = layer.w.data * 10
    before = [(layer.w.copy(), _positions(layer.w)) for layer in model.layers]
    SET(zeta=zeta).evolve(model, rng)
    for i, (layer, (w_old, pos_old)) in enumerate(zip(model.layers, before)):
        w = layer.w
        w.validate()  # sorted, unique, in bounds, finite
        assert w.nnz == w_old.nnz
        pos = _positions(w)
        if i == len(model.layers) - 1:
            assert pos == pos_old  # the output layer does not evolve by default
            continue
        kept = pos & pos_old
        old = dict(zip(zip(w_old.row_ids().tolist(), w_old.indices.tolist()), w_old.data))
        new = dict(zip(zip(w.row_ids().tolist(), w.indices.tolist()),
                       zip(w.data, layer.state_w["momentum"])))
        for p in pos:
            value, vel = new[p]
            if p in kept:
                assert value == old[p] and vel == pytest.approx(value * 10)
            else:
                assert vel == 0
                assert abs(value) <= np.sqrt(6 / w.shape[1]) + 1e-6
        free = w.shape[0] * w.shape[1] - w_old.nnz
        n_pos, n_neg = int((w_old.data > 0).sum()), int((w_old.data < 0).sum())
        expected = min(int(zeta * n_pos) + int(zeta * n_neg), free)
        assert len(pos - pos_old) == expected


def test_magnitude_mask_removes_closest_to_zero_per_sign():
    from sparsekit import get_backend

    data = np.array([-5, -0.1, -0.2, -3, 0.05, 4, 0.3, 2, 0.0, 1], dtype=np.float32)
    keep = magnitude_keep_mask(get_backend("cpu"), data, 0.5)
    # negatives: 4 -> remove 2 closest to zero (-0.1, -0.2); positives: 5 -> remove 2 (0.05, 0.3)
    np.testing.assert_array_equal(
        keep, [True, False, False, True, False, True, False, True, False, True])


def test_set_schedule_hooks():
    model = SparseMLP([10, 12, 3], epsilon=2, seed=0)
    rng = np.random.default_rng(0)
    m = get_method("set", zeta=0.3)
    assert m.end_of_epoch(model, 0, 5, rng) is not None
    assert m.end_of_epoch(model, 4, 5, rng) is None  # not after the last epoch
    per_step = get_method("set", every_steps=3)
    assert per_step.after_step(model, 1, 0, rng) is None
    assert per_step.after_step(model, 2, 0, rng) is not None
    with pytest.raises(ValueError, match="unknown method"):
        get_method("magic")


def test_importance_pruning_shrinks_layers_physically():
    model = SparseMLP([30, 50, 40, 5], epsilon=5, seed=0)
    for layer in model.layers:  # Adam's two slots, each a recognisable copy of the weights
        layer.ensure_state(("exp_avg", "exp_avg_sq"))
        layer.state_w["exp_avg"][:] = layer.w.data
        layer.state_w["exp_avg_sq"][:] = 2 * layer.w.data
        layer.state_b["exp_avg"][:] = np.arange(layer.out_features)
    imp = [neuron_importance(layer) for layer in model.layers[:-1]]
    removed = prune_neurons(model, percentile=20)
    for i, (r, im) in enumerate(zip(removed, imp)):
        keep = im > np.percentile(im, 20)
        assert r == int((~keep).sum()) > 0
        assert model.layers[i].out_features == int(keep.sum())
        assert model.layers[i + 1].in_features == int(keep.sum())
        if i == 0:  # deeper layers also lose input columns, so only layer 0 keeps its scores
            np.testing.assert_allclose(np.sort(neuron_importance(model.layers[i])),
                                       np.sort(im[keep]))
    for layer in model.layers:
        layer.w.validate()
        np.testing.assert_array_equal(layer.state_w["exp_avg"], layer.w.data)
        np.testing.assert_array_equal(layer.state_w["exp_avg_sq"], 2 * layer.w.data)
        assert layer.state_b["exp_avg"].shape == layer.state_b["exp_avg_sq"].shape == layer.b.shape
    assert model.layer_sizes[0] == 30 and model.layer_sizes[-1] == 5
    assert model.predict(np.zeros((3, 30), np.float32)).shape == (3,)


def test_pruning_never_empties_a_layer():
    model = SparseMLP([5, 4, 3], epsilon=1, seed=0)
    prune_neurons(model, percentile=99.9)
    assert model.layer_sizes[1] >= 1


def _evolved(backend, seed=3):
    model = SparseMLP([300, 400, 50, 10], epsilon=20, seed=seed, backend=backend)
    for layer in model.layers:
        layer.ensure_state(("momentum",))
        layer.state_w["momentum"][:] = layer.w.data * 10
    SET(zeta=0.3).evolve(model, np.random.default_rng(seed))
    return [(layer.w.indptr, layer.w.indices, layer.w.data, layer.state_w["momentum"])
            for layer in model.layers]


def test_set_step_is_the_same_for_every_thread_count_and_the_generic_code():
    """A seed gives one topology: 1, 2 or 3 OpenMP threads, and the generic Backend methods
    (the path the GPU backend shares) with the two-selection prune."""
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.backends import Backend

    class Generic(CpuBackend):  # products on the CPU, topology from the base class
        select = Backend.select
        contains = Backend.contains
        sample_absent = Backend.sample_absent
        rebuild = Backend.rebuild
        sign_prune_keep = Backend.sign_prune_keep

    want = _evolved(CpuBackend(num_threads=1))
    for backend in (parallel_cpu(2), parallel_cpu(3), Generic(1)):
        for got_layer, want_layer in zip(_evolved(backend), want, strict=True):
            for got, exp in zip(got_layer, want_layer, strict=True):
                np.testing.assert_array_equal(got, exp)
