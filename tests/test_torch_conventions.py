"""PyTorch conventions at the edges of sparsekit.torch: frozen layers and L-BFGS under
DynamicSparsity, what sparsify must not replace (tied weights, nn.Linear subclasses, hooks,
lazy layers), autocast, reset_parameters after to_empty, and clear refusals for torch.func and
TorchScript."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")
nn = torch.nn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


X = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))


def two_layers():
    return nn.Sequential(skt.SparseLinear(10, 20, epsilon=3, seed=0), nn.ReLU(),
                         skt.SparseLinear(20, 3, epsilon=3, seed=1))


def three_layers():
    return nn.Sequential(skt.SparseLinear(10, 20, epsilon=3, seed=0), nn.ReLU(),
                         skt.SparseLinear(20, 20, epsilon=3, seed=1), nn.ReLU(),
                         skt.SparseLinear(20, 3, epsilon=3, seed=2))


def train(net, opt, dyn, steps):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), Y).backward()
        opt.step()
        dyn.step()


@pytest.mark.parametrize("method", ["set", "gse", "topkast"])
@pytest.mark.parametrize("all_params", [False, True])
def test_a_frozen_layer_keeps_its_weights_and_topology(method, all_params):
    net = three_layers()
    net[0].requires_grad_(False)
    params = net.parameters() if all_params else [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    dyn = skt.DynamicSparsity(net, opt, method, every=2, total_steps=10, seed=0)
    frozen = (net[0].col_indices.clone(), net[0].values.detach().clone())
    trained = net[2].col_indices.clone()
    train(net, opt, dyn, 6)
    assert torch.equal(net[0].col_indices, frozen[0])
    assert torch.equal(net[0].values.detach(), frozen[1])
    assert not torch.equal(net[2].col_indices, trained)  # the trainable layer did evolve


def test_layers_indices_count_every_sparse_layer_and_refuse_a_frozen_one():
    net = two_layers()
    net[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    dyn = skt.DynamicSparsity(net, opt, "gse", every=2, total_steps=10, seed=0, layers=[1])
    train(net, opt, dyn, 3)
    with pytest.raises(ValueError, match="layers names sparse layer 0, which is frozen"):
        skt.DynamicSparsity(net, opt, "gse", every=2, total_steps=10, layers=[0])


def test_all_frozen_and_unowned_layers_are_clear_errors():
    net = two_layers()
    opt = torch.optim.SGD([net[2].values], lr=0.1)
    with pytest.raises(ValueError, match="trainable sparse layer 0.*requires_grad_"):
        skt.DynamicSparsity(net, opt, "set", every=2)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="every SparseLinear layer of module is frozen"):
        skt.DynamicSparsity(net, opt, "set", every=2)


def test_lbfgs_history_restarts_at_each_topology_change():
    net = two_layers()
    opt = torch.optim.LBFGS(net.parameters(), lr=0.5)
    dyn = skt.DynamicSparsity(net, opt, "set", every=3, total_steps=12, seed=0)
    for _ in range(12):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X), Y)
            loss.backward()
            return loss
        opt.step(closure)
        if dyn.step():
            assert not opt.state  # the flat history described the old connections
    loss = nn.functional.cross_entropy(net(X), Y).item()
    assert np.isfinite(loss) and loss < 1.0


@pytest.mark.parametrize("kwargs, error, message", [
    ({"every": "2"}, TypeError, "every must be a whole number >= 1, got '2'"),
    ({"every": True}, TypeError, "every must be a whole number"),
    ({"every": 2.5}, ValueError, "every must be a whole number >= 1, got 2.5"),
    ({"every": 2, "total_steps": True}, TypeError, "total_steps must be a whole number"),
])
def test_counts_are_checked_with_their_type(kwargs, error, message):
    net = two_layers()
    with pytest.raises(error, match=message):
        skt.DynamicSparsity(net, torch.optim.SGD(net.parameters(), lr=0.1), "set", **kwargs)


def test_load_state_dict_names_what_is_missing():
    net = two_layers()
    dyn = skt.DynamicSparsity(net, torch.optim.SGD(net.parameters(), lr=0.1), "set", every=2)
    state = dyn.state_dict()
    del state["rng"]
    with pytest.raises(ValueError, match="state lacks rng"):
        dyn.load_state_dict(state)
    with pytest.raises(TypeError, match="state must be a dict"):
        dyn.load_state_dict([1, 2])


# --- sparsify -------------------------------------------------------------------------------
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 100, bias=False)
        self.head.weight = self.emb.weight  # an LM head tied to the embedding


class Scaled(nn.Linear):
    def forward(self, x):
        return 100 * super().forward(x)


class WithLoRA(nn.Linear):
    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.lora_a = nn.Parameter(torch.zeros(2, n_in))


def test_sparsify_keeps_tied_weights_dense_with_a_warning():
    m = Tied()
    with pytest.warns(UserWarning, match=r"head \(its weight is tied"):
        skt.sparsify(m, epsilon=2, seed=0)
    assert isinstance(m.body, skt.SparseLinear) and type(m.head) is nn.Linear
    assert m.head.weight is m.emb.weight
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    pair = nn.Sequential(a, b)
    with pytest.warns(UserWarning, match="kept 2 nn.Linear"):
        skt.sparsify(pair, epsilon=2, seed=0)
    assert pair[0].weight is pair[1].weight


def test_sparsify_keeps_subclasses_hooks_and_lazy_layers_and_their_behaviour():
    called = []
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda *a: called.append(1))
    net = nn.Sequential(Scaled(6, 4), nn.ReLU(), WithLoRA(4, 4), nn.ReLU(), hooked,
                        nn.LazyLinear(3))
    with pytest.warns(UserWarning) as record:
        skt.sparsify(net, epsilon=2, seed=0)
    text = str(record[0].message)
    assert "kept 4 nn.Linear" in text and "Scaled subclasses nn.Linear" in text
    assert "it has hooks" in text and "lazy layer" in text
    assert [type(m).__name__ for m in net[::2]] == ["Scaled", "WithLoRA", "Linear"]
    net(torch.randn(2, 6))
    assert called == [1]
    # a plain subclass that adds nothing is replaced, and a layer in eval mode stays in it
    plain = type("Plain", (nn.Linear,), {})(6, 4)
    net = nn.Sequential(plain).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skt.sparsify(net, epsilon=2, seed=0)
    assert isinstance(net[0], skt.SparseLinear) and not net[0].training


@pytest.mark.parametrize("kwargs, message", [
    ({"skip": 3}, "skip must be a callable"),
    ({"epsilon": "5"}, "epsilon must be a number, got '5'"),
    ({"density": "0.1"}, "density must be a number"),
])
def test_sparsify_argument_types(kwargs, message):
    with pytest.raises(TypeError, match=message):
        skt.sparsify(nn.Sequential(nn.Linear(4, 4)), **kwargs)


# --- SparseLinear -----------------------------------------------------------------------------
def test_autocast_runs_the_layer_at_its_own_precision():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), skt.SparseLinear(8, 4, density=0.5, seed=0))
    x = torch.randn(2, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.float32 and y.shape == (2, 4)
    y.sum().backward()
    assert net[2].values.grad is not None
    with pytest.raises(ValueError, match="input dtype torch.bfloat16 differs"):
        net[2](torch.randn(2, 8).bfloat16())  # outside autocast: still refused


def test_reset_parameters_restores_a_layer_after_to_empty():
    layer = skt.SparseLinear(6, 4, density=0.5, seed=0)
    first = (layer.col_indices.clone(), layer.values.detach().clone())
    values = layer.values
    layer.to_empty(device="cpu")
    layer.crow_indices.fill_(7)  # what uninitialised memory may hold
    with pytest.raises(ValueError, match="after module.to_empty.*reset_parameters"):
        layer(torch.randn(2, 6))
    layer.reset_parameters()
    assert layer.values is values  # an optimizer keeps tracking the same parameter
    assert torch.equal(layer.col_indices, first[0]) and torch.equal(layer.values.detach(), first[1])
    assert torch.count_nonzero(layer.bias) == 0
    # the meta-device flow: declare, sparsify, materialise, initialise
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    skt.sparsify(net, epsilon=2, seed=0)
    net.to_empty(device="cpu")
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert torch.isfinite(net(torch.randn(2, 6))).all()
    # a layer made from a sparse matrix draws as many connections
    from_sparse = skt.SparseLinear.from_sparse(layer.to_scipy())
    from_sparse.reset_parameters()
    assert from_sparse.nnz == layer.nnz


def test_torch_func_and_torchscript_are_refused_in_one_line():
    layer = skt.SparseLinear(6, 4, density=0.5, seed=0)
    x = torch.randn(3, 6)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).sum())(params)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.vmap(layer)(torch.randn(2, 3, 6))
    with pytest.raises(TypeError, match="torch.jit.script"):
        torch.jit.script(nn.Sequential(layer))
    assert torch.jit.trace(layer, x)(x).shape == (3, 4)


def test_feature_counts_must_be_ints():
    with pytest.raises(TypeError, match="in_features must be an int, got 5.5"):
        skt.SparseLinear(5.5, 4)
    assert skt.SparseLinear(np.int64(5), 4, seed=0).in_features == 5


def test_read_only_patterns_reach_torch_through_old_dlpack(monkeypatch):
    """torch < 2.9 asks for DLPack < 1.0, which cannot export a read-only NumPy array: a
    topology update handed the CSR's (read-only) index arrays to torch that way."""
    from sparsekit.torch import _bridge

    monkeypatch.setattr(_bridge.torch, "from_dlpack",
                        lambda a: torch.utils.dlpack.from_dlpack(a.__dlpack__()))
    net = three_layers()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    dyn = skt.DynamicSparsity(net, opt, "topkast", every=2, total_steps=10, seed=0)
    train(net, opt, dyn, 4)


def test_a_frozen_output_layer_leaves_every_trainable_layer_evolving():
    net = three_layers()
    net[4].requires_grad_(False)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    dyn = skt.DynamicSparsity(net, opt, "set", every=2, seed=0, evolve_output=False)
    before = [net[i].col_indices.clone() for i in (0, 2)]
    train(net, opt, dyn, 2)
    assert all(not torch.equal(net[i].col_indices, b) for i, b in zip((0, 2), before))


def test_reset_parameters_of_an_unseeded_layer_draws_afresh():
    layer = skt.SparseLinear(30, 20, epsilon=2)
    layer.reset_parameters()
    first = layer.values.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(layer.values.detach(), first)
