"""The one rule: nothing of size n_in x n_out is ever allocated.

A 200 000 x 200 000 layer at ε = 20 has 8 million connections; dense, it would take
n_in * n_out * 4 bytes = 160 GB.  ER init, a forward and backward pass, and one SET step
(prune 30 % of the smallest |w| with ``select``, regrow with ``sample_absent``, ``rebuild`` with
a momentum array) must stay in O(nnz) memory, measured with tracemalloc (NumPy reports its
allocations to it, including those made from the Cython kernels).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from sparsekit.backends import get_backend
from sparsekit.nn.init import er_connections, erdos_renyi

MAX_BYTES_PER_CONNECTION = 150
MAX_PEAK_BYTES = 2 * 1024**3


def set_step(be, w, momentum, rng, zeta: float = 0.3):
    k = int(zeta * w.nnz)
    drop = be.select(be.xp.abs(w.data), k, largest=False)
    keep = be.xp.ones(w.nnz, dtype=bool)
    keep[drop] = False
    rows, cols = be.sample_absent(w, k, rng)
    vals = be.asarray(rng.uniform(-0.01, 0.01, k).astype(w.dtype))
    return be.rebuild(w, keep, rows, cols, vals, momentum)


@pytest.mark.parametrize("n", [50_000, 200_000])
def test_layer_memory_is_o_nnz(n):
    be = get_backend("cpu")
    nnz = er_connections(n, n, 20)
    dense_bytes = n * n * 4
    gc.collect()
    tracemalloc.start()
    try:
        rng = np.random.default_rng(0)
        w = erdos_renyi(n, n, 20, rng=rng, backend=be)
        assert w.nnz == nnz == 40 * n
        x = rng.standard_normal((n, 4)).astype(np.float32)
        y = be.matmul(x, w)
        dx, grad = be.backward(x, y, w)
        assert y.shape == dx.shape == (n, 4) and grad.shape == (nnz,)
        del x, y, dx
        momentum = grad.copy()
        new_w, (new_momentum,) = set_step(be, w, momentum, rng)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert new_w.nnz == nnz and new_momentum.shape == (nnz,)
    # The regrown entries start with momentum 0; the kept ones carry theirs along.
    assert int(np.count_nonzero(new_momentum == 0)) >= int(0.3 * nnz)
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 1e9:.2f} GB"
    # Even a dense bool mask (n_in * n_out bytes) would break this bound.
    assert peak < dense_bytes / 20, f"peak {peak / 1e9:.2f} GB vs dense {dense_bytes / 1e9:.0f} GB"
    assert peak / nnz < MAX_BYTES_PER_CONNECTION, f"{peak / nnz:.0f} bytes per connection"
