"""Interop with SciPy and PyTorch: layer export/import and the sparsekit.torch.SparseLinear module."""

import numpy as np
import pytest
import scipy.sparse as sp

from sparsekit import SparseMLP
from sparsekit.io.interop import from_scipy, from_torch, set_layer, to_scipy, to_torch
from sparsekit.nn.layers import SparseLayer

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")
from sparsekit.torch._function import _SparseLinearFunction  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_layer(n_out=7, n_in=11, density=0.3, seed=0, dtype=np.float32):
    m = sp.random(n_out, n_in, density=density, format="csr", dtype=dtype, random_state=seed)
    return m, SparseLayer.from_scipy(m, bias=np.arange(n_out, dtype=dtype))


def test_scipy_round_trip_keeps_pattern_values_and_bias():
    m, layer = random_layer()
    assert layer.w.shape == (7, 11) and layer.nnz == m.nnz
    np.testing.assert_array_equal(layer.b, np.arange(7))
    back = to_scipy(layer)
    assert isinstance(back, sp.csr_matrix) and back.dtype == np.float32
    np.testing.assert_array_equal(back.toarray(), m.toarray())
    back.data[:] = 0  # an export is a copy
    assert np.abs(layer.w.data).sum() > 0
    assert (layer.to_scipy() != m).nnz == 0


def test_import_sums_duplicates_sorts_and_keeps_explicit_zeros():
    coo = sp.coo_matrix(([1.0, 2.0, 0.0, 5.0], ([0, 0, 1, 2], [3, 3, 0, 1])), shape=(3, 4))
    layer = from_scipy(coo)
    assert layer.nnz == 3  # (0,3) summed; the explicit zero at (1,0) stays a connection
    np.testing.assert_array_equal(layer.w.indices, [3, 0, 1])
    np.testing.assert_array_equal(layer.w.data, [3.0, 0.0, 5.0])
    assert layer.w.dtype == np.float64  # float64 input keeps its precision


def test_torch_round_trip_and_coo_import():
    m, layer = random_layer(dtype=np.float64)
    t = to_torch(layer)
    assert t.layout == torch.sparse_csr and tuple(t.shape) == (7, 11)
    np.testing.assert_array_equal(t.to_dense().numpy(), m.toarray())
    back = from_torch(t, bias=torch.ones(7, dtype=torch.float64))
    np.testing.assert_array_equal(back.to_scipy().toarray(), m.toarray())
    np.testing.assert_array_equal(back.b, np.ones(7))
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 2], [1, 3]]), torch.tensor([4.0, 5.0]),
                                  (3, 4), check_invariants=True)
    assert SparseLayer.from_torch(coo).to_scipy().toarray()[2, 3] == 5.0


def test_bad_tensors_are_refused_clearly():
    with pytest.raises(ValueError, match="sparse CSR or COO"):
        from_torch(torch.ones(3, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        from_torch(np.ones((3, 4)))
    with pytest.raises(TypeError, match="SparseLayer or a CSR"):
        to_scipy(np.ones((2, 2)))


def test_set_layer_imports_weights_into_a_model():
    model = SparseMLP([11, 7, 3], epsilon=2, dropout=0.0, seed=0)
    m, _ = random_layer()
    set_layer(model, 0, m, bias=np.zeros(7))
    np.testing.assert_array_equal(model.layers[0].to_scipy().toarray(), m.toarray())
    set_layer(model, -1, to_torch(model.layers[-1]))  # torch input works too
    with pytest.raises(ValueError, match="shape"):
        set_layer(model, 1, sp.random(4, 7, density=0.5, format="csr"))
    x = np.random.default_rng(0).standard_normal((5, 11)).astype(np.float32)
    assert model.logits(x).shape == (5, 3)


def dense_weight(module):
    return torch.from_numpy(module.to_scipy().toarray())


@pytest.mark.parametrize("shape", [(6, 13), (4, 3, 13)])
def test_gradients_match_a_dense_torch_reference(shape):
    torch.manual_seed(0)
    layer = skt.SparseLinear(13, 9, epsilon=2.0, seed=0, dtype=torch.float64)
    assert 0 < layer.nnz < 13 * 9
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape[:-1], 9, dtype=torch.float64)
    (layer(x) * g).sum().backward()

    w = dense_weight(layer).requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = x_ref @ w.T + b
    (y_ref * g).sum().backward()

    np.testing.assert_allclose(layer(x).detach(), y_ref.detach(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, b.grad, rtol=1e-12, atol=1e-12)
    rows = np.repeat(np.arange(9), np.diff(layer.crow_indices.numpy()))
    cols = layer.col_indices.numpy()
    np.testing.assert_allclose(layer.values.grad, w.grad[rows, cols], rtol=1e-12, atol=1e-12)


def test_torch_gradcheck():
    layer = skt.SparseLinear(5, 4, epsilon=1.0, seed=1, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    fn = _SparseLinearFunction.apply
    assert torch.autograd.gradcheck(
        lambda x, v, b: fn(x, v, b, layer.pattern(), None, None, layer.backend, None),
        (x, layer.values.detach().clone().requires_grad_(True),
         layer.bias.detach().clone().requires_grad_(True)))


def test_trains_in_sequential_with_sgd_and_keeps_its_pattern():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=gen)
    y = (x[:, :3].sum(dim=1) > 0).long()
    net = torch.nn.Sequential(skt.SparseLinear(20, 64, epsilon=4, seed=0), torch.nn.ReLU(),
                              skt.SparseLinear(64, 2, seed=1))
    pattern = net[0].col_indices.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (net(x).argmax(dim=1) == y).float().mean() > 0.9
    assert torch.equal(net[0].col_indices, pattern)
    assert sum(p.numel() for p in net[0].parameters()) == net[0].nnz + 64


def test_modules_match_a_sparsekit_model_and_state_dict_round_trips():
    model = SparseMLP([10, 16, 3], epsilon=3, activation="relu", dropout=0.0, seed=0)
    net = torch.nn.Sequential(skt.SparseLinear.from_layer(model.layers[0]), torch.nn.ReLU(),
                              skt.SparseLinear.from_layer(model.layers[1]))
    x = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), model.logits(x),
                               rtol=1e-5, atol=1e-5)
    other = torch.nn.Sequential(skt.SparseLinear.from_sparse(to_torch(model.layers[0]),
                                                              bias=model.layers[0].b),
                                torch.nn.ReLU(), skt.SparseLinear.from_layer(model.layers[1]))
    with torch.no_grad():
        other[0].values.zero_()
    other.load_state_dict(net.state_dict())
    assert torch.equal(other(torch.from_numpy(x)), net(torch.from_numpy(x)))
    back = net[0].to_layer()
    np.testing.assert_array_equal(back.to_scipy().toarray(),
                                  model.layers[0].to_scipy().toarray())
    with pytest.raises(ValueError, match="dtype"):
        net(torch.from_numpy(x).double())
    with pytest.raises(ValueError, match="features"):
        net(torch.zeros(2, 9))


def test_state_dict_with_another_pattern_rebuilds_the_kernel_pattern():
    a = skt.SparseLinear(8, 5, epsilon=1.0, seed=0)
    b = skt.SparseLinear(8, 5, epsilon=1.0, seed=1)
    assert a.nnz == b.nnz and not torch.equal(a.col_indices, b.col_indices)
    x = torch.randn(3, 8)
    a(x)  # builds a's cached pattern
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), b(x))
