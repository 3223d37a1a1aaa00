"""sparsekit.torch.DynamicSparsity: every growth method in a torch loop, the torch optimizer's
state carried through topology changes (property tests), exact resume through torch.save/load,
and the errors a user meets."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")


pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
}
METHODS = ("set", "gse", "rigl", "topkast")


def make_net(seed=0, width=24):
    net = torch.nn.Sequential(torch.nn.Linear(12, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, 3))
    return skt.sparsify(net, epsilon=3, seed=seed)


def batch(step, n=32):
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 12, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def train_step(net, opt, step):
    x, y = batch(step)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def snapshot(net, opt):
    """{layer: {(row, col): (value, {slot: state})}} of every sparse layer."""
    out = []
    for m in [m for m in net.modules() if isinstance(m, skt.SparseLinear)]:
        rows = np.repeat(np.arange(m.out_features), np.diff(m.crow_indices.numpy()))
        state = {k: v.clone() for k, v in opt.state[m.values].items()
                 if torch.is_tensor(v) and v.shape == m.values.shape}
        out.append({(int(r), int(c)): (m.values[i].item(), {k: v[i].item() for k, v in
                                                             state.items()})
                    for i, (r, c) in enumerate(zip(rows, m.col_indices.tolist()))})
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), optimizer=st.sampled_from(sorted(OPTIMIZERS)),
       seed=st.integers(0, 2**16))
def test_state_follows_the_connections(method, optimizer, seed):
    """After every update: kept connections keep value and every state slot, dropped ones are
    gone, new ones have zero state (and, for the gradient methods, zero weight)."""
    net = make_net(seed)
    opt = OPTIMIZERS[optimizer](net.parameters())
    params = {"penalty": 0.0} if method == "topkast" else {}
    dyn = skt.DynamicSparsity(net, opt, method, every=2, total_steps=8, seed=seed, **params)
    updates = 0
    for step in range(7):
        train_step(net, opt, step)
        before = snapshot(net, opt)
        stats = dyn.step()
        after = snapshot(net, opt)
        for b, a, m in zip(before, after, dyn.modules):
            assert m.values.shape == m.col_indices.shape
            slots = set(next(iter(b.values()))[1])
            assert slots and all(set(s) == slots for _, s in a.values())
            for pos, (val, state) in a.items():
                if pos in b:
                    assert (val, state) == b[pos]
                else:
                    assert all(v == 0 for v in state.values())
                    if method != "set":
                        assert val == 0
        if stats and "replaced" in stats and sum(stats["replaced"]):
            updates += 1
            assert any(set(a) != set(b) for a, b in zip(after, before))
    assert updates >= 1


@pytest.mark.parametrize("method", METHODS)
def test_exact_resume_through_torch_save(method):
    def build(seed=0):
        net = make_net(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        dyn = skt.DynamicSparsity(net, opt, method, every=3, total_steps=12, seed=7)
        return net, opt, sched, dyn

    def run(objs, steps):
        net, opt, sched, dyn = objs
        for step in steps:
            train_step(net, opt, step)
            sched.step()
            dyn.step()

    whole = build()
    run(whole, range(12))

    first = build()
    run(first, range(6))
    buf = io.BytesIO()
    torch.save({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                "sched": first[2].state_dict(), "dyn": first[3].state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = build(seed=123)  # another initial topology: everything comes from the file
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["opt"])
    resumed[2].load_state_dict(saved["sched"])
    resumed[3].load_state_dict(saved["dyn"])
    run(resumed, range(6, 12))

    ref, got = whole[0].state_dict(), resumed[0].state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    for m_ref, m_got in zip(whole[3].modules, resumed[3].modules):
        for k, v in whole[1].state[m_ref.values].items():
            assert torch.equal(v, resumed[1].state[m_got.values][k]), k


def test_training_with_set_learns_and_keeps_sizes():
    torch.manual_seed(0)
    net = make_net(0, width=48)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    dyn = skt.DynamicSparsity(net, opt, "set", every=10, seed=0)
    sizes = [m.nnz for m in dyn.modules]
    losses, updates = [], 0
    for s in range(80):
        losses.append(train_step(net, opt, s % 4))
        updates += bool(dyn.step())
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    assert [m.nnz for m in dyn.modules] == sizes
    assert updates == 8  # open-ended (no total_steps): every 10 steps, to the last


def test_topkast_ends_with_its_forward_set():
    net = make_net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    sizes = [m.nnz for m in net.modules() if isinstance(m, skt.SparseLinear)]
    dyn = skt.DynamicSparsity(net, opt, "topkast", every=2, total_steps=6, seed=0)
    grown = [m.nnz for m in dyn.modules]
    assert grown[0] == min(2 * sizes[0], 12 * 24) and grown[1] == 2 * sizes[1]
    for s in range(6):
        train_step(net, opt, s)
        dyn.step()
    assert [m.nnz for m in dyn.modules] == sizes
    assert dyn.step() is None  # past total_steps nothing runs


def test_topkast_forward_set_follows_the_parameter_in_copies_and_edits():
    import copy

    net = make_net(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    dyn = skt.DynamicSparsity(net, opt, "topkast", every=5, total_steps=100, seed=0)
    for s in range(3):
        train_step(net, opt, s)
        dyn.step()
    layer = dyn.modules[0]
    assert layer._forward_w is not None and layer._forward_w.nnz < layer.nnz
    x = torch.randn(4, layer.in_features)
    twin = copy.deepcopy(layer)
    y = twin(x).detach()
    with torch.no_grad():
        twin.values.mul_(2.0)
    torch.testing.assert_close(twin(x) - twin.bias, 2 * (y - twin.bias))
    with torch.no_grad():
        layer.values.zero_()
    torch.testing.assert_close(layer(x), layer.bias.expand(4, -1).detach())
    # A's transpose index, computed by a backward, is kept for the next steps
    xr = x.clone().requires_grad_(True)
    layer(xr).sum().backward()
    assert layer._forward_w._transpose is not None


def test_errors_name_the_problem():
    dense = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3))
    stale = torch.optim.SGD(dense.parameters(), lr=0.1)
    skt.sparsify(dense, epsilon=3, seed=0)
    with pytest.raises(ValueError, match="create the optimizer after sparsify"):
        skt.DynamicSparsity(dense, stale)
    with pytest.raises(ValueError, match="no SparseLinear"):
        skt.DynamicSparsity(torch.nn.Linear(3, 3), stale)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps is needed by method 'gse'"):
        skt.DynamicSparsity(net, opt, "gse")
    with pytest.raises(ValueError, match="every must be"):
        skt.DynamicSparsity(net, opt, every=0)
    with pytest.raises(ValueError, match="max_positions"):
        skt.DynamicSparsity(net, opt, "rigl", total_steps=10, max_positions=100)
    dyn = skt.DynamicSparsity(net, opt, "gse", every=1, total_steps=5)
    with pytest.raises(RuntimeError, match="saw no backward pass"):
        dyn.step()
    other = skt.DynamicSparsity(net, opt, "set", every=1, total_steps=5)
    with pytest.raises(ValueError, match="method"):
        other.load_state_dict(dyn.state_dict())


@pytest.mark.parametrize("name", ["rprop", "adagrad"])
def test_new_connections_get_the_optimizers_starting_state_where_it_is_not_zero(name):
    net = make_net(0)
    opt = (torch.optim.Rprop(net.parameters(), lr=0.01) if name == "rprop"
           else torch.optim.Adagrad(net.parameters(), lr=0.01, initial_accumulator_value=0.1))
    key, start = ("step_size", 0.01) if name == "rprop" else ("sum", 0.1)
    dyn = skt.DynamicSparsity(net, opt, "set", every=3, seed=0)
    layer = dyn.modules[0]

    def positions():
        rows = np.repeat(np.arange(layer.out_features), np.diff(layer.crow_indices.numpy()))
        return rows * layer.in_features + layer.col_indices.numpy()

    before = set(positions().tolist())
    for s in range(3):
        train_step(net, opt, s)
        dyn.step()
    new = torch.from_numpy(np.array([p not in before for p in positions().tolist()]))
    assert new.any()
    state = opt.state[layer.values][key]
    torch.testing.assert_close(state[new], torch.full_like(state[new], start))
    assert (state[~new] != 0).all()  # kept connections keep theirs (never 0 for either)
