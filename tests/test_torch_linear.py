"""sparsekit.torch.SparseLinear: gradients, the Top-KAST forward set, state_dict, devices, dtypes,
bad input, and the GPU backend's wrappers (emulated here; on a real GPU under the gpu mark)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")

from conftest import gpu_required, require_gpu  # noqa: E402
from cuda_emu import EmulatedGpuBackend, build, compiler, emulated_kernels  # noqa: E402

from sparsekit.torch._function import _SparseLinearFunction  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense(module):
    return torch.from_numpy(module.to_scipy().toarray())


def entry_rows(module):
    return np.repeat(np.arange(module.out_features), np.diff(module.crow_indices.cpu().numpy()))


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(bias):
    layer = skt.SparseLinear(6, 5, density=0.4, bias=bias, seed=3, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    v = layer.values.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True) if bias else None
    fn = _SparseLinearFunction.apply

    def f(x, v, *b):
        return fn(x, v, b[0] if b else None, layer.pattern(), None, None, layer.backend, None)

    assert torch.autograd.gradcheck(f, (x, v) + ((b,) if bias else ()))


def test_forward_set_uses_a_subpattern_and_grads_cover_every_entry():
    """Top-KAST's forward set A: outputs and input gradients from A, weight gradient over W."""
    from sparsekit.growth.topkast import sub_pattern

    layer = skt.SparseLinear(9, 7, density=0.5, seed=0, dtype=torch.float64)
    w = layer.pattern()
    slots = np.sort(np.random.default_rng(0).choice(w.nnz, w.nnz // 2, replace=False))
    a = sub_pattern(layer.backend, w, slots)
    layer._forward_w, layer._forward_slots = a, slots
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    a_dense = torch.from_numpy(a.to_scipy().toarray())
    xr = x.detach().clone().requires_grad_(True)
    (((xr @ a_dense.T) + layer.bias.detach()) * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)
    full_grad = g.T @ x.detach()  # dL/dW at every position; compared at W's entries only
    torch.testing.assert_close(layer.values.grad,
                               full_grad[entry_rows(layer), layer.col_indices.long()])
    # A's values are W's own: editing the parameter (or a copy's) changes the output
    with torch.no_grad():
        layer.values.mul_(0.5)
    torch.testing.assert_close(layer(x).detach(), 0.5 * (x.detach() @ a_dense.T)
                               + layer.bias.detach(), rtol=1e-12, atol=1e-12)


def test_density_constructor_counts_and_masked_dense_reference():
    layer = skt.SparseLinear(40, 30, density=0.1, seed=1, dtype=torch.float64)
    assert layer.nnz == 120 and layer.epsilon is None
    x = torch.randn(2, 3, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ dense(layer).T + layer.bias.detach())
    with pytest.raises(ValueError, match="density"):
        skt.SparseLinear(4, 4, density=1.5)


def test_state_dict_loads_another_size_and_keeps_the_parameter():
    small = skt.SparseLinear(12, 8, epsilon=1.0, seed=0)
    big = skt.SparseLinear(12, 8, epsilon=3.0, seed=1)
    assert small.nnz != big.nnz
    param = small.values
    x = torch.randn(3, 12)
    small(x)
    small.load_state_dict(big.state_dict())
    assert small.values is param and small.nnz == big.nnz
    torch.testing.assert_close(small(x), big(x), rtol=0, atol=0)


@pytest.mark.parametrize("n_in,n_out", [(8, 8), (12, 4), (12, 9), (16, 8)])
def test_state_dict_of_another_shape_is_refused_and_nothing_changes(n_in, n_out):
    src = skt.SparseLinear(12, 8, epsilon=3.0, seed=0)
    dst = skt.SparseLinear(n_in, n_out, epsilon=3.0, seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RuntimeError, match="size mismatch|not one of a"):
        dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k
    dst(torch.randn(2, n_in))  # still a working layer


def test_a_narrower_layers_state_is_refused_after_a_round_trip_through_torch_save():
    # its pattern is a valid pattern of the wider layer: only the recorded shape tells them apart
    import io

    buffer = io.BytesIO()
    torch.save(skt.SparseLinear(12, 8, epsilon=3.0, seed=0).state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    wide = skt.SparseLinear(16, 8, epsilon=3.0, seed=1)
    with pytest.raises(RuntimeError, match="8 x 12, this layer is 8 x 16"):
        wide.load_state_dict(state)
    model = torch.nn.Sequential(skt.SparseLinear(12, 8, epsilon=3.0, seed=0))
    twin = torch.nn.Sequential(skt.SparseLinear(12, 8, epsilon=3.0, seed=2))
    twin.load_state_dict(model.state_dict())  # same shape under a prefix: loads
    torch.testing.assert_close(twin[0].values, model[0].values)


def test_values_without_their_pattern_are_refused():
    a = skt.SparseLinear(12, 8, epsilon=1.0, seed=0)
    b = skt.SparseLinear(12, 8, epsilon=3.0, seed=1)
    with pytest.raises(RuntimeError, match="load the pattern and the values together"):
        a.load_state_dict({"values": b.values.detach()}, strict=False)
    a(torch.randn(2, 12))


def test_a_second_backward_is_refused_not_silently_wrong():
    layer = skt.SparseLinear(6, 4, epsilon=2.0, seed=1, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (gx ** 2).sum().backward()


def test_to_moves_values_and_converts_dtype():
    layer = skt.SparseLinear(10, 6, epsilon=2.0, seed=0)
    x = torch.randn(4, 10)
    y32 = layer(x)
    layer.double()
    assert layer.values.dtype == torch.float64 and layer.col_indices.dtype == torch.int32
    torch.testing.assert_close(layer(x.double()).float(), y32, rtol=1e-6, atol=1e-6)
    layer.to("cpu")
    assert layer.backend.name == "cpu"


def test_bad_input_is_named():
    layer = skt.SparseLinear(10, 6, epsilon=2.0, seed=0)
    with pytest.raises(ValueError, match="input is on meta but the layer's weights are on cpu"):
        layer(torch.empty(2, 10, device="meta"))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.zeros(2, 10, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype must be"):
        skt.SparseLinear(3, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="backend must run on host arrays"):
        skt.SparseLinear(3, 3, backend=type("B", (EmulatedGpuBackend,), {"xp": object()})())


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the CUDA emulation")
def test_gpu_backend_wrappers_through_torch_match_the_cpu(tmp_path):
    """The GPU backend's Python wrappers and kernels (emulated on the host) drive the autograd
    function as the CPU backend does, and carry a GSE update with its optimizer state."""
    kernels = build(tmp_path)
    x, y = torch.randn(16, 30), torch.randint(0, 4, (16,))

    def net(backend):
        return torch.nn.Sequential(skt.SparseLinear(30, 20, epsilon=3, seed=0, backend=backend),
                                   torch.nn.ReLU(),
                                   skt.SparseLinear(20, 4, epsilon=3, seed=1, backend=backend))

    def train(net, steps, dyn=None):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        dyn = dyn and skt.DynamicSparsity(net, opt, dyn, every=2, total_steps=8, seed=0)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            if dyn:
                dyn.step()
        return opt

    with emulated_kernels(kernels):
        emu = EmulatedGpuBackend()
        net_emu, net_cpu = net(emu), net("cpu")
        train(net_emu, 4)
        train(net_cpu, 4)
        for a, b in zip(net_emu.state_dict().values(), net_cpu.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        evolved = net(emu)
        before = {m: (m.nnz, set(zip(entry_rows(m), m.col_indices.tolist())))
                  for m in (evolved[0], evolved[2])}
        opt = train(evolved, 2, dyn="gse")  # one update, after the second step
    for m, (nnz, pos) in before.items():
        assert m.nnz == nnz
        buf = opt.state[m.values]["momentum_buffer"]
        new = [k for k, p in enumerate(zip(entry_rows(m), m.col_indices.tolist())) if p not in pos]
        assert (m is evolved[2]) or new  # the hidden layer did change
        assert torch.all(buf[new] == 0) and torch.all(m.values.detach()[new] == 0)


def require_cuda():
    require_gpu()
    if not torch.cuda.is_available():
        if gpu_required():
            pytest.fail("SPARSEKIT_REQUIRE_GPU=1 but torch sees no CUDA device", pytrace=False)
        pytest.skip("torch sees no CUDA device")


def backward_on_both(cpu, gpu, n_batch: int, n_in: int, n_out: int):
    """One float64 backward through ``cpu`` and its CUDA twin ``gpu`` from the same input and
    upstream gradient; checks the input gradients agree and returns the CPU input."""
    x = torch.randn(n_batch, n_in, dtype=torch.float64, requires_grad=True)
    xg = x.detach().cuda().requires_grad_(True)
    g = torch.randn(n_batch, n_out, dtype=torch.float64)
    (cpu(x) * g).sum().backward()
    (gpu(xg) * g.cuda()).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad)
    return x


@pytest.mark.gpu
def test_cuda_tensors_match_the_cpu_and_stay_on_the_device():
    require_cuda()
    cpu = skt.SparseLinear(64, 48, epsilon=5, seed=0, dtype=torch.float64)
    gpu = skt.SparseLinear(64, 48, epsilon=5, seed=0, dtype=torch.float64, device="cuda")
    assert gpu.values.is_cuda and gpu.col_indices.is_cuda and gpu.backend.name == "gpu"
    x = backward_on_both(cpu, gpu, 32, 64, 48)
    torch.testing.assert_close(gpu.values.grad.cpu(), cpu.values.grad)
    with pytest.raises(ValueError, match="input is on cpu"):
        gpu(x.detach())
    back = gpu.to("cpu")
    torch.testing.assert_close(back(x.detach()), cpu(x.detach()))


@pytest.mark.gpu
def test_cuda_gradcheck_and_dynamic_sparsity_on_the_device():
    require_cuda()
    layer = skt.SparseLinear(6, 5, density=0.4, seed=3, dtype=torch.float64, device="cuda")
    x = torch.randn(4, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    v = layer.values.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, v: _SparseLinearFunction.apply(x, v, None, layer.pattern(), None,
                                                 None, layer.backend, None), (x, v))
    net = torch.nn.Sequential(skt.SparseLinear(30, 40, epsilon=4, seed=0), torch.nn.ReLU(),
                              skt.SparseLinear(40, 3, epsilon=4, seed=1)).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for method in ("set", "gse", "topkast"):
        dyn = skt.DynamicSparsity(net, opt, method, every=3, total_steps=12, seed=0)
        for _ in range(12):
            opt.zero_grad()
            net(torch.randn(8, 30, device="cuda")).square().mean().backward()
            opt.step()
            dyn.step()
        for m in dyn.modules:
            assert m.values.is_cuda and m.col_indices.is_cuda
            for k in ("exp_avg", "exp_avg_sq"):
                assert opt.state[m.values][k].shape == m.values.shape


def test_the_output_is_an_ordinary_tensor_for_in_place_ops_and_view():
    net = torch.nn.Sequential(skt.SparseLinear(30, 20, epsilon=3, seed=0),
                              torch.nn.ReLU(inplace=True), torch.nn.Linear(20, 2))
    x = torch.randn(5, 30)
    y = net[0](x)
    assert y.is_contiguous() and y.view(-1).shape == (100,)
    net(x).sum().backward()  # in-place ReLU after the layer, under autograd
    assert net[0].values.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_input_gradient_is_batch_major_and_contiguous(dtype):
    """The gradient a layer hands to the layer below is an ordinary (batch, features) tensor:
    a transposed view sent every elementwise backward below it (ReLU's) down torch's strided
    path, about 20x slower at 128 x 1000.  Its values are the dense layer's."""
    torch.manual_seed(0)
    lower = skt.SparseLinear(30, 48, epsilon=6, seed=0, dtype=dtype)
    upper = skt.SparseLinear(48, 20, epsilon=6, seed=1, dtype=dtype)
    x = torch.randn(16, 30, dtype=dtype)
    h = torch.relu(lower(x))
    seen = []
    h.register_hook(lambda g: seen.append(g))
    g_out = torch.randn(16, 20, dtype=dtype)
    upper(h).backward(g_out)
    (g_h,) = seen
    assert g_h.shape == (16, 48) and g_h.is_contiguous()
    w = torch.from_numpy(upper.to_scipy().toarray())
    torch.testing.assert_close(g_h, g_out @ w)


def test_inference_mode_loading_and_building_leave_a_working_layer():
    x = torch.randn(5, 30)
    src = skt.SparseLinear(30, 20, epsilon=6, seed=0)
    layer = skt.SparseLinear(30, 20, epsilon=3, seed=1)  # another number of connections
    with torch.inference_mode():
        layer.load_state_dict(src.state_dict())
        built = skt.SparseLinear(30, 20, epsilon=3, seed=0)
        built(x)
    torch.testing.assert_close(layer(x), src(x))
    layer(x).sum().backward()  # and it still trains


def test_loading_another_number_of_connections_drops_the_old_gradient():
    x = torch.randn(5, 30)
    layer = skt.SparseLinear(30, 20, epsilon=3, seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    opt.step()
    layer.load_state_dict(skt.SparseLinear(30, 20, epsilon=6, seed=0).state_dict())
    assert layer.values.grad is None
    layer(x).sum().backward()
    assert layer.values.grad.shape == layer.values.shape


def test_values_or_pattern_alone_are_refused_even_when_not_strict():
    a = skt.SparseLinear(30, 20, epsilon=3, seed=0)
    b = skt.SparseLinear(30, 20, epsilon=3, seed=1)  # same nnz, another pattern
    assert a.nnz == b.nnz
    before = b.values.detach().clone()
    with pytest.raises(RuntimeError, match="load the pattern and the values together"):
        b.load_state_dict(dict(a.named_parameters()), strict=False)
    assert torch.equal(b.values, before)
    b.load_state_dict({"bias": a.bias.detach()}, strict=False)  # the bias alone is fine


def test_unsupported_inputs_and_dtypes_are_named():
    layer = skt.SparseLinear(4, 3, epsilon=1, seed=0)
    with pytest.raises(ValueError, match="got a scalar"):
        layer(torch.tensor(1.0))
    half = skt.SparseLinear(4, 3, epsilon=1, seed=0).bfloat16()
    with pytest.raises(ValueError, match="float32 or float64, but its values are torch.bfloat16"):
        half(torch.randn(2, 4, dtype=torch.bfloat16))


def test_importing_the_torch_layers_does_not_load_dynamo():
    import subprocess
    import sys

    code = "import sys, sparsekit.torch; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"  # torch.compiler.disable is applied once torch.compile is in use


def test_torch_compile_runs_the_layer_eagerly_and_compiles_the_rest():
    net = torch.nn.Sequential(skt.SparseLinear(30, 20, epsilon=3, seed=0), torch.nn.ReLU(),
                              torch.nn.Linear(20, 2))
    x = torch.randn(5, 30)
    compiled = torch.compile(net, backend="aot_eager")
    torch.testing.assert_close(compiled(x), net(x))
    compiled(x).sum().backward()
    assert net[0].values.grad is not None
