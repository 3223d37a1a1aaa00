"""sparsekit.torch.sparsify: which layers are replaced, how, and the one rule at a size whose
dense weight could never exist."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
skt = pytest.importorskip("sparsekit.torch")


class Block(torch.nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(d, 2, batch_first=True)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d, d))
        self.head = torch.nn.Linear(d, 5, bias=False)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        q, _, _ = self.qkv(x).chunk(3, dim=-1)
        return self.head(x + self.mlp(x) + q)


def test_replaces_linears_but_skipped_and_attention_internals():
    net = Block()
    out = skt.sparsify(net, epsilon=2, skip="head", seed=0)
    assert out is net
    assert isinstance(net.qkv, skt.SparseLinear) and isinstance(net.mlp[0], skt.SparseLinear)
    assert isinstance(net.mlp[2], skt.SparseLinear)
    assert type(net.head) is torch.nn.Linear  # skipped by name
    assert not isinstance(net.attn.out_proj, skt.SparseLinear)  # read directly by the MHA
    assert net.mlp[0].nnz == round(2 * (16 + 64)) and net.mlp[0].bias is not None
    y = net(torch.randn(3, 7, 16))
    assert y.shape == (3, 7, 5)
    y.sum().backward()
    assert net.mlp[0].values.grad.shape == (net.mlp[0].nnz,)


def test_density_callable_skip_dtype_and_reproducibility():
    def build():
        return torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 10)).double()

    a = skt.sparsify(build(), density=0.25, skip=lambda name, m: m.out_features == 10, seed=3)
    b = skt.sparsify(build(), density=0.25, skip=lambda name, m: m.out_features == 10, seed=3)
    assert isinstance(a[0], skt.SparseLinear) and type(a[1]) is torch.nn.Linear
    assert a[0].nnz == 300 and a[0].values.dtype == torch.float64
    assert torch.equal(a[0].col_indices, b[0].col_indices)
    assert torch.equal(a[0].values, b[0].values)
    bare = skt.sparsify(torch.nn.Linear(8, 4), epsilon=1, seed=0)
    assert isinstance(bare, skt.SparseLinear) and bare.nnz == 12


def test_bad_arguments():
    with pytest.raises(TypeError, match="module must be"):
        skt.sparsify("not a module")
    with pytest.raises(ValueError, match="density"):
        skt.sparsify(torch.nn.Linear(3, 3), density=0)
    with pytest.raises(TypeError, match="skip"):
        skt.sparsify(torch.nn.Linear(3, 3), skip=[1])
    with pytest.raises(ValueError, match="dtype"):
        skt.sparsify(torch.nn.Sequential(torch.nn.Linear(3, 3).half()))


def test_one_rule_on_a_layer_whose_dense_weight_would_take_160_gb():
    """A 200 000 x 200 000 layer declared on the meta device, sparsified, run forward and
    backward and evolved by SET and GSE: peak memory stays O(nnz + batch x width)."""
    code = textwrap.dedent("""
        import resource, torch
        import sparsekit.torch as skt
        torch.set_num_threads(1)

        def run(n):
            net = torch.nn.Sequential(torch.nn.Linear(n, n, device="meta"))
            skt.sparsify(net, epsilon=1, seed=0)
            layer = net[0]
            assert layer.nnz == 2 * n and layer.values.device.type == "cpu", layer
            for method in ("set", "gse"):
                opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
                dyn = skt.DynamicSparsity(net, opt, method, every=1, total_steps=4, seed=0)
                for _ in range(2):
                    opt.zero_grad()
                    net(torch.randn(4, n)).square().mean().backward()
                    opt.step()
                    stats = dyn.step()
                assert sum(stats["replaced"]) > 0, stats

        run(100)  # first use loads code (torch.optim pulls in ~150 MiB of it): not data
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run(200_000)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(peak)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peak_kib = int(res.stdout.split()[-1])
    assert peak_kib < 100 * 1024, f"peak RSS grew by {peak_kib / 1024:.0f} MiB"


def test_a_layer_used_twice_gets_one_replacement_and_frozen_layers_stay_frozen():
    lin = torch.nn.Linear(8, 8)
    frozen = torch.nn.Linear(8, 3).requires_grad_(False)
    net = skt.sparsify(torch.nn.Sequential(lin, torch.nn.ReLU(), lin, frozen), epsilon=1,
                       seed=0)
    assert isinstance(net[0], skt.SparseLinear) and net[0] is net[2]
    assert not net[3].values.requires_grad and not net[3].bias.requires_grad
    # skipping either name of a shared layer keeps every use dense
    lin2 = torch.nn.Linear(8, 8)
    kept = skt.sparsify(torch.nn.Sequential(lin2, torch.nn.ReLU(), lin2), skip="2", seed=0)
    assert kept[0] is lin2 and kept[2] is lin2


def test_a_sparsified_transformer_layer_runs_in_eval_mode():
    layer = skt.sparsify(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
                         epsilon=2, seed=0)
    assert isinstance(layer.linear1, skt.SparseLinear)
    x = torch.randn(2, 3, 16)
    layer.eval()
    with torch.no_grad():  # the conditions of torch's fused inference path
        assert layer(x).shape == (2, 3, 16)
    stack = skt.sparsify(torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2), epsilon=2, seed=0)
    stack.eval()
    pad = torch.zeros(2, 3, dtype=torch.bool)
    pad[0, 2] = True
    with torch.no_grad():  # and the stack's nested-tensor path
        assert stack(x, src_key_padding_mask=pad).shape == (2, 3, 16)
