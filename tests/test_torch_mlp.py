"""sparsekit.torch.SparseMLP: the same function and gradients as its layers in nn.Sequential,
dropout, growth methods, state_dict, devices, bad input and the one rule."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")

from cuda_emu import EmulatedGpuBackend, build, compiler, emulated_kernels  # noqa: E402
from test_torch_linear import backward_on_both, require_cuda  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TORCH_ACTS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


def sequential_twin(net):
    """The network as nn.Sequential ops over the same layers (no dropout)."""
    def run(x):
        a = x
        for i, layer in enumerate(net.layers):
            a = layer(a)
            if i < len(net.layers) - 1:
                act = net.activations[i]
                a = (TORCH_ACTS[act.name](a) if act.name in TORCH_ACTS
                     else torch.where(a > 0, a, act.slope * a))
        return a
    return run


@pytest.mark.parametrize("activation", ["relu", "allrelu", "leaky_relu", "linear", "tanh",
                                        "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_function_and_gradients_are_the_sequential_ones(activation, dtype, bias):
    net = skt.SparseMLP([20, 33, 17, 6], epsilon=4, activation=activation, alpha=0.7,
                        bias=bias, seed=1, dtype=dtype)
    if bias:  # biases start at zero: make them count
        with torch.no_grad():
            for layer in net.layers:
                layer.bias.normal_()
    x = torch.randn(2, 9, 20, dtype=dtype, requires_grad=True)  # leading dims pass through
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = net(x), sequential_twin(net)(x2)
    assert y.shape == (2, 9, 6) and y.is_contiguous()
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(y, y2, **tol)
    g = torch.randn_like(y)
    params = list(net.parameters())
    got = torch.autograd.grad(y, [x, *params], g)
    want = torch.autograd.grad(y2, [x2, *params], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def test_gradcheck_float64():
    net = skt.SparseMLP([5, 7, 4], density=0.5, activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))


def test_dropout_only_in_training_reproducible_under_manual_seed():
    net = skt.SparseMLP([30, 64, 64, 5], epsilon=8, dropout=0.5, seed=0)
    x = torch.randn(16, 30)
    net.eval()
    quiet = net(x)
    torch.testing.assert_close(quiet, sequential_twin(net)(x))
    net.train()
    torch.manual_seed(3)
    a = net(x)
    torch.manual_seed(3)
    b = net(x)
    c = net(x)
    assert torch.equal(a, b) and not torch.equal(a, quiet) and not torch.equal(b, c)
    with torch.no_grad():  # dropout is a training-mode matter, not a gradient one
        torch.manual_seed(3)
        assert torch.equal(net(x), a)
    net.eval()
    with torch.inference_mode():
        assert torch.equal(net(x), quiet)


def test_inverted_dropout_keeps_the_mean():
    net = skt.SparseMLP([1, 4000, 1], density=1.0, activation="linear", dropout=0.3,
                        bias=False, seed=0)
    with torch.no_grad():
        net.layers[0].values.fill_(1.0)
        net.layers[1].values.fill_(1.0 / 4000)
    out = net(torch.ones(64, 1))
    assert abs(out.mean().item() - 1.0) < 0.01 and out.std().item() > 0


@pytest.mark.parametrize("method", ["set", "rigl", "gse", "topkast"])
def test_growth_methods_train_it(method):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 12)) * 2
    labels = rng.integers(0, 4, 256)
    x = torch.from_numpy((centers[labels] + rng.standard_normal((256, 12))).astype(np.float32))
    y = torch.from_numpy(labels)
    net = skt.SparseMLP([12, 48, 48, 4], epsilon=4, activation="allrelu", seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sizes = [layer.nnz for layer in net.layers]  # Top-KAST ends with its forward set
    dyn = skt.DynamicSparsity(net, opt, method, every=5, total_steps=60, seed=0)
    assert list(dyn.modules) == list(net.layers)
    losses = []
    for s in range(60):
        idx = slice(s % 4 * 64, s % 4 * 64 + 64)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        dyn.step()
        losses.append(loss.item())
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert [layer.nnz for layer in net.layers] == sizes


def test_topkast_forward_set_is_the_sequential_one():
    net = skt.SparseMLP([12, 40, 3], epsilon=3, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    skt.DynamicSparsity(net, opt, "topkast", every=2, total_steps=6, seed=0)
    assert net.layers[0]._forward_w is not None  # (the output layer is dense here)
    x = torch.randn(8, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = net(x), sequential_twin(net)(x2)
    torch.testing.assert_close(y, y2)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, *net.parameters()], g),
                    torch.autograd.grad(y2, [x2, *net.parameters()], g)):
        torch.testing.assert_close(a, b)


def test_seeds_fix_the_draw():
    def values(net):
        return [layer.values.detach().clone() for layer in net.layers]

    for seed in (0, np.random.default_rng(0)):
        a = values(skt.SparseMLP([8, 9, 3], seed=seed))
        again = np.random.default_rng(0) if isinstance(seed, np.random.Generator) else seed
        assert all(torch.equal(x, y) for x, y in zip(a, values(skt.SparseMLP([8, 9, 3],
                                                                            seed=again))))
    assert not torch.equal(values(skt.SparseMLP([8, 9, 3], seed=1))[0], a[0])


def test_state_dict_round_trip_dtype_and_repr():
    net = skt.SparseMLP([10, 20, 3], epsilon=3, seed=0)
    other = skt.SparseMLP([10, 20, 3], epsilon=3, seed=1)
    x = torch.randn(4, 10)
    assert not torch.equal(net(x), other(x))
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x), net(x))
    double = net.double()
    assert double(x.double()).dtype == torch.float64
    assert "layer_sizes=[10, 20, 3]" in repr(net) and net.layer_sizes == [10, 20, 3]


@pytest.mark.parametrize("activation", ["allrelu", "relu", "tanh"])
def test_from_and_to_a_sparsekit_model(activation):
    import sparsekit

    model = sparsekit.SparseMLP([12, 30, 20, 4], epsilon=5, activation=activation, alpha=0.7,
                                dropout=0.2, seed=0)
    x = np.random.default_rng(0).standard_normal((9, 12)).astype(np.float32)
    net = skt.SparseMLP.from_model(model).eval()
    assert net.dropout == 0.2 and net.layer_sizes == model.layer_sizes
    torch.testing.assert_close(net(torch.from_numpy(x)), torch.from_numpy(model.logits(x)),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        net.layers[1].values.mul_(2)
    back = net.to_model()
    assert back.activation_name == activation and back.alpha == 0.7 and back.dropout == 0.2
    torch.testing.assert_close(torch.from_numpy(back.logits(x)), net(torch.from_numpy(x)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="sparsekit.SparseMLP"):
        skt.SparseMLP.from_model(net)
    with pytest.raises(ValueError, match="slope 0.01"):
        skt.SparseMLP([4, 5, 2], activation="leaky_relu", negative_slope=0.2).to_model()


def test_bad_input_and_arguments_are_named():
    net = skt.SparseMLP([10, 20, 3], seed=0)
    with pytest.raises(ValueError, match="input has 9 features, expected 10"):
        net(torch.randn(2, 9))
    with pytest.raises(ValueError, match="input dtype torch.float64 differs"):
        net(torch.randn(2, 10, dtype=torch.float64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        net(np.zeros((2, 10), np.float32))
    net.layers[1].double()
    with pytest.raises(ValueError, match="move the whole module with .to()"):
        net(torch.randn(2, 10))
    for kwargs, match in (({"layer_sizes": [10]}, "layer_sizes"),
                          ({"layer_sizes": [10, 0]}, "layer_sizes"),
                          ({"layer_sizes": "10,3"}, "layer_sizes"),
                          ({"layer_sizes": [4, 3], "activation": "gelu"}, "activation"),
                          ({"layer_sizes": [4, 3], "dropout": 1.0}, "dropout")):
        with pytest.raises(ValueError, match=match):
            skt.SparseMLP(**kwargs)
    with torch.no_grad():
        out = skt.SparseMLP([4, 3], seed=0)(torch.randn(2, 4))
    assert not out.requires_grad


def test_a_layer_wider_than_dense_memory_allows(monkeypatch):
    """The one rule: 200 000 x 200 000 (160 GB dense) trains on a few MB."""
    net = skt.SparseMLP([200_000, 200_000, 2], epsilon=1, seed=0)
    assert sum(layer.nnz for layer in net.layers) < 700_000
    x = torch.zeros(4, 200_000)
    x[:, :50] = 1.0
    net(x).square().sum().backward()
    assert net.layers[0].values.grad.shape == net.layers[0].values.shape


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the emulation")
def test_gpu_backend_wrappers_run_it_as_the_cpu(tmp_path):
    """The GPU backend's generic passes and kernels (emulated on the host) give the CPU's
    function and gradients."""
    kernels = build(tmp_path)
    x = torch.randn(16, 30, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    with emulated_kernels(kernels):
        emu = skt.SparseMLP([30, 20, 20, 4], epsilon=3, activation="allrelu", seed=0,
                            backend=EmulatedGpuBackend())
        cpu = skt.SparseMLP([30, 20, 20, 4], epsilon=3, activation="allrelu", seed=0)
        assert emu.layers[0].backend.name != cpu.layers[0].backend.name
        y, y2 = emu(x), cpu(x2)
        torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, [x, *emu.parameters()], g),
                        torch.autograd.grad(y2, [x2, *cpu.parameters()], g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_matches_the_cpu():
    require_cuda()
    cpu = skt.SparseMLP([30, 40, 40, 5], epsilon=4, activation="allrelu", seed=0,
                        dtype=torch.float64)
    gpu = skt.SparseMLP([30, 40, 40, 5], epsilon=4, activation="allrelu", seed=0,
                        dtype=torch.float64, device="cuda")
    backward_on_both(cpu, gpu, 16, 30, 5)
    for a, b in zip(gpu.parameters(), cpu.parameters()):
        assert a.is_cuda
        torch.testing.assert_close(a.grad.cpu(), b.grad)
