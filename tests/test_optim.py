"""The optimizer protocol: update rules against plain NumPy oracles (and PyTorch where installed),
host chunking, and optimizer state that follows every topology change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsekit import SparseMLP
from sparsekit.nn.csr import CSR
from sparsekit.nn.layers import SparseLayer
from sparsekit.training.optim import CHUNK, OPTIMIZERS, Adam, AdamW, MomentumSGD

LRS = [0.1, 0.05, 0.08, 0.02, 0.1]  # a changing rate: schedules are part of the contract


def oracle(name, p, grads, lrs, *, momentum=0.9, wd=0.01, decay="coupled", nesterov=False,
           betas=(0.9, 0.999), eps=1e-8):
    """The update rules written out in float64, one step at a time."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        if name == "sgd":
            step = lr * (g + wd * p) if decay == "coupled" else lr * g
            m = momentum * m - step
            if decay == "decoupled":
                p = p * (1 - wd)
            p = p + (momentum * m - step if nesterov else m)
        else:
            if name == "adamw":
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            m_hat = m / (1 - betas[0] ** t)
            v_hat = v / (1 - betas[1] ** t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


CASES = [
    ("sgd", dict(decay="coupled")),
    ("sgd", dict(decay="decoupled")),
    ("sgd", dict(decay="coupled", nesterov=True)),
    ("sgd", dict(decay="decoupled", nesterov=True)),
    ("adam", {}),
    ("adamw", {}),
]


def make(name, kw, wd=0.01):
    if name == "sgd":
        return MomentumSGD(momentum=0.9, weight_decay=wd, **kw)
    return OPTIMIZERS[name](betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)


def run(opt, p, grads, lrs):
    state = {s: np.zeros_like(p) for s in opt.slots}
    for g, lr in zip(grads, lrs):
        opt.t += 1
        opt.update(p, g, state, lr)
    return p, state


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("n", [1, 7, CHUNK + 13])  # one value, a small array, the chunked path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_matches_the_oracle(name, kw, n, dtype):
    rng = np.random.default_rng(n)
    p0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in LRS]
    p, state = run(make(name, kw), p0.copy(), grads, LRS)
    ref, m, v = oracle(name, p0, grads, LRS, **kw)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(p, ref, **tol)
    if name == "sgd":
        np.testing.assert_allclose(state["momentum"], m, **tol)
    else:
        np.testing.assert_allclose(state["exp_avg"], m, **tol)
        np.testing.assert_allclose(state["exp_avg_sq"], v, **tol)


@pytest.mark.parametrize("name,kw", CASES)
def test_chunked_and_whole_array_updates_agree_bitwise(name, kw):
    """Elementwise rules: a value's update must not depend on where it sits or on chunking."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal(2 * CHUNK + 5).astype(np.float32)
    grads = [rng.standard_normal(big.shape[0]).astype(np.float32) for _ in LRS]
    p_big, s_big = run(make(name, kw), big.copy(), grads, LRS)
    p_small, s_small = run(make(name, kw), big[-300:].copy(), [g[-300:] for g in grads], LRS)
    np.testing.assert_array_equal(p_big[-300:], p_small)
    for slot in s_big:
        np.testing.assert_array_equal(s_big[slot][-300:], s_small[slot])


@pytest.mark.parametrize("name,kw", CASES)
def test_matches_torch_optim(name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(6)]
    lr, wd = 0.05, 0.01
    param = torch.nn.Parameter(torch.tensor(p0))
    if name == "sgd":
        if kw["decay"] == "decoupled":
            pytest.skip("the reference code's decoupled shrink has no torch.optim twin")
        topt = torch.optim.SGD([param], lr=lr, momentum=0.9, weight_decay=wd,
                               nesterov=kw.get("nesterov", False))
    else:
        topt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](
            [param], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    for g in grads:
        param.grad = torch.tensor(g)
        topt.step()
    p, _ = run(make(name, kw, wd), p0.copy(), grads, [lr] * len(grads))
    np.testing.assert_allclose(p, param.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_bad_hyperparameters_name_the_argument():
    with pytest.raises(ValueError, match="momentum"):
        MomentumSGD(momentum=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        MomentumSGD(momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="decay"):
        MomentumSGD(decay="both")
    with pytest.raises(ValueError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="adam_eps"):
        AdamW(eps=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        Adam(weight_decay=-1.0)


def test_state_dict_round_trip_and_refuses_another_optimizer():
    opt = Adam()
    opt.t = 17
    other = Adam()
    other.load_state_dict(opt.state_dict())
    assert other.t == 17
    with pytest.raises(ValueError, match="'adam', not 'sgd'"):
        MomentumSGD().load_state_dict(opt.state_dict())


def test_lr_rescale_folds_into_sgd_velocity_only():
    model = SparseMLP([6, 5, 2], epsilon=2, seed=0)
    sgd = MomentumSGD()
    sgd.attach(model)
    for layer in model.layers:
        layer.state_w["momentum"][:] = 4.0
    sgd.rescale_lr(model, 0.25)
    assert all((layer.state_w["momentum"] == 1.0).all() for layer in model.layers)
    adam = Adam()
    adam.attach(model)  # a different optimizer takes over: its own slots, zeros
    assert list(model.layers[0].state_w) == ["exp_avg", "exp_avg_sq"]
    model.layers[0].state_w["exp_avg"][:] = 3.0
    adam.rescale_lr(model, 0.25)
    assert (model.layers[0].state_w["exp_avg"] == 3.0).all()


# --- optimizer state follows the topology ----------------------------------------------------
def _tagged_layer(be, rows, cols, shape):
    """A layer whose every state slot holds a value that names the connection."""
    keys = sorted(set(zip(rows, cols)))
    n_out, n_in = shape
    indptr = np.zeros(n_out + 1, np.int32)
    np.add.at(indptr, [r + 1 for r, _ in keys], 1)
    w = CSR(be.asarray(np.cumsum(indptr).astype(np.int32)),
            be.asarray(np.array([c for _, c in keys], np.int32)),
            be.asarray(np.arange(1, len(keys) + 1, dtype=np.float32)), shape)
    layer = SparseLayer(w, backend=be)
    layer.ensure_state(Adam.slots)
    tag = be.asarray(np.array([r * n_in + c for r, c in keys], np.float32))
    layer.state_w["exp_avg"][...] = tag
    layer.state_w["exp_avg_sq"][...] = -tag
    return layer


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rebuild_carries_every_slot_and_zeroes_new_connections(topo_backend, data):
    be = topo_backend
    n_out = data.draw(st.integers(1, 12))
    n_in = data.draw(st.integers(1, 12))
    cells = [(r, c) for r in range(n_out) for c in range(n_in)]
    present = data.draw(st.lists(st.sampled_from(cells), unique=True, max_size=len(cells)))
    rows, cols = [r for r, _ in present], [c for _, c in present]
    layer = _tagged_layer(be, rows, cols, (n_out, n_in))
    nnz = layer.nnz
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=nnz, max_size=nnz)), bool)
    absent = [cell for cell in cells if cell not in set(present)]
    new = data.draw(st.lists(st.sampled_from(absent), unique=True, max_size=len(absent))
                    if absent else st.just([]))
    new_r = np.array([r for r, _ in new], np.int32)
    new_c = np.array([c for _, c in new], np.int32)
    layer.rebuild(be.asarray(keep), be.asarray(new_r), be.asarray(new_c),
                  be.asarray(np.full(len(new), 9.0, np.float32)))
    w = layer.w
    w.validate()
    r_out = be.to_numpy(w.row_ids())
    c_out = be.to_numpy(w.indices)
    tag = r_out.astype(np.float32) * n_in + c_out
    is_new = np.isin(r_out * n_in + c_out, new_r.astype(np.int64) * n_in + new_c)
    m = be.to_numpy(layer.state_w["exp_avg"])
    v = be.to_numpy(layer.state_w["exp_avg_sq"])
    assert layer.nnz == int(keep.sum()) + len(new)
    np.testing.assert_array_equal(m[~is_new], tag[~is_new])
    np.testing.assert_array_equal(v[~is_new], -tag[~is_new])
    assert not m[is_new].any() and not v[is_new].any()
    np.testing.assert_array_equal(be.to_numpy(w.data)[is_new], 9.0)


def test_set_topology_refuses_misaligned_or_foreign_state():
    model = SparseMLP([6, 5, 2], epsilon=2, seed=0)
    layer = model.layers[0]
    layer.ensure_state(("momentum",))
    with pytest.raises(ValueError, match="aligned"):
        layer.set_topology(layer.w, {"momentum": np.zeros(layer.nnz + 1, np.float32)})
    with pytest.raises(ValueError, match="slots"):
        layer.set_topology(layer.w, {"exp_avg": np.zeros(layer.nnz, np.float32)})
    layer.set_topology(layer.w.copy())  # None: every slot starts at zero
    assert not layer.state_w["momentum"].any()
