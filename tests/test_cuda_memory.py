"""The GPU memory estimate and limit parsing, checked on the CPU.

The estimate's persistent part is compared with the bytes of a real model's arrays, the refusal
path of ``train`` runs on the emulated GPU backend with the device's capacity stubbed, and the
4 GiB configurations of the GPU issue are shown to fit by the estimate (the real runs are in
``test_gpu.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emu import EmulatedGpuBackend

import sparsekit
from sparsekit._cuda.backend import GpuBackend
from sparsekit.nn.model import SparseMLP
from sparsekit.training import memory
from sparsekit.training.memory_estimate import estimate_memory
from sparsekit.training.optim import MomentumSGD

GIB = 2**30


def gpu_estimate(model_or_sizes, **kwargs):
    return estimate_memory(model_or_sizes, device="gpu", **kwargs)


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 * GIB), ("4 GiB", 4 * GIB), ("4G", 4 * GIB), ("4gb", 4 * 10**9),
    ("512MiB", 512 * 2**20), ("1.5GiB", int(1.5 * GIB)), ("1000", 1000), (123456, 123456),
    ("80%", 0.8), ("100%", 1.0),
])
def test_parse_bytes(text, expected):
    assert memory.parse_bytes(text, "gpu_memory_limit") == expected


@pytest.mark.parametrize("bad", ["4 apples", "GiB", "-1GiB", "0", 0, -5, "150%", "0%", True,
                                 "4iB", ""])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ValueError, match="gpu_memory_limit"):
        memory.parse_bytes(bad, "gpu_memory_limit")


def test_persistent_estimate_matches_a_built_model():
    """Per layer: CSR arrays, momentum, bias and its momentum, and (but for the first layer)
    the transposed index, exactly as many bytes as the arrays of a real model."""
    model = SparseMLP([50, 40, 30, 5], epsilon=3, backend="cpu", seed=0)
    MomentumSGD().attach(model)  # the default optimizer's state, as train() attaches it
    be = model.backend
    actual = 0
    for k, layer in enumerate(model.layers):
        parts = [layer.w.indptr, layer.w.indices, layer.w.data, layer.b,
                 *layer.state_w.values(), *layer.state_b.values()]
        if k:
            parts += list(be.transpose_index(layer.w))
        actual += sum(p.nbytes for p in parts)
    est = gpu_estimate(model, batch_size=16, eval_batch_size=32)
    assert est.persistent == actual
    assert est.connections == sum(model.n_connections)
    from_sizes = gpu_estimate([50, 40, 30, 5], epsilon=3, batch_size=16, eval_batch_size=32)
    assert from_sizes == est  # ER counts from the sizes equal the built model's


def test_estimate_grows_with_batch_and_width():
    small = gpu_estimate([784, 1000, 10], batch_size=64)
    assert gpu_estimate([784, 1000, 10], batch_size=128).step > small.step
    assert gpu_estimate([784, 2000, 10], batch_size=64).peak > small.peak
    assert gpu_estimate([784, 1000, 10], batch_size=64,
                        eval_batch_size=8192).evaluate > small.evaluate
    f64 = gpu_estimate([784, 1000, 10], batch_size=64, dtype="float64")
    assert f64.persistent > small.persistent


def test_the_issue_configurations_fit_in_4_gib():
    """The default Fashion-MNIST network and 1 000 000 hidden neurons at ε = 20, with the
    evaluation chunk the 4 GiB runs use, are estimated to fit with headroom."""
    default = gpu_estimate([784, 1000, 1000, 1000, 10])
    assert default.peak * memory.GPU_HEADROOM < 0.1 * 4 * GIB
    million = gpu_estimate([784, 1_000_000, 10], eval_batch_size=128)
    assert million.connections == 20 * (784 + 1_000_000) + 10 * 1_000_000
    assert million.peak * memory.GPU_HEADROOM < 4 * GIB
    # ... and the default evaluation chunk of 4096 would not: the refusal names the remedy.
    assert gpu_estimate([784, 1_000_000, 10]).peak > 4 * GIB


@pytest.fixture
def capacity(monkeypatch):
    """Pretend the device offers ``capacity.bytes`` under a pool limit (no CuPy needed)."""
    class Capacity:
        bytes = 4 * GIB

    monkeypatch.setattr(memory, "gpu_available_memory",
                        lambda: (Capacity.bytes, "gpu_memory_limit"))
    return Capacity


def test_train_refuses_a_model_that_cannot_fit_before_allocating(capacity, monkeypatch):
    built = []
    init = SparseMLP.__init__
    monkeypatch.setattr(SparseMLP, "__init__",
                        lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((256, 784)).astype(np.float32), rng.integers(0, 10, 256))
    with pytest.raises(ValueError, match=r"does not fit in GPU memory.*eval_batch_size"):
        sparsekit.train([784, 1_000_000, 10], data, backend=EmulatedGpuBackend(), epochs=1)
    assert built == []  # refused before the model was built
    capacity.bytes = 1024**2
    with pytest.raises(ValueError, match="gpu_memory_limit is 1.0 MiB"):
        sparsekit.train([784, 1000, 10], data, backend=EmulatedGpuBackend(), epochs=1)


def test_cpu_runs_ignore_the_gpu_limit(capacity):
    capacity.bytes = 1
    assert memory.check_gpu_memory([784, 1000, 10], "cpu", "4GiB") is None


def test_gpu_backend_module_imports_without_cupy():
    from sparsekit import _compat

    if _compat.has_cupy_gpu:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="gpu backend is unavailable"):
        GpuBackend()
    with pytest.raises(RuntimeError, match="needs a usable GPU"):
        memory.gpu_memory_limit("4GiB")
