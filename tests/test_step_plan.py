"""What a CPU training step keeps from one step to the next, and its loss kernel.

``CpuBackend.mlp_step`` keeps the arrays it hands the fused step (``_StepPlan``) in the caller's
buffers while the model's arrays, the input and the batch size stay the same objects; the
softmax cross-entropy runs two C passes around NumPy's exp.  Neither may change a bit: a kept
plan must give what a fresh one gives after any change a run makes between steps, and the loss
must be the generic one's, value and gradient.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp

from sparsekit._cython import elementwise, mlp
from sparsekit._cython.backend import CpuBackend
from sparsekit._cython.workspace import PLAN
from sparsekit.backends.base import Backend
from sparsekit.nn.activations import softmax_cross_entropy
from sparsekit.nn.csr import CSR
from sparsekit.nn.layers import SparseLayer
from sparsekit.nn.model import SparseMLP

SGD = ("sgd", 0.05, 0.9, 1e-3, True, False)


def _model(seed, sizes=(12, 20, 16, 4), dtype=np.float32, threads=2):
    rng = np.random.default_rng(seed)
    be = ref.parallel_cpu(threads)  # every pass in a team of `threads`, however small
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = ref.to_backend(be, ref.random_csr(rng, n_out, n_in, 0.4), dtype, np.int32)
        layer = SparseLayer(w, rng.standard_normal(n_out) * 0.1, backend=be)
        layer.state_w["momentum"] = np.zeros_like(layer.w.data)
        layer.state_b["momentum"] = np.zeros_like(layer.b)
        layers.append(layer)
    return SparseMLP.from_layers(layers, activation="allrelu", dropout=0.2)


def _step(model, x, idx, y, seed, buffers, update=SGD):
    be = model.backend
    loss = lambda logits: be.softmax_cross_entropy(logits, y)  # noqa: E731
    return be.mlp_step(model.layers, model.activations, x, idx, x.dtype, 0.2, [seed, seed + 1],
                       loss, False, update, buffers)


def _same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(a, b), f"{what}: {int((a != b).sum())} of {a.size} values differ"


def _evolve(model, rng):
    """A topology change as SET makes it: a new CSR and new optimizer state per layer."""
    be = model.backend
    for layer in model.layers:
        keep = be.sign_prune_keep(layer.w.data, 0.3)
        n_new = layer.w.nnz - int(keep.sum())
        rows, cols = be.sample_absent(layer.w, n_new, rng)
        layer.rebuild(keep, rows, cols, rng.uniform(-0.1, 0.1, n_new).astype(layer.w.dtype))


CHANGES = ["none", "evolve", "batch_size", "other_batch_in_buffers", "larger_batch_in_buffers",
           "new_bias_array", "new_input", "no_momentum", "threads"]


@pytest.mark.parametrize("change", CHANGES)
def test_a_kept_step_plan_gives_the_bits_of_a_fresh_one(change):
    kept, fresh = _model(0), _model(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 12)).astype(np.float32)
    y = rng.integers(0, 4, 60)
    buffers = {}
    for step in range(4):
        b = 16 if change != "batch_size" or step < 2 else 9
        idx = rng.integers(0, 60, b)
        if step == 2:  # the change, made to both models alike
            if change == "evolve":
                for model in (kept, fresh):
                    _evolve(model, np.random.default_rng(7))
            elif change == "other_batch_in_buffers":  # overwrites the buffers the plan holds
                kept.forward_train(np.ascontiguousarray(x[:5].T), [3, 4], buffers=buffers)
            elif change == "larger_batch_in_buffers":  # reallocates them
                kept.forward_train(np.ascontiguousarray(x[:30].T), [3, 4], buffers=buffers)
            elif change == "new_bias_array":
                for model in (kept, fresh):
                    model.layers[1].b = model.layers[1].b.copy()
            elif change == "new_input":
                x = x.copy()
            elif change == "no_momentum":  # another optimizer's state: no update in the team
                for model in (kept, fresh):
                    for layer in model.layers:
                        layer.state_w.pop("momentum")
                        layer.state_b.pop("momentum")
            elif change == "threads":
                kept.backend.num_threads = fresh.backend.num_threads = 1
        got = _step(kept, x, idx, y[idx], step, buffers)
        want = _step(fresh, x, idx, y[idx], step, {})
        assert got[0][0] == want[0][0]
        assert got[3][2] == want[3][2] == (change != "no_momentum" or step < 2)
        for i, (a, w) in enumerate(zip(got[1] + got[2], want[1] + want[2])):
            _same(a, w, f"step {step}: activation/derivative {i}")
        for i, (a, w) in enumerate(zip(kept.layers, fresh.layers)):
            _same(a.w.data, w.w.data, f"step {step}: weights {i}")
            _same(a.b, w.b, f"step {step}: bias {i}")
            _same(got[3][0][i][0], want[3][0][i][0], f"step {step}: grad_w {i}")


def _only_plan(buffers):
    plans = buffers[PLAN]
    assert len(plans) == 1, f"{len(plans)} plans kept"
    return next(iter(plans.values()))


def test_the_plan_is_kept_across_steps_and_dropped_when_its_buffers_go():
    model = _model(3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    buffers = {}
    _step(model, x, np.arange(16), y[:16], 0, buffers)
    plan = _only_plan(buffers)
    _step(model, x, np.arange(16, 32), y[16:32], 1, buffers)
    assert _only_plan(buffers) is plan  # same model, input and batch size: kept
    model.forward_train(np.ascontiguousarray(x[:3].T), [1, 2], buffers=buffers)
    assert _only_plan(buffers) is plan  # a smaller batch is a prefix of the same buffers
    model.forward_train(np.ascontiguousarray(x[:24].T), [1, 2], buffers=buffers)
    assert PLAN not in buffers  # a larger one reallocated a buffer the plan held
    _step(model, x, np.arange(16), y[:16], 2, buffers)
    assert _only_plan(buffers) is not plan
    # a batch the step cannot gather itself (a negative index wraps, as in NumPy) takes the
    # generic path and leaves the plan alone
    plan = _only_plan(buffers)
    twin = _model(3)
    for a, b in zip(twin.layers, model.layers):
        a.w.data[...], a.b[...] = b.w.data, b.b
        a.state_w["momentum"][...], a.state_b["momentum"][...] = (b.state_w["momentum"],
                                                                  b.state_b["momentum"])
    idx = np.arange(-16, 0)
    got = _step(model, x, idx, y[idx], 3, buffers)
    want = _step(twin, x, idx + 40, y[idx], 3, {})
    assert _only_plan(buffers) is plan and got[0][0] == want[0][0]
    _same(model.layers[0].w.data, twin.layers[0].w.data, "weights after a wrapped batch")


def test_a_partial_last_batch_allocates_nothing_after_the_first_epoch(monkeypatch):
    """An epoch of full batches and a partial last one keeps a plan for each, on one set of
    buffers, so later epochs allocate nothing and still give a fresh step's bits."""
    import sparsekit._cython.workspace as workspace

    made = []
    real = workspace.aligned_empty
    monkeypatch.setattr(workspace, "aligned_empty", lambda *a, **k: made.append(a) or real(*a, **k))
    kept, fresh = _model(5), _model(5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    buffers, later = {}, 0
    for epoch in range(3):
        for s, (start, stop) in enumerate([(0, 16), (16, 32), (32, 40)]):
            idx = rng.permutation(40)[start:stop]
            before = len(made)
            got = _step(kept, x, idx, y[idx], 10 * epoch + s, buffers)
            later += (len(made) - before) if epoch else 0
            want = _step(fresh, x, idx, y[idx], 10 * epoch + s, {})
            assert got[0][0] == want[0][0]
            for i, (a, w) in enumerate(zip(got[1] + got[2], want[1] + want[2])):
                _same(a, w, f"epoch {epoch} step {s}: activation/derivative {i}")
            for i, (a, w) in enumerate(zip(kept.layers, fresh.layers)):
                _same(a.w.data, w.w.data, f"epoch {epoch} step {s}: weights {i}")
    assert later == 0, f"{later} arrays allocated after the first epoch"
    assert len(buffers[PLAN]) == 2


# --- the loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes,batch", [(1, 2), (2, 2), (3, 7), (10, 128), (17, 129),
                                           (100, 33), (10, 1), (4, 0)])
def test_the_loss_kernel_has_the_generic_losss_bits(classes, batch, dtype):
    rng = np.random.default_rng(classes * 1000 + batch)
    be = CpuBackend(1)
    for scale in (1e-3, 1.0, 30.0, 300.0):
        z = (rng.standard_normal((classes, batch)) * scale).astype(dtype)
        if scale == 300.0 and z.size > 1:
            z.flat[0], z.flat[-1] = np.inf, -np.inf
        y = rng.integers(0, classes, batch)
        with np.errstate(invalid="ignore"):
            got = be.softmax_cross_entropy(z, y)
            want = softmax_cross_entropy(np, z, y, as_float=False)
        for a, w, what in zip(got, want, ("loss", "probabilities", "gradient")):
            a, w = np.asarray(a), np.asarray(w)
            assert a.dtype == w.dtype and a.shape == w.shape, what
            assert np.array_equal(a, w, equal_nan=True), f"{what} at scale {scale}"


def test_the_loss_kernel_calls_numpys_own_exp_loop():
    """The kernel exponentiates with NumPy's inner loop itself (no np.exp call, none needed in
    a step's team) where that loop gave np.exp's bits on a probe of every magnitude; on the
    NumPy this project installs it does, so the bit tests above cover that path."""
    for dtype in (np.float32, np.float64):
        assert elementwise.uses_exp_loop(dtype)
        assert mlp.has_own_loss(dtype)  # a step's team also takes NumPy's log loop
    assert not elementwise.uses_exp_loop(np.float16)  # the kernel has no half-precision path
    assert not mlp.has_own_loss(np.float16)


def test_an_exp_that_is_not_numpys_ufunc_leaves_the_loss_to_it():
    """np.exp wrapped by some library before sparsekit is imported: no loop is taken from it
    (the kernels call the wrapper, and the step calls its loss back), and the import works."""
    code = ("import numpy as np; real = np.exp; np.exp = lambda *a, **k: real(*a, **k); "
            "from sparsekit._cython import elementwise, mlp; "
            "print(elementwise.uses_exp_loop(np.float32), mlp.has_own_loss(np.float32))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_the_loss_kernel_leaves_numpys_special_cases_to_numpy():
    z = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    # one sample (NumPy sums the classes pairwise), labels NumPy wraps or rejects
    assert elementwise.softmax_cross_entropy(np.ascontiguousarray(z[:, :1]), np.array([1])) is None
    assert elementwise.softmax_cross_entropy(z, np.array([0, 1, 2, -1, 0])) is None
    assert elementwise.softmax_cross_entropy(z, np.array([0, 1, 2, 3, 0])) is None
    assert elementwise.softmax_cross_entropy(z, np.array([0.0, 1, 2, 0, 0])) is None
    be = CpuBackend(1)
    # the backend refuses what NumPy would wrap (a negative label) or raise IndexError for
    for bad in ([0, 1, 2, -1, 0], [0, 1, 2, 3, 0]):
        with pytest.raises(ValueError, match=r"labels_b must lie in \[0, 3\)"):
            be.softmax_cross_entropy(z, np.array(bad))
    for logits, labels, match in ((z, np.array([0, 1]), "2 labels but logits_cb has a batch of 5"),
                                  (z.astype(np.int32), np.zeros(5, np.int64), "2-D float"),
                                  (z, np.zeros(5), "1-D integer"),
                                  (z, [0, 1, 2, 0, 0], "labels_b must be a numpy array")):
        with pytest.raises((TypeError, ValueError), match=match):
            be.softmax_cross_entropy(logits, labels)
    with pytest.raises(TypeError, match="x_ib must be a numpy array, got NoneType"):
        be.matmul(None, CSR.from_scipy(sp.random(3, 4, density=0.5, format="csr",
                                                 dtype=np.float32)))
    # any integer label dtype, and logits that are not C-contiguous
    for labels in (np.array([0, 1, 2, 2, 0], np.uint8), np.array([0, 1, 2, 2, 0], np.int32)):
        for logits in (z, np.asfortranarray(z)):
            got = be.softmax_cross_entropy(logits, labels)
            want = Backend.softmax_cross_entropy(be, logits, labels)
            for a, w in zip(got, want):
                assert np.array_equal(a, w)
