"""GPU-specific tests: product modes, CPU parity, training end to end, transfers, 4 GiB runs.

The protocol tests of ``test_kernels``, ``test_topology`` and ``test_bad_input`` already run on
the GPU through the parametrized ``backend`` fixtures; this file adds what only the GPU backend
has.  Every test skips without CuPy and a GPU, and fails instead when
``SPARSEKIT_REQUIRE_GPU=1`` (``nox -s tests_gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import test_kernels as tk
from conftest import require_gpu
from reference import host, random_csr, to_backend

import sparsekit
from sparsekit import SparseMLP, load_checkpoint, train
from sparsekit._cython.backend import CpuBackend
from sparsekit.backends import get_backend

pytestmark = pytest.mark.gpu
GIB = 2**30


@pytest.fixture(scope="module")
def gpu():
    require_gpu()
    return get_backend("gpu")


def gpu_with(products: str):
    require_gpu()
    from sparsekit._cuda.backend import GpuBackend

    return GpuBackend(products=products)


def blobs(seed=0, n=640, d=24, c=4, n_test=160):
    """Separable Gaussian blobs, batch-major, as train() takes them."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2.5
    y = rng.integers(0, c, n + n_test)
    x = (centers[y] + rng.standard_normal((n + n_test, d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


# --- the products, in every mode, against the oracle ---------------------------------------------
@pytest.mark.parametrize("products", ["cusparse", "cupy"])
@pytest.mark.parametrize("test", [tk.test_matmul, tk.test_matmul_t, tk.test_weight_grad,
                                  tk.test_sampled_grad], ids=lambda f: f.__name__)
def test_product_modes_match_the_oracle(products, test):
    be = gpu_with(products)
    test(be, np.float32, np.int32)
    test(be, np.float64, np.int64)


@pytest.mark.parametrize("products", ["cusparse", "cupy"])
def test_backward_modes_match_the_oracle(products):
    be = gpu_with(products)
    for need_dx in (True, False):
        tk.test_backward(be, np.float32, np.int32, need_dx)


def test_large_layer_products(gpu):
    """A 20 000 x 30 000 layer, batch 256 (two warp tiles): every row, tile and grid round."""
    rng = np.random.default_rng(0)
    w_sp = random_csr(rng, 20_000, 30_000, 0.001, dtype=np.float32, empty_row_frac=0.1)
    w = to_backend(gpu, w_sp)
    x = rng.uniform(-1, 1, (30_000, 256)).astype(np.float32)
    dy = rng.uniform(-1, 1, (20_000, 256)).astype(np.float32)
    xd, dyd = gpu.asarray(x), gpu.asarray(dy)
    ref.assert_close(host(gpu, gpu.matmul(xd, w)), ref.matmul(w_sp, x),
                     ref.matmul(abs(w_sp), abs(x)), 30_000, np.float32, "matmul")
    dx, g = gpu.backward(xd, dyd, w)
    ref.assert_close(host(gpu, dx), ref.matmul_t(w_sp, dy), ref.matmul_t(abs(w_sp), abs(dy)),
                     20_000, np.float32, "backward dx")
    ref.assert_close(host(gpu, g), ref.weight_grad(w_sp, x, dy),
                     ref.weight_grad(w_sp, abs(x), abs(dy)), 256, np.float32, "backward grad")


# --- parity with the CPU backend ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_masks_and_values_equal_the_cpu(gpu, dtype):
    cpu = CpuBackend()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((300, 129)).astype(dtype)
    bias = rng.standard_normal(300).astype(dtype)
    for slope, rate, seed in [(-0.6, 0.3, 11), (0.6, 0.5, 2**64 - 1), (0.0, 0.0, 3)]:
        got = gpu.bias_act_dropout(gpu.asarray(z), gpu.asarray(bias), slope, rate, seed)
        want = cpu.bias_act_dropout(z, bias, slope, rate, seed)
        for g, e in zip(got, want, strict=True):
            assert host(gpu, g).tobytes() == e.tobytes(), (dtype, slope, rate)


def test_topology_updates_equal_the_cpu(gpu):
    """select, sample_absent and rebuild give the CPU's answer bit for bit."""
    cpu = CpuBackend()
    rng = np.random.default_rng(2)
    w_sp = random_csr(rng, 500, 700, 0.02, dtype=np.float32)
    w_g, w_c = to_backend(gpu, w_sp), to_backend(cpu, w_sp)
    k = w_sp.nnz // 3
    drop = gpu.select(gpu.xp.abs(w_g.data), k, largest=False)
    np.testing.assert_array_equal(host(gpu, drop), cpu.select(np.abs(w_c.data), k, False))
    r_g, c_g = gpu.sample_absent(w_g, k, np.random.default_rng(3))
    r_c, c_c = cpu.sample_absent(w_c, k, np.random.default_rng(3))
    np.testing.assert_array_equal(host(gpu, r_g), r_c)
    np.testing.assert_array_equal(host(gpu, c_g), c_c)
    keep = np.ones(w_sp.nnz, bool)
    keep[host(gpu, drop)] = False
    vals = rng.standard_normal(k).astype(np.float32)
    mom = rng.standard_normal(w_sp.nnz).astype(np.float32)
    new_g, (m_g,) = gpu.rebuild(w_g, gpu.asarray(keep), r_g, c_g, gpu.asarray(vals),
                                gpu.asarray(mom))
    new_c, (m_c,) = cpu.rebuild(w_c, keep, r_c, c_c, vals, mom)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(host(gpu, getattr(new_g, name)), getattr(new_c, name))
    np.testing.assert_array_equal(host(gpu, m_g), m_c)


# --- training end to end ------------------------------------------------------------------------
def test_trains_end_to_end_with_set_pruning_and_evaluation(gpu):
    data = blobs()
    res = train([24, 64, 48, 4], data, backend="gpu", epochs=4, batch_size=32, epsilon=4,
                seed=0, prune_start=2, prune_every=1, prune_percentile=10)
    assert res.model.backend.name == "gpu"
    assert type(res.model.layers[0].w.data).__module__.startswith("cupy")
    hist = res.history
    assert hist[-1]["test_acc"] > 0.9 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["neurons"][1] < 64 and hist[-1]["neurons"][2] < 48  # neurons were pruned
    for layer in res.model.layers:
        layer.w.validate()
    # A CPU run of the same seed starts from the same topology and dropout masks, so its first
    # epoch (before any topology update) has the same loss up to float32 rounding.
    cpu = train([24, 64, 48, 4], data, backend="cpu", epochs=1, batch_size=32, epsilon=4,
                seed=0)
    assert hist[0]["train_loss"] == pytest.approx(cpu.history[0]["train_loss"], rel=1e-3)
    assert hist[0]["connections"] == cpu.history[0]["connections"]


def test_auto_trains_on_the_gpu():
    require_gpu()
    res = train([24, 32, 4], blobs(), backend="auto", epochs=1, batch_size=64, epsilon=4)
    assert res.model.backend.name == "gpu"


@pytest.mark.parametrize("direction", ["gpu->cpu", "cpu->gpu"])
def test_checkpoints_load_on_either_backend(gpu, direction, tmp_path):
    src, dst = direction.split("->")
    x_tr, y_tr, x_te, y_te = blobs(seed=3)
    res = train([24, 40, 4], (x_tr, y_tr, x_te, y_te), backend=src, epochs=2, batch_size=32,
                epsilon=4, seed=1)
    path = tmp_path / "model.npz"
    res.model.save(path)
    loaded = load_checkpoint(path, backend=dst).model
    assert loaded.backend.name == dst
    for a, b in zip(res.model.layers, loaded.layers, strict=True):
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(a.backend.to_numpy(getattr(a.w, name)),
                                          b.backend.to_numpy(getattr(b.w, name)))
        np.testing.assert_array_equal(a.backend.to_numpy(a.state_w["momentum"]), b.backend.to_numpy(b.state_w["momentum"]))
    np.testing.assert_allclose(loaded.logits(x_te), res.model.logits(x_te), rtol=1e-4,
                               atol=1e-5)
    # Training continues on the other backend.
    more = train(loaded, (x_tr, y_tr, x_te, y_te), epochs=1, batch_size=32, seed=2)
    assert np.isfinite(more.history[-1]["train_loss"])


@pytest.mark.parametrize("method", ["static", "set"])
def test_no_per_step_device_to_host_copies(gpu, monkeypatch, method):
    """Copies to the host happen per epoch (topology update, evaluation), never per step: with
    four times as many steps per epoch, the same number of copies (SET's rejection sampler may
    take an extra round on another topology, hence its small allowance)."""
    from sparsekit._cuda.backend import GpuBackend

    counts = []
    real = GpuBackend.to_numpy
    for n in (320, 1280):
        calls = []

        def counting(self, x, calls=calls):
            calls.append(getattr(x, "shape", None))
            return real(self, x)

        monkeypatch.setattr(GpuBackend, "to_numpy", counting)
        x_tr, y_tr, x_te, y_te = blobs(seed=4, n=n)
        train([24, 48, 4], (x_tr, y_tr, x_te, y_te), backend=gpu, method=method, epochs=3,
              batch_size=32, epsilon=4, seed=0)
        counts.append(len(calls))
    steps_added = 3 * (1280 - 320) // 32
    if method == "static":
        assert counts[0] == counts[1], counts
    else:
        assert abs(counts[1] - counts[0]) <= 4 < steps_added, counts


def test_sparse_mlp_api_on_the_gpu(gpu):
    x_tr, y_tr, x_te, y_te = blobs(seed=5)
    model = SparseMLP([24, 32, 4], epsilon=4, backend=gpu, seed=0)
    assert isinstance(model.predict(x_te), np.ndarray)
    proba = model.predict_proba(x_te)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    loss, acc = model.evaluate(x_te, y_te)
    assert np.isfinite(loss) and 0 <= acc <= 1


def test_refuses_host_arrays_in_kernels(gpu):
    w = to_backend(gpu, random_csr(np.random.default_rng(6), 5, 4, 0.5))
    with pytest.raises(TypeError, match="x_ib is a numpy array but the gpu backend"):
        gpu.matmul(np.ones((4, 2)), w)


# --- memory -----------------------------------------------------------------------------------
@pytest.fixture
def pool_limit():
    """Restore the pool limit (and free cached blocks) after a test that sets one."""
    require_gpu()
    from sparsekit._compat import cupy

    pool = cupy.get_default_memory_pool()
    before = pool.get_limit()
    yield pool
    pool.free_all_blocks()
    pool.set_limit(size=before)


def test_gpu_memory_limit_is_applied_and_refusal_is_clear(pool_limit):
    x_tr, y_tr, x_te, y_te = blobs(seed=7)
    train([24, 32, 4], (x_tr, y_tr, x_te, y_te), backend="gpu", epochs=1, batch_size=32,
          epsilon=4, gpu_memory_limit="256MiB")
    assert pool_limit.get_limit() == 256 * 2**20
    with pytest.raises(ValueError, match="does not fit in GPU memory"):
        train([24, 20_000_000, 4], (x_tr, y_tr, x_te, y_te), backend="gpu", epochs=1,
              batch_size=32, gpu_memory_limit="64MiB")


def fashion_shaped(n_train: int, n_test: int, seed: int = 0):
    """Random data of Fashion-MNIST's shape: memory, not accuracy, is under test."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 784), dtype=np.float32)
    y = rng.integers(0, 10, n_train + n_test)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.slow
def test_default_fashion_mnist_config_trains_under_4_gib(pool_limit):
    res = train([784, 1000, 1000, 1000, 10], fashion_shaped(12_800, 2_000), backend="gpu",
                epochs=2, gpu_memory_limit="4GiB", prune_start=1, prune_every=1)
    assert pool_limit.total_bytes() <= 4 * GIB
    assert np.isfinite(res.history[-1]["test_loss"])


@pytest.mark.slow
def test_a_million_hidden_neurons_train_under_4_gib(pool_limit):
    """784 - 1 000 000 - 10 at ε = 20 (30 million connections): two epochs, one SET update."""
    res = train([784, 1_000_000, 10], fashion_shaped(1_280, 256), backend="gpu", epochs=2,
                epsilon=20, gpu_memory_limit="4GiB", eval_batch_size=128)
    assert sum(res.model.n_connections) == 20 * (784 + 1_000_000) + 10 * 1_000_000
    assert pool_limit.total_bytes() <= 4 * GIB
    assert all(np.isfinite(r["train_loss"]) for r in res.history)
    assert res.history[0]["growth_replaced"][0] > 0  # the update after epoch 1


def test_module_level_api_names_the_gpu():
    require_gpu()
    assert "gpu" in sparsekit.available_backends()
