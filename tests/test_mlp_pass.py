"""The CPU backend's fused training passes (``_cython/mlp.pyx``: the forward, and the backward
with the momentum SGD update, of every layer in one OpenMP team) against the generic
one-product-at-a-time passes of the base Backend, bit for bit, and against plain float64 oracles.

Bit-identity is the contract: the training engine takes the fused passes whenever a model
qualifies and the generic ones otherwise (a gradient hook, clipping, Adam, tanh, Top-KAST), so
a run must not depend on which path a step took.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from sparsekit._align import aligned_empty
from sparsekit._cython import mlp
from sparsekit._cython.backend import CpuBackend
from sparsekit.backends.base import Backend
from sparsekit.nn.activations import CrossEntropyLoss
from sparsekit.nn.layers import SparseLayer
from sparsekit.nn.model import SparseMLP
from sparsekit.training.optim import Adam, AdamW, MomentumSGD

# (layer sizes, density, batch): edges (one input, empty layers, one sample, odd batches) and
# the default network's shape class.
CASES = [([1, 3, 2], 0.5, 1), ([9, 1, 4], 0.3, 17), ([6, 5, 4], 0.0, 16), ([40, 33, 20, 7], 0.2, 130),
         ([64, 80, 80, 10], 0.1, 128), ([30, 70, 3], 1.0, 33),
         ([5, 0, 3], 0.5, 16), ([0, 4, 3], 0.5, 16), ([5, 4, 0, 3], 0.5, 16)]  # pruned away


def make_model(rng, sizes, density, dtype, idt, activation="allrelu", dropout=0.3, threads=2):
    be = ref.parallel_cpu(threads)  # its thresholds would run these small passes on one thread
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = ref.to_backend(be, ref.random_csr(rng, n_out, n_in, density), dtype, idt)
        layers.append(SparseLayer(w, rng.standard_normal(n_out) * 0.1, backend=be))
    return SparseMLP.from_layers(layers, activation=activation, dropout=dropout)


def batch(rng, n, b, dtype):
    x = aligned_empty((n, b), dtype)
    x[...] = rng.standard_normal((n, b))
    return x


def same(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(a, b), f"{what}: {int((a != b).sum())} of {a.size} values differ"


def forward_both(model, rng, b, dtype, rate=0.3):
    """A random batch through the fused forward and the generic one, logits checked equal:
    ``(x, got, want)``."""
    be, layers, acts_fn = model.backend, model.layers, model.activations
    x = batch(rng, layers[0].in_features, b, dtype)
    seeds = [int(s) for s in rng.integers(0, 2**63, size=len(layers) - 1)]
    want = Backend.mlp_forward(be, layers, acts_fn, x, rate, seeds)
    got = be.mlp_forward(layers, acts_fn, x, rate, seeds, {})
    same(got[0], want[0], "logits")
    return x, got, want


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64),
                                       (np.float32, np.int64)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_passes_equal_the_generic_ones_bit_for_bit(case, dtype, idt, threads):
    sizes, density, b = CASES[case]
    rng = np.random.default_rng(case)
    model = make_model(rng, sizes, density, dtype, idt, threads=threads)
    be, layers = model.backend, model.layers
    _, got, want = forward_both(model, rng, b, dtype)
    for i, (a, w) in enumerate(zip(got[1] + got[2], want[1] + want[2])):
        same(a, w, f"activation/derivative {i}")
    dlogits = rng.standard_normal(want[0].shape).astype(dtype) / b
    gw, dzw, _ = Backend.mlp_backward(be, layers, want[1], want[2], dlogits, True)
    gg, dzg, applied = be.mlp_backward(layers, want[1], want[2], dlogits, True, None, {})
    assert not applied and dzg[-1] is dlogits
    for i in range(len(layers)):
        same(gg[i][0], gw[i][0], f"grad_w {i}")
        same(gg[i][1], gw[i][1], f"grad_b {i}")
        same(dzg[i], dzw[i], f"dz {i}")


def full_output_model(rng, sizes, dtype, idt, threads):
    """A model whose last layer has every connection (``nnz == n_out * n_in``)."""
    model = make_model(rng, sizes[:-1] + [1], 0.3, dtype, idt, threads=threads)
    full = ref.to_backend(model.backend, ref.random_csr(rng, sizes[-1], sizes[-2], 1.0,
                                                        empty_row_frac=0.0), dtype, idt)
    assert full.nnz == sizes[-1] * sizes[-2]
    top = SparseLayer(full, rng.standard_normal(sizes[-1]) * 0.1, backend=model.backend)
    return SparseMLP.from_layers(model.layers[:-1] + [top], activation="allrelu", dropout=0.3)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("n_out,b", [(1, 1), (3, 15), (10, 128), (12, 33), (13, 100), (25, 31),
                                     (10, 16), (5, 47)])
def test_an_output_layer_with_full_rows_keeps_the_general_products_bits(n_out, b, dtype, idt,
                                                                        threads):
    """An output layer with every connection (a 10-class head at epsilon = 20) takes the
    blocked product of full rows (spmm.hh, sk_full_rows) inside the fused passes: its logits
    equal those of the one-product-at-a-time path, which runs the general walk, bit for bit, at
    every block split (12 rows a block) and batch tail, and a float64 oracle to rounding."""
    rng = np.random.default_rng(n_out * 1000 + b)
    sizes = [20, 37, n_out]
    model = full_output_model(rng, sizes, dtype, idt, threads)
    be, layers, acts_fn = model.backend, model.layers, model.activations
    x, got, _ = forward_both(model, rng, b, dtype)
    top = layers[-1]
    h = got[1][-1].astype(np.float64)
    oracle = top.w.to_scipy().astype(np.float64) @ h + top.b.astype(np.float64)[:, None]
    np.testing.assert_allclose(got[0], oracle, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    logits = be.mlp_infer(layers, acts_fn, x, {})
    same(logits, Backend.mlp_infer(be, layers, acts_fn, x), "inference logits")


def test_fused_forward_matches_a_float64_oracle():
    rng = np.random.default_rng(7)
    model = make_model(rng, [50, 40, 30, 5], 0.2, np.float32, np.int32, dropout=0.25)
    x = batch(rng, 50, 37, np.float32)
    seeds = [3, 2**63 + 5]
    logits, acts, derivs = model.backend.mlp_forward(model.layers, model.activations, x, 0.25,
                                                     seeds, {})
    a = x.astype(np.float64)
    for i, layer in enumerate(model.layers):
        w = ref.f64(layer.to_scipy())
        z = w @ a
        scale = abs(w) @ abs(a)
        if i < len(model.layers) - 1:
            a, d = ref.bias_act_dropout(z, layer.b, model.activations[i].slope, 0.25, seeds[i])
            ref.assert_close(acts[i + 1], a, 2 * scale + 1, w.shape[1], np.float32, f"act {i}")
            np.testing.assert_allclose(derivs[i], d, rtol=1e-6)
            a = a.astype(np.float32).astype(np.float64)
        else:
            ref.assert_close(logits, z + layer.b[:, None], scale + 1, w.shape[1], np.float32,
                             "logits")


OPTIMIZERS = {
    "sgd": lambda: MomentumSGD(0.9, 2e-4),
    "sgd-nesterov": lambda: MomentumSGD(0.9, 2e-4, nesterov=True),
    "sgd-decoupled": lambda: MomentumSGD(0.9, 0.01, "decoupled"),
    "sgd-decoupled-nesterov": lambda: MomentumSGD(0.9, 0.01, "decoupled", True),
    "adam": lambda: Adam(),
    "adam-l2": lambda: Adam(weight_decay=1e-3),
    "adamw": lambda: AdamW(),
    "adamw-no-decay": lambda: AdamW(weight_decay=0.0),
}


def numpy_step(opt, model, grads, lr):
    """``Optimizer.step`` as the optimizer's own NumPy code does it (the oracle of the
    backend's update kernel, which ``step`` itself calls where it can)."""
    opt.t += 1
    for layer, (gw, gb) in zip(model.layers, grads):
        opt.update(layer.w.data, gw, layer.state_w, lr)
        opt.update(layer.b, gb, layer.state_b, lr)


def models_with_state(name, dtype, t, sizes=(70, 90, 40, 6), density=0.3):
    """Two identical models with optimizer ``name``'s state as left by ``t`` earlier steps."""
    opts = [OPTIMIZERS[name]() for _ in range(2)]
    models = [make_model(np.random.default_rng(1), list(sizes), density, dtype, np.int32)
              for _ in range(2)]
    for opt, m in zip(opts, models):
        opt.attach(m)
        opt.t = t
        for layer in m.layers:
            for k, slot in enumerate(opt.slots):
                r = np.random.default_rng(2 + k)
                layer.state_w[slot][...] = r.standard_normal(layer.nnz) ** (k + 1) / 10
                layer.state_b[slot][...] = r.standard_normal(layer.b.shape[0]) ** (k + 1) / 10
    return opts, models


def assert_same_parameters(models, slots):
    for a, b in zip(*(m.layers for m in models)):
        same(b.w.data, a.w.data, "weights")
        same(b.b, a.b, "bias")
        for slot in slots:
            same(b.state_w[slot], a.state_w[slot], f"{slot} of the weights")
            same(b.state_b[slot], a.state_b[slot], f"{slot} of the bias")


@pytest.mark.parametrize("t", [0, 6])
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_unfused_step_updates_with_the_optimizers_bits(name, dtype, t):
    """``Optimizer.step`` after a step that could not fuse its update (a gradient hook,
    clipping, WASAP's server) runs the backend's kernel (``apply_update``): the bits of the
    optimizer's own NumPy update, on arrays longer than a chunk of either, 1 and 2 threads."""
    opts, models = models_with_state(name, dtype, t, (300, 700, 6), 0.6)
    assert models[0].layers[0].nnz > 1 << 16  # several of the kernel's and NumPy's chunks
    rng = np.random.default_rng(5)
    grads = [(rng.standard_normal(layer.nnz).astype(dtype) / 10,
              rng.standard_normal(layer.b.shape[0]).astype(dtype) / 10)
             for layer in models[0].layers]
    calls = []
    be = models[1].backend
    be.apply_update = lambda *a, _f=be.apply_update: calls.append(1) or _f(*a)
    numpy_step(opts[0], models[0], grads, 0.05)
    opts[1].step(models[1], grads, 0.05)
    assert len(calls) == 2 * len(models[1].layers)  # every array went through the kernel
    assert opts[0].t == opts[1].t == t + 1
    assert_same_parameters(models, opts[0].slots)
    numpy_step(opts[0], models[0], grads, 0.02)
    models[1].backend.num_threads = 1
    opts[1].step(models[1], grads, 0.02)
    assert_same_parameters(models, opts[0].slots)


@pytest.mark.parametrize("n", [0, 1, 17, (1 << 14) - 1, (1 << 14) + 1, 3 << 14])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_update_kernel_equals_the_optimizers_update_at_every_length(name, n):
    """``elementwise.apply_update`` against ``Optimizer.update`` on one array: empty, one value,
    around the kernel's 16 384-value chunks; 1 and 2 threads, float32."""
    from sparsekit._cython import elementwise

    rng = np.random.default_rng(n)
    opt = OPTIMIZERS[name]()
    opt.t = 3
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    state = {s: np.abs(rng.standard_normal(n)).astype(np.float32) / 10 for s in opt.slots}
    for threads in (1, 2):
        want_p, want_state = p.copy(), {k: v.copy() for k, v in state.items()}
        rule = opt.backend_rule(0.05)  # step t + 1's, which update() below runs at
        opt.t += 1
        opt.update(want_p, g, want_state, 0.05)
        opt.t -= 1
        got_p, got_state = p.copy(), {k: v.copy() for k, v in state.items()}
        elementwise.apply_update(rule, got_p, g, [got_state[s] for s in opt.slots], threads)
        same(got_p, want_p, f"parameters, {threads} thread(s)")
        for s in opt.slots:
            same(got_state[s], want_state[s], f"{s}, {threads} thread(s)")


def test_arrays_the_update_kernel_does_not_take_go_to_the_optimizer():
    """Another dtype, a strided or read-only array: ``apply_update`` declines, and
    ``Optimizer.step`` still updates, with the NumPy code's result."""
    be = CpuBackend(2)
    rule = MomentumSGD().backend_rule(0.1)
    p, g, v = (np.ones(10, np.float32) for _ in range(3))
    assert not be.apply_update(rule, p, g.astype(np.float64), [v])
    assert not be.apply_update(rule, p, np.ones(20, np.float32)[::2], [v])
    frozen = v.copy()
    frozen.flags.writeable = False
    assert not be.apply_update(rule, p, g, [frozen])
    assert not be.apply_update(("rmsprop", 0.1), p, g, [v])
    assert not be.apply_update(rule, p, g, [v, v])
    assert (p == 1).all() and (v == 1).all()
    assert be.apply_update(rule, p, g, [v]) and not (p == 1).all()
    from sparsekit._cython import elementwise
    with pytest.raises(ValueError, match="rule must be"):
        elementwise.apply_update(("sgd", 0.1), p, g, [v])
    with pytest.raises(ValueError, match="grad and state arrays"):
        elementwise.apply_update(rule, p, g[:5], [v])
    opts, models = models_with_state("adam", np.float32, 2, (9, 8, 3), 0.5)
    grads = [(np.ones(layer.nnz), np.ones(layer.b.shape[0])) for layer in models[0].layers]
    numpy_step(opts[0], models[0], grads, 0.05)  # float64 gradients: NumPy casts them
    opts[1].step(models[1], grads, 0.05)
    assert_same_parameters(models, opts[0].slots)


@pytest.mark.parametrize("t", [0, 6])
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_update_has_the_optimizers_bits(name, dtype, t):
    """The backward's update from ``backend_rule`` against the optimizer's own NumPy update,
    from state left by earlier steps (``t`` of them)."""
    rng = np.random.default_rng(3)
    opts, models = models_with_state(name, dtype, t)
    be = models[0].backend
    x = batch(rng, 70, 64, dtype)
    logits, acts, derivs = be.mlp_forward(models[0].layers, models[0].activations, x, 0.3,
                                          [1, 2], {})
    dlogits = rng.standard_normal(logits.shape).astype(dtype) / 64
    grads = Backend.mlp_backward(be, models[0].layers, acts, derivs, dlogits)[0]
    numpy_step(opts[0], models[0], grads, 0.05)
    _, _, applied = be.mlp_backward(models[1].layers, acts, derivs, dlogits, False,
                                    opts[1].backend_rule(0.05), {})
    assert applied
    opts[1].applied_by_backend()
    assert opts[0].t == opts[1].t == t + 1
    assert_same_parameters(models, opts[0].slots)


def test_an_update_the_backend_cannot_apply_is_left_to_the_optimizer():
    rng = np.random.default_rng(4)
    model = make_model(np.random.default_rng(1), [10, 12, 3], 0.5, np.float32, np.int32)
    be = model.backend
    x = batch(rng, 10, 16, np.float32)
    logits, acts, derivs = be.mlp_forward(model.layers, model.activations, x, 0.0, [1], {})
    dlogits = np.ones_like(logits) / 16
    before = [layer.w.data.copy() for layer in model.layers]
    Adam().attach(model)  # Adam's state, SGD's rule
    assert not be.mlp_backward(model.layers, acts, derivs, dlogits, False,
                               MomentumSGD().backend_rule(0.05), {})[2]
    assert not be.mlp_backward(model.layers, acts, derivs, dlogits, False,
                               ("rmsprop", 0.05), {})[2]
    for w, layer in zip(before, model.layers):
        same(layer.w.data, w, "weights")
    arrays = be._pass_arrays(model.layers, None)
    with pytest.raises(ValueError, match="update must be"):
        mlp.backward(arrays, list(acts), list(derivs), [np.empty((12, 16), np.float32), dlogits],
                     [np.empty(layer.nnz, np.float32) for layer in model.layers],
                     [np.empty(layer.b.shape[0], np.float32) for layer in model.layers],
                     ("rmsprop", 0.05))


def test_the_backends_update_slots_are_the_optimizers():
    assert CpuBackend._update_slots == {"sgd": MomentumSGD.slots, "adam": Adam.slots}
    assert AdamW.slots == Adam.slots


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 128, 129, 1000, 4099])
def test_row_sums_follow_numpys_order(n):
    z = (np.random.default_rng(n).standard_normal((5, n)) * 100).astype(np.float32)
    same(mlp.row_sums(z), z.sum(axis=1), "row sums")
    same(mlp.row_sums(z.astype(np.float64)), z.astype(np.float64).sum(axis=1), "float64")
    # a 1-D sum (the step's own loss takes the mean of a batch so) has the same order
    same(mlp.row_sums(z[:1]), np.array([z[0].sum()], np.float32), "1-D")


def test_models_the_fused_pass_cannot_run_take_the_generic_one():
    rng = np.random.default_rng(0)
    x = batch(rng, 20, 16, np.float32)
    tanh = make_model(rng, [20, 12, 4], 0.5, np.float32, np.int32, activation="tanh")
    assert not tanh.backend._fusable(tanh.layers, x, tanh.activations)
    logits, _, _ = tanh.backend.mlp_forward(tanh.layers, tanh.activations, x, 0.0, [0], {})
    same(logits, Backend.mlp_forward(tanh.backend, tanh.layers, tanh.activations, x, 0.0, [0])[0],
         "tanh logits")
    mixed = make_model(rng, [20, 12, 4], 0.5, np.float32, np.int32)
    w = mixed.layers[1].w
    mixed.layers[1].w = type(w)(w.indptr.astype(np.int64), w.indices.astype(np.int64), w.data,
                                w.shape)
    assert not mixed.backend._fusable(mixed.layers, x, mixed.activations)
    topk = make_model(rng, [20, 12, 4], 0.5, np.float32, np.int32)
    topk.layers[0].w_forward = topk.layers[0].w
    assert not topk.backend._fusable(topk.layers, x, topk.activations)
    assert not topk.backend._fusable(topk.layers, x[:, :0], topk.activations)


def test_bad_arrays_get_one_line_errors_before_any_work():
    rng = np.random.default_rng(0)
    model = make_model(rng, [8, 6, 3], 0.5, np.float32, np.int32)
    arrays = [{"indptr": layer.w.indptr, "indices": layer.w.indices, "data": layer.w.data,
               "bias": layer.b, "n_in": layer.in_features} for layer in model.layers]
    x = batch(rng, 8, 16, np.float32)
    outs = [aligned_empty((6, 16), np.float32), aligned_empty((3, 16), np.float32)]
    derivs = [aligned_empty((6, 16), np.float32)]
    with pytest.raises(ValueError, match=r"outs\[1\] must be a C-contiguous float32"):
        mlp.forward(arrays, x, [outs[0], outs[1][:2]], derivs, [0.5], [1], 0.3)
    with pytest.raises(ValueError, match=r"layers\[0\] has 8 inputs but gets 7"):
        mlp.forward(arrays, np.ascontiguousarray(x[:7]), outs, derivs, [0.5], [1], 0.3)
    with pytest.raises(ValueError, match=r"x_ib must be a C-contiguous float32"):
        mlp.forward(arrays, x[:, ::2], outs, derivs, [0.5], [1], 0.3)
    with pytest.raises(ValueError, match="dropout rate"):
        mlp.forward(arrays, x, outs, derivs, [0.5], [1], 1.0)
    bad = dict(arrays[1], data=arrays[1]["data"].astype(np.float64))
    with pytest.raises(ValueError, match=r"layers\[1\]\['data'\] must be a C-contiguous float32"):
        mlp.forward([arrays[0], bad], x, outs, derivs, [0.5], [1], 0.3)
    frozen = outs[0].copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"outs\[0\] is read-only"):
        mlp.forward(arrays, x, [frozen, outs[1]], derivs, [0.5], [1], 0.3)
    with pytest.raises(ValueError, match="one per hidden layer"):
        mlp.forward(arrays, x, outs, [], [0.5], [1], 0.3)



def _padded(n_rows, b, dtype, ld, fulls=None):
    """An ``(n_rows, b)`` view, rows ``ld`` apart, of an array filled with NaN (appended to
    ``fulls``): a pass that read a padding value or wrote past a row would show."""
    full = aligned_empty((n_rows, ld), dtype)
    full[...] = np.nan
    if fulls is not None:
        fulls.append(full)
    return full[:, :b]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("b,pad", [(1, 15), (17, 15), (100, 12), (100, 28), (130, 14),
                                   (128, 16)])
def test_passes_on_rows_a_padded_stride_apart_give_the_contiguous_bits(b, pad, dtype, idt,
                                                                      threads):
    """The backend's step pads every batch array's rows to whole vectors (``ld`` > batch):
    forward, backward with an update and a whole step give the same bits as on contiguous
    rows, and leave the padding as it was."""
    sizes = [40, 33, 20, 7]
    rng = np.random.default_rng(b + pad)
    models = [_with_momentum(make_model(np.random.default_rng(5), sizes, 0.2, dtype, idt,
                                        threads=threads), UPDATES[2]) for _ in range(2)]
    data = rng.standard_normal((b + 9, sizes[0])).astype(dtype)
    idx = rng.integers(0, b + 9, b).astype(np.int64)
    y = rng.integers(0, sizes[-1], b)
    results = []
    for model, ld in zip(models, (b, b + pad)):
        fulls: list = []
        arrays = [dict(indptr=lay.w.indptr, indices=lay.w.indices, data=lay.w.data,
                       bias=lay.b, n_in=lay.in_features, mom_w=lay.state_w["exp_avg"],
                       mom_b=lay.state_b["exp_avg"], sq_w=lay.state_w["exp_avg_sq"],
                       sq_b=lay.state_b["exp_avg_sq"])
                  for lay in model.layers]
        for arr, lay in zip(arrays, model.layers):
            arr["t_indptr"], arr["t_rows"], arr["t_perm"] = model.backend.transpose_index(lay.w)
        x_ib = _padded(sizes[0], b, dtype, ld, fulls)
        outs = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:]]
        derivs = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:-1]]
        dzs = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:-1]]
        grads = [np.zeros(lay.nnz, dtype) for lay in model.layers]
        gbs = [np.zeros(lay.out_features, dtype) for lay in model.layers]
        loss = _softmax_loss(y)
        mlp.step(arrays, x_ib, outs, derivs, [0.6, 0.6], [3, 4], 0.3,
                 (data, idx, np.empty((b, sizes[0]), dtype)),
                 lambda loss=loss, outs=outs: loss(outs[-1])[2], dzs,
                 grads, gbs, UPDATES[2], threads)
        # the passes one by one on the step's activations: a second update
        fwd = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:]]
        fwd_d = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:-1]]
        mlp.forward(arrays, x_ib, fwd, fwd_d, [0.6, 0.6], [5, 6], 0.3, threads)
        dz2 = [_padded(n, b, dtype, ld, fulls) for n in sizes[1:-1]] + [loss(fwd[-1])[2]]
        grads2 = [np.zeros(lay.nnz, dtype) for lay in model.layers]
        gbs2 = [np.zeros(lay.out_features, dtype) for lay in model.layers]
        mlp.backward(arrays, [x_ib, *fwd[:-1]], fwd_d, dz2, grads2, gbs2, UPDATES[2], threads)
        for full in fulls:
            assert ld == b or np.isnan(full[:, b:]).all(), "a pass wrote into the padding"
        results.append([x_ib, *outs, *derivs, *dzs, *grads, *gbs, *fwd, *fwd_d, *dz2[:-1],
                        *grads2, *gbs2, *(lay.w.data for lay in model.layers),
                        *(lay.b for lay in model.layers)])
    for i, (got, want) in enumerate(zip(*results[::-1])):
        same(np.ascontiguousarray(got), want, f"array {i}")


def test_a_pass_refuses_batch_arrays_of_another_row_stride():
    rng = np.random.default_rng(0)
    model = make_model(rng, [8, 6, 3], 0.5, np.float32, np.int32)
    arrays = [{"indptr": layer.w.indptr, "indices": layer.w.indices, "data": layer.w.data,
               "bias": layer.b, "n_in": layer.in_features} for layer in model.layers]
    x = _padded(8, 20, np.float32, 32)
    x[...] = rng.standard_normal((8, 20))
    outs = [_padded(6, 20, np.float32, 32), _padded(3, 20, np.float32, 32)]
    derivs = [_padded(6, 20, np.float32, 32)]
    mlp.forward(arrays, x, outs, derivs, [0.5], [1], 0.3)  # one stride: fine
    with pytest.raises(ValueError, match=r"outs\[1\] must be a C-contiguous float32 array of "
                                         r"shape \(3, 20\) \(rows 32 values apart\)"):
        mlp.forward(arrays, x, [outs[0], aligned_empty((3, 20), np.float32)], derivs, [0.5],
                    [1], 0.3)
    with pytest.raises(ValueError, match=r"derivs\[0\] must be a C-contiguous"):
        mlp.forward(arrays, x, outs, [_padded(6, 20, np.float32, 48)], [0.5], [1], 0.3)
    assert [mlp.batch_stride(b, 4) for b in (1, 16, 17, 100, 200)] == [16, 16, 32, 112, 208]
    assert [mlp.batch_stride(b, 8) for b in (1, 8, 9, 100)] == [8, 8, 16, 104]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_a_forward_without_derivatives_writes_the_same_activations(dtype, rate):
    """Inference passes None for the derivatives: the activations keep their bits (dropout
    included), no derivative buffer is made, and a step, which needs them, refuses None."""
    rng = np.random.default_rng(7)
    model = make_model(rng, [40, 33, 20, 7], 0.2, dtype, np.int32)
    arrays = [{"indptr": layer.w.indptr, "indices": layer.w.indices, "data": layer.w.data,
               "bias": layer.b, "n_in": layer.in_features} for layer in model.layers]
    x = batch(rng, 40, 24, dtype)

    def run(with_derivs):
        outs = [aligned_empty((n, 24), dtype) for n in (33, 20, 7)]
        derivs = [aligned_empty((n, 24), dtype) if with_derivs else None for n in (33, 20)]
        mlp.forward(arrays, x, outs, derivs, [0.6, 0.6], [3, 4], rate, 2)
        return outs

    for i, (got, want) in enumerate(zip(run(False), run(True))):
        same(got, want, f"output {i}")
    buffers: dict = {}
    logits = model.backend.mlp_infer(model.layers, model.activations, x, buffers)
    same(logits, Backend.mlp_infer(model.backend, model.layers, model.activations, x), "logits")
    assert not [k for k in buffers if isinstance(k, tuple) and k[0] == "deriv"]
    with pytest.raises(ValueError, match=r"derivs\[0\] must be a NumPy array"):
        mlp.step(arrays, x, [aligned_empty((n, 24), dtype) for n in (33, 20, 7)], [None, None],
                 [0.6, 0.6], [3, 4], 0.0, None, lambda: None,
                 [aligned_empty((n, 24), dtype) for n in (33, 20)],
                 [np.zeros(lay.nnz, dtype) for lay in model.layers],
                 [np.zeros(lay.out_features, dtype) for lay in model.layers], None, 2)

class OneProductAtATime(CpuBackend):
    """The CPU backend without its fused passes."""

    def _fusable(self, *args, **kwargs) -> bool:
        return False


@pytest.mark.parametrize("optimizer,method", [("sgd", "set"), ("sgd", "gse"), ("adam", "set"),
                                              ("sgd", "static")])
def test_training_is_the_same_with_and_without_the_fused_passes(optimizer, method):
    from sparsekit import train

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 30)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    runs = [train([30, 64, 48, 4], (x, y), epochs=3, seed=1, batch_size=32, epsilon=8,
                  optimizer=optimizer, method=method, backend=be(2))
            for be in (OneProductAtATime, CpuBackend)]
    hist = [[{k: v for k, v in rec.items() if not k.startswith("time")} for rec in r.history]
            for r in runs]
    assert hist[0] == hist[1]
    for a, b in zip(*(r.model.layers for r in runs)):
        same(b.w.data, a.w.data, "weights")
        same(b.b, a.b, "bias")



@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_the_forward_of_rows_gathers_the_batch_in_its_team(case, dtype, idt, threads):
    # mlp_forward_rows on the CPU copies and transposes the batch inside the forward's team;
    # it must give feature_major's batch and mlp_forward's bits, repeated rows included.
    sizes, density, b = CASES[case]
    rng = np.random.default_rng(100 + case)
    model = make_model(rng, sizes, density, dtype, idt, threads=threads)
    be, layers, acts_fn = model.backend, model.layers, model.activations
    n = 3 * b + 5
    x = rng.standard_normal((n, sizes[0])).astype(dtype)
    idx = rng.integers(0, n, b)
    idx[: b // 4] = idx[-1]
    seeds = [int(s) for s in rng.integers(0, 2**63, size=len(layers) - 1)]
    want = Backend.mlp_forward_rows(be, layers, acts_fn, x, idx, dtype, 0.3, seeds)
    buffers = {}
    for _ in range(2):  # the second call reuses the buffers
        got = be.mlp_forward_rows(layers, acts_fn, x, idx, dtype, 0.3, seeds, buffers)
        same(got[1][0], np.ascontiguousarray(x[idx].T), "batch")
        same(got[0], want[0], "logits")
        for i, (a, w) in enumerate(zip(got[1] + got[2], want[1] + want[2])):
            same(a, w, f"activation/derivative {i}")


def _softmax_loss(y):
    from sparsekit.nn.activations import softmax_cross_entropy

    return lambda logits: softmax_cross_entropy(np, logits, y, as_float=False)


def _with_momentum(model, update=None):
    """Every layer with the state ``update``'s kind reads (momentum SGD's by default), not
    zero, as after earlier steps."""
    for layer in model.layers:
        if update is not None and update[0] == "adam":
            layer.state_w["exp_avg"] = np.full_like(layer.w.data, 0.01)
            layer.state_b["exp_avg"] = np.full_like(layer.b, -0.01)
            layer.state_w["exp_avg_sq"] = np.full_like(layer.w.data, 1e-4)
            layer.state_b["exp_avg_sq"] = np.full_like(layer.b, 2e-4)
        else:
            layer.state_w["momentum"] = np.full_like(layer.w.data, 0.01)
            layer.state_b["momentum"] = np.full_like(layer.b, -0.01)
    return model


def _rule(opt, t=3, lr=0.05):
    """``opt``'s update rule at its step ``t``."""
    opt.t = t - 1
    return opt.backend_rule(lr)


#: Update rules as the optimizers give them: SGD coupled, Nesterov with decoupled decay, Adam
#: (L2 decay) and AdamW.
UPDATES = [_rule(MomentumSGD(0.9, 1e-3)), _rule(MomentumSGD(0.9, 1e-3, "decoupled", True)),
           _rule(Adam(weight_decay=1e-3)), _rule(AdamW(weight_decay=1e-3))]


@pytest.mark.parametrize("own_loss", [False, True], ids=["loss-called", "loss-in-team"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("update,keep_dz", [(None, True), (UPDATES[0], False), (UPDATES[1], True),
                                            (UPDATES[2], False), (UPDATES[3], True)])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_step_in_one_team_equals_the_passes_one_by_one(case, dtype, idt, update, keep_dz,
                                                         threads, own_loss, monkeypatch):
    """... and with ``own_loss`` (the loss a CrossEntropyLoss, which the CPU team computes
    itself between its passes, batches of 2 and more) the same bits as the generic NumPy
    softmax cross-entropy called between the passes."""
    sizes, density, b = CASES[case]
    models = [_with_momentum(make_model(np.random.default_rng(200 + case), sizes, density,
                                        dtype, idt, threads=threads), update) for _ in range(2)]
    rng = np.random.default_rng(case)
    n = 2 * b + 3
    x = rng.standard_normal((n, sizes[0])).astype(dtype)
    idx = rng.integers(0, n, b)
    y = rng.integers(0, max(sizes[-1], 1), b)
    seeds = [int(s) for s in rng.integers(0, 2**63, size=len(sizes) - 2)]
    in_team = []
    step_labels = CpuBackend._step_labels
    monkeypatch.setattr(CpuBackend, "_step_labels",
                        lambda self, *a: in_team.append(step_labels(self, *a)) or in_team[-1])
    results = []
    for model, step in zip(models, (Backend.mlp_step, CpuBackend.mlp_step)):
        be = model.backend
        loss = CrossEntropyLoss(be, y) if own_loss and step is CpuBackend.mlp_step else \
            _softmax_loss(y)
        results.append(step(be, model.layers, model.activations, x, idx, dtype, 0.3, seeds,
                            loss, keep_dz, update, {}))
    if sizes[1:-1] and all(sizes):  # a step in one team (not a layer pruned away)
        assert [labels is not None for labels in in_team] == [own_loss and b >= 2]
    (want_loss, want_acts, want_derivs, want_bwd), (got_loss, acts, derivs, bwd) = results
    assert got_loss[0] == want_loss[0]
    same(got_loss[1], want_loss[1], "out")
    for i, (a, w) in enumerate(zip(acts + derivs, want_acts + want_derivs)):
        same(a, w, f"activation/derivative {i}")
    assert bwd[2] == want_bwd[2] == (update is not None)
    for i in range(len(sizes) - 1):
        same(bwd[0][i][0], want_bwd[0][i][0], f"grad_w {i}")
        same(bwd[0][i][1], want_bwd[0][i][1], f"grad_b {i}")
        if keep_dz:
            same(bwd[1][i], want_bwd[1][i], f"dz {i}")
        for part in ("w", "b"):
            new, old = (getattr(m.layers[i], part) for m in models)
            same(new.data if part == "w" else new, old.data if part == "w" else old, part)
    if keep_dz:
        assert bwd[1][-1] is got_loss[2]  # the loss's own array, as mlp_backward keeps it


@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("b,nan", [(2, False), (3, False), (8, True), (129, True)])
def test_the_steps_own_loss_keeps_numpys_bits_at_the_edges(b, nan, dtype, idt):
    """Batches of 2 and 3 (the mean's divisor, NumPy's short sums) and a sample whose input is
    NaN (np.maximum keeps it, so the loss is NaN): the team's own loss gives the generic
    loss's value, probabilities and gradient."""
    rng = np.random.default_rng(b)
    models = [make_model(np.random.default_rng(7), [12, 20, 5], 0.4, dtype, idt, threads=2)
              for _ in range(2)]
    x = rng.standard_normal((b + 4, 12)).astype(dtype)
    if nan:
        x[1, 3] = np.nan
    idx, y = np.arange(b), rng.integers(0, 5, b)
    want = Backend.mlp_step(models[0].backend, models[0].layers, models[0].activations, x, idx,
                            dtype, 0.0, [5], _softmax_loss(y), True, None, {})
    be = models[1].backend
    got = be.mlp_step(models[1].layers, models[1].activations, x, idx, dtype, 0.0, [5],
                      CrossEntropyLoss(be, y), True, None, {})
    assert np.isnan(got[0][0]) == nan
    assert np.asarray(got[0][0]).dtype == dtype
    for a, w, what in zip(got[0], want[0], ("loss", "probabilities", "gradient")):
        assert np.array_equal(np.asarray(a), np.asarray(w), equal_nan=True), what


def test_a_step_whose_loss_fails_or_does_not_fit_still_ends_right():
    rng = np.random.default_rng(0)
    model = _with_momentum(make_model(rng, [6, 8, 3], 0.5, np.float32, np.int32, threads=2))
    be, layers, acts_fn = model.backend, model.layers, model.activations
    x = rng.standard_normal((20, 6)).astype(np.float32)
    idx, y = np.arange(16), rng.integers(0, 3, 16)
    before = [layer.w.data.copy() for layer in layers]
    sgd = ("sgd", 0.1, 0.9, 0.0, True, False)

    def failing(logits):
        raise KeyError("from the loss")

    with pytest.raises(KeyError, match="from the loss"):  # raised once the team has ended
        be.mlp_step(layers, acts_fn, x, idx, np.float32, 0.0, [1], failing, False, sgd, {})
    for w, layer in zip(before, layers):
        same(layer.w.data, w, "weights after a failed loss")
    # a gradient the team cannot read (not C-contiguous): the backward runs after the team
    loss = _softmax_loss(y)

    def fortran_order(logits):
        value, out, d = loss(logits)
        return value, out, np.asfortranarray(d)

    twin = _with_momentum(make_model(np.random.default_rng(0), [6, 8, 3], 0.5, np.float32,
                                     np.int32, threads=2))
    got = be.mlp_step(layers, acts_fn, x, idx, np.float32, 0.0, [1], fortran_order, True, sgd, {})
    want = Backend.mlp_step(twin.backend, twin.layers, twin.activations, x, idx, np.float32,
                            0.0, [1], fortran_order, True, sgd, {})
    for i in range(2):
        same(got[3][0][i][0], want[3][0][i][0], f"grad_w {i}")
        same(layers[i].w.data, twin.layers[i].w.data, f"weights {i}")
    # the kernel: None from the loss ends the step after the forward
    arrays = [dict(indptr=lay.w.indptr, indices=lay.w.indices, data=lay.w.data, bias=lay.b,
                   n_in=lay.in_features, t_indptr=t[0], t_rows=t[1], t_perm=t[2])
              for lay, t in ((lay, be.transpose_index(lay.w)) for lay in layers)]
    x_ib = np.ascontiguousarray(x[:16].T)
    outs = [aligned_empty((8, 16), np.float32), aligned_empty((3, 16), np.float32)]
    derivs, dzs = [aligned_empty((8, 16), np.float32)], [aligned_empty((8, 16), np.float32)]
    grads = [np.full(lay.nnz, 7, np.float32) for lay in layers]
    gbs = [np.full(lay.out_features, 7, np.float32) for lay in layers]
    assert mlp.step(arrays, x_ib, outs, derivs, [0.5], [1], 0.0, None, lambda: None, dzs,
                    grads, gbs, None, 2) is None
    assert all((g == 7).all() for g in grads + gbs)
    with pytest.raises(ValueError, match="the loss gradient must be a C-contiguous float32"):
        mlp.step(arrays, x_ib, outs, derivs, [0.5], [1], 0.0, None,
                 lambda: np.zeros((3, 15), np.float32), dzs, grads, gbs, None, 2)
    with pytest.raises(ValueError, match="dzs needs one array per hidden layer"):
        mlp.step(arrays, x_ib, outs, derivs, [0.5], [1], 0.0, None, lambda: None, [], grads,
                 gbs, None, 2)
    # the team's own loss: labels it cannot use are refused before any work
    for labels, match in ((y.astype(np.int32), r"labels must be an int64 array of shape \(16,\)"),
                          (y[:15], r"labels must be an int64 array of shape \(16,\)"),
                          (np.full(16, 3), r"labels must lie in \[0, 3\)"),
                          (np.full(16, -1), r"labels must lie in \[0, 3\)")):
        with pytest.raises(ValueError, match=match):
            mlp.step(arrays, x_ib, outs, derivs, [0.5], [1], 0.0, None, None, dzs, grads, gbs,
                     None, 2, labels)
    assert all((g == 7).all() for g in grads + gbs)
    with pytest.raises(ValueError, match="of 2 samples or more"):
        mlp.step(arrays, x_ib[:, :1], [o[:, :1] for o in outs], [d[:, :1] for d in derivs],
                 [0.5], [1], 0.0, None, None, [d[:, :1] for d in dzs], grads, gbs, None, 2,
                 y[:1])
    # ... and a CrossEntropyLoss whose labels do not qualify is called as any loss, which says
    # what is wrong; labels of another integer type are the team's too, with the generic bits
    with pytest.raises(ValueError, match=r"labels_b must lie in \[0, 3\)"):
        be.mlp_step(layers, acts_fn, x, idx, np.float32, 0.0, [1],
                    CrossEntropyLoss(be, np.full(16, 3)), False, sgd, {})
    for i in range(2):
        same(layers[i].w.data, twin.layers[i].w.data, f"weights {i} after refused labels")
    got = be.mlp_step(layers, acts_fn, x, idx, np.float32, 0.0, [1],
                      CrossEntropyLoss(be, y.astype(np.uint8)), False, sgd, {})
    want = Backend.mlp_step(twin.backend, twin.layers, twin.activations, x, idx, np.float32,
                            0.0, [1], _softmax_loss(y), False, sgd, {})
    assert got[0][0] == want[0][0]
    for i in range(2):
        same(layers[i].w.data, twin.layers[i].w.data, f"weights {i}, uint8 labels")
    logits = np.zeros((3, 16), np.float32)
    assert be._step_labels(CrossEntropyLoss(be, y.astype(np.uint8)), logits).dtype == np.int64
    for labels, z in ((np.full(16, 2**63, np.uint64), logits), (y[:1], logits[:, :1]),
                      (y.astype(np.float32), logits)):
        assert be._step_labels(CrossEntropyLoss(be, labels), z) is None


def test_the_forward_of_rows_keeps_numpys_indexing():
    rng = np.random.default_rng(0)
    model = make_model(rng, [6, 5, 3], 0.5, np.float32, np.int32)
    be, layers, acts_fn = model.backend, model.layers, model.activations
    x = rng.standard_normal((10, 6)).astype(np.float32)
    for idx in (np.array([-1, 3, -10]), np.array([2, 3], dtype=np.uint8)):
        got = be.mlp_forward_rows(layers, acts_fn, x, idx, np.float32, 0.0, [1], {})
        same(got[1][0], np.ascontiguousarray(x[idx].T), "batch")
    with pytest.raises(IndexError):
        be.mlp_forward_rows(layers, acts_fn, x, np.array([0, 10]), np.float32, 0.0, [1], {})
    # the kernel itself refuses what it cannot copy safely, with one line naming it
    arrays = [{"indptr": layer.w.indptr, "indices": layer.w.indices, "data": layer.w.data,
               "bias": layer.b, "n_in": layer.in_features} for layer in layers]
    x_ib, rows = aligned_empty((6, 2), np.float32), aligned_empty((2, 6), np.float32)
    outs = [aligned_empty((5, 2), np.float32), aligned_empty((3, 2), np.float32)]
    derivs = [aligned_empty((5, 2), np.float32)]
    with pytest.raises(ValueError, match=r"gather idx must lie in \[0, 10\)"):
        mlp.forward(arrays, x_ib, outs, derivs, [0.5], [1], 0.3,
                    gather=(x, np.array([0, 10]), rows))
    with pytest.raises(ValueError, match=r"gather idx must be a C-contiguous int64"):
        mlp.forward(arrays, x_ib, outs, derivs, [0.5], [1], 0.3,
                    gather=(x, np.array([0, 1], dtype=np.int32), rows))
    with pytest.raises(ValueError, match=r"gather data must be a C-contiguous float32"):
        mlp.forward(arrays, x_ib, outs, derivs, [0.5], [1], 0.3,
                    gather=(x[:, :5], np.array([0, 1]), rows))
    frozen = x_ib.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"x_ib is read-only"):
        mlp.forward(arrays, frozen, outs, derivs, [0.5], [1], 0.3,
                    gather=(x, np.array([0, 1]), rows))


@pytest.mark.parametrize("n,f,b", [(50, 784, 128), (9, 1, 1), (40, 70, 17), (5, 3, 0)])
def test_the_feature_major_batch_is_reused_and_right(n, f, b):
    rng = np.random.default_rng(f)
    be, buffers = CpuBackend(2), {}
    for dtype in (np.float64, np.float32, np.float32):  # a cast, then the tiled transpose twice
        x = rng.standard_normal((n, f)).astype(dtype)
        idx = rng.integers(0, n, b)
        got = be.feature_major(x, idx, np.float32, buffers)
        same(got, np.ascontiguousarray(x[idx].T.astype(np.float32)), "batch")
        assert got is buffers["batch"][1] and (got.size == 0 or got.ctypes.data % 64 == 0)
    with pytest.raises(IndexError):
        be.feature_major(x, np.array([n]), np.float32, buffers)


@pytest.mark.parametrize("b,f", [(0, 5), (1, 1), (17, 65), (128, 784), (100, 3072), (33, 2),
                                 (16, 16), (32, 48), (48, 1000)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_into_is_a_transpose(b, f, threads, dtype):
    """Every value lands in its place with its bits (NaN payloads, -0.0, subnormals): whole
    16 x 16 blocks through registers (AVX-512, float32), the edges value by value."""
    from sparsekit._cython import elementwise

    src = np.random.default_rng(b).standard_normal((b, f)).astype(dtype)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    special = np.array([np.nan, -0.0, np.inf, np.finfo(dtype).smallest_subnormal], dtype)
    special[:1].view(uint)[0] |= 5  # a NaN with a payload
    src.reshape(-1)[: min(src.size, 4)] = special[: min(src.size, 4)]
    out = np.empty((f, b), dtype)
    elementwise.transpose_into(src, out, threads)
    np.testing.assert_array_equal(out.view(uint), np.ascontiguousarray(src.T).view(uint))
    with pytest.raises(ValueError, match="out must have shape"):
        elementwise.transpose_into(src, np.empty((f, b + 1), dtype))


class _Generic(CpuBackend):
    """The CPU backend with the base class's one-product-at-a-time inference."""

    mlp_infer = Backend.mlp_infer
    infer_batch = Backend.infer_batch


@pytest.mark.parametrize("activation", ["allrelu", "relu", "tanh"])
@pytest.mark.parametrize("dtype,idt", [(np.float32, np.int32), (np.float64, np.int64),
                                       (np.float32, np.int64)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_inference_equals_the_generic_one_bit_for_bit(case, dtype, idt, activation):
    sizes, density, b = CASES[case]
    rng = np.random.default_rng(100 + case)
    model = make_model(rng, sizes, density, dtype, idt, activation=activation)
    g = _Generic(2)
    generic = SparseMLP.from_layers([SparseLayer(layer.w, layer.b, backend=g)
                                     for layer in model.layers], activation=activation)
    x = rng.standard_normal((3 * b + 1, sizes[0])).astype(dtype)
    want = generic.logits(x, batch_size=b)
    for batch_size in (1, b, 2048):  # streamed in passes of infer_batch samples
        same(model.logits(x, batch_size=batch_size), want, f"logits, batch_size={batch_size}")
    if sizes[0]:
        import scipy.sparse as sp
        same(model.logits(sp.csr_matrix(x)), want, "logits of a sparse x")


def test_inference_passes_stay_within_the_one_product_memory():
    be = CpuBackend(2)
    rng = np.random.default_rng(0)
    wide = make_model(rng, [784, 1000, 1000, 1000, 10], 0.02, np.float32, np.int32)
    assert be.infer_batch(wide.layers, 2048, wide.activations) == be.infer_block
    # At 100 samples a pass's 3 outputs and derivatives may take 3 arrays of 1000 x 100 (49
    # samples), cut to whole vectors of samples.
    assert be.infer_batch(wide.layers, 100, wide.activations) == 48
    # Ten equal hidden layers: every layer's output and derivative of a pass may not take more
    # than three arrays of the widest layer at the caller's batch size.
    deep = make_model(rng, [50] + [400] * 10 + [3], 0.02, np.float32, np.int32)
    got = be.infer_batch(deep.layers, 64, deep.activations)
    assert 2 * got * sum(layer.out_features for layer in deep.layers) <= 3 * 400 * 64
    assert got >= 1
    tanh = make_model(rng, [20, 30, 4], 0.5, np.float32, np.int32, activation="tanh")
    assert be.infer_batch(tanh.layers, 2048, tanh.activations) == 2048  # the generic path


def test_inference_passes_shrink_to_the_cache_but_not_below_infer_min():
    """Wider layers take fewer samples per pass (their gathered rows stay in L2), never fewer
    than ``infer_min``, always whole vectors of samples; float64 rows take half as many."""
    be = CpuBackend(1)
    rng = np.random.default_rng(1)
    steps = []
    for width in (1000, 3000, 10_000, 40_000):
        model = make_model(rng, [20, width, 10], 2e-4, np.float32, np.int32)
        steps.append(be.infer_batch(model.layers, 2048, model.activations))
    assert steps == [256, 80, 64, 64]
    f64 = make_model(rng, [20, 1000, 10], 0.01, np.float64, np.int64)
    assert be.infer_batch(f64.layers, 2048, f64.activations) == 128
    # A caller's batch below a vector is taken whole; above, cut to whole vectors.
    assert be.infer_batch(f64.layers, 5, f64.activations) == 5
    assert be.infer_batch(f64.layers, 127, f64.activations) == 120


def test_the_index_range_check_finds_every_out_of_range_entry():
    from sparsekit._cython import elementwise

    assert elementwise.indices_below(np.empty(0, np.int64), 0)
    for n in (1, 7, 200):
        ok = np.arange(n, dtype=np.int64)
        assert elementwise.indices_below(ok, n)
        for bad in (-1, n, np.iinfo(np.int64).min, np.iinfo(np.int64).max):
            for at in (0, n // 2, n - 1):
                a = ok.copy()
                a[at] = bad
                assert not elementwise.indices_below(a, n), (n, bad, at)
