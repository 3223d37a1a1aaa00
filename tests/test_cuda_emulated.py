"""The CUDA kernels, run on the host by ``cuda_emu``, against the same oracle tests as the CPU.

The kernel sources of ``sparsekit/_cuda/kernels`` are compiled as C++ with an emulation of the
CUDA execution model (see ``cuda_emu.h``) and driven through the GPU backend's own Python
wrappers, NumPy standing in for CuPy.  The tests are those of ``test_kernels``,
``test_topology`` and ``test_bad_input``, called with the emulated backend, so the index
arithmetic, bounds, shuffles and argument types of every kernel are checked on machines without
a GPU.  Skips without a C++ compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_bad_input as tb
import test_kernels as tk
import test_topology as tt
from cuda_emu import EmulatedGpuBackend, build, compiler, emulated_kernels
from reference import host, random_csr, to_backend

from sparsekit._cuda import _module as km
from sparsekit._cuda import rebuild
from sparsekit._cython.backend import CpuBackend

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the emulation")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return build(tmp_path_factory.mktemp("cuda_emu"))


@pytest.fixture
def emu(kernels):
    with emulated_kernels(kernels) as calls:
        be = EmulatedGpuBackend()
        be.calls = calls
        yield be


def test_every_instance_is_built_and_launched_with_matching_types(emu):
    """All products on both value and index types: each launch goes through the signature
    check, and the instances launched are the ones the backend names."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for idt in (np.int32, np.int64):
            w_sp = random_csr(rng, 30, 20, 0.3, dtype=dtype)
            w = to_backend(emu, w_sp, dtype, idt)
            x = rng.standard_normal((20, 7)).astype(dtype)
            dy = rng.standard_normal((30, 7)).astype(dtype)
            emu.matmul(x, w)
            emu.backward(x, dy, w)
            emu.backward(x, dy, w, need_dx=False)
            emu.sampled_grad(x, dy, np.array([0, 29], idt), np.array([19, 0], idt))
            emu.contains(w, np.array([0, 5]), np.array([1, 2]))
            keep = np.ones(w.nnz, bool)
            keep[0] = False
            free = np.argwhere(w_sp.toarray() == 0)[:3]
            emu.rebuild(w, keep, free[:, 0], free[:, 1], np.ones(3, dtype), np.ones(w.nnz, dtype),
                        np.arange(w.nnz, dtype=idt))
            # rebuild picks the smallest index type that fits; the raw merge takes either.
            out_indptr = np.empty(31, idt)
            out_indices = np.empty(w.nnz + 2, idt)
            src = np.empty(w.nnz + 2, np.int64)
            assert rebuild.merge(w.indptr, w.indices, keep, free[:3, 0], free[:3, 1], 20,
                                 out_indptr, out_indices, src) == 0
        emu.bias_act_dropout(np.ones((3, 4), dtype), np.zeros(3, dtype), 0.5, 0.5, 1)
    launched = set(emu.calls)
    expected = {e for f in km.kernel_files() for e in km.instances(f)}
    assert launched == expected, sorted(expected ^ launched)


# --- products and elementwise (test_kernels) -----------------------------------------------------
def type_combos(*extra):
    """(dtype, index_dtype, *extra) cases: two by default, every combination with --slow.

    Emulated shuffles cost a context switch per lane, so the full sweep takes minutes.
    """
    out = []
    for dtype in tk.DTYPES:
        for idt in tk.INDEX_DTYPES:
            for i, more in enumerate(extra or [()]):
                more = more if isinstance(more, tuple) else (more,)
                quick = (np.dtype(dtype).itemsize == np.dtype(idt).itemsize) and (
                    i == (0 if dtype is np.float32 else len(extra) - 1 if extra else 0))
                out.append(pytest.param(dtype, idt, *more,
                                        marks=() if quick else pytest.mark.slow))
    return out


@pytest.mark.parametrize("dtype, index_dtype", type_combos())
@pytest.mark.parametrize("test", [tk.test_matmul, tk.test_matmul_t, tk.test_weight_grad,
                                  tk.test_sampled_grad], ids=lambda f: f.__name__)
def test_products(emu, test, dtype, index_dtype):
    test(emu, dtype, index_dtype)


@pytest.mark.parametrize("dtype, index_dtype, need_dx", type_combos(True, False))
def test_backward(emu, dtype, index_dtype, need_dx):
    tk.test_backward(emu, dtype, index_dtype, need_dx)


def test_wide_batches_take_several_passes(emu):
    """Batches wider than one warp tile (128) exercise the accumulate-across-passes paths."""
    rng = np.random.default_rng(1)
    w_sp = random_csr(rng, 9, 11, 0.5)
    w = to_backend(emu, w_sp)
    for n_batch in (127, 128, 129, 300):
        x = rng.uniform(-1, 1, (11, n_batch))
        dy = rng.uniform(-1, 1, (9, n_batch))
        np.testing.assert_allclose(emu.matmul(x, w), w_sp @ x, rtol=1e-12, atol=1e-12)
        dx, g = emu.backward(x, dy, w)
        np.testing.assert_allclose(dx, w_sp.T @ dy, rtol=1e-12, atol=1e-12)
        rows, cols = np.repeat(np.arange(9), np.diff(w_sp.indptr)), w_sp.indices
        want = (dy[rows] * x[cols]).sum(axis=1)
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(emu.weight_grad(x, dy, w), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("test", [tk.test_products_with_empty_batch], ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", tk.DTYPES)
def test_empty_batch(emu, test, dtype):
    test(emu, dtype)


@pytest.mark.parametrize("test", [
    tk.test_non_contiguous_operands_are_read_correctly,
    tk.test_transpose_index_follows_new_values,
    tk.test_select_accepts_integer_values,
    tk.test_contains,
    tk.test_dropout_mask_is_the_documented_hash,
    tk.test_backends_agree_bit_for_bit_on_elementwise_and_topology,
], ids=lambda f: f.__name__)
def test_kernels_module(emu, test):
    test(emu)


@pytest.mark.parametrize("index_dtype", tk.INDEX_DTYPES)
def test_transpose_index(emu, index_dtype):
    tk.test_transpose_index_matches_generic(emu, index_dtype)


@pytest.mark.parametrize("dtype", tk.DTYPES)
@pytest.mark.parametrize("test", [tk.test_select, tk.test_bias_act_dropout],
                         ids=lambda f: f.__name__)
def test_select_and_dropout(emu, test, dtype):
    test(emu, dtype)


def test_dropout_bits_equal_the_cpu_kernel(emu):
    """float32 and float64, several slopes and rates: a, d identical to the CPU's bytes."""
    cpu = CpuBackend()
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        z = rng.standard_normal((23, 41)).astype(dtype)
        bias = rng.standard_normal(23).astype(dtype)
        for slope, rate, seed in [(-0.6, 0.3, 7), (0.75, 0.0, 0), (0.0, 0.9, 2**64 - 3)]:
            got = emu.bias_act_dropout(z, bias, slope, rate, seed)
            want = cpu.bias_act_dropout(z, bias, slope, rate, seed)
            for g, e in zip(got, want, strict=True):
                assert g.tobytes() == e.tobytes(), (dtype, slope, rate)


def test_select_and_rebuild_equal_the_cpu_kernels(emu):
    cpu = CpuBackend()
    rng = np.random.default_rng(3)
    w_sp = random_csr(rng, 60, 80, 0.1, dtype=np.float32)
    w_g, w_c = to_backend(emu, w_sp), to_backend(cpu, w_sp)
    k = w_sp.nnz // 3
    drop_g = emu.select(np.abs(w_g.data), k, largest=False)
    np.testing.assert_array_equal(drop_g, cpu.select(np.abs(w_c.data), k, largest=False))
    keep = np.ones(w_sp.nnz, bool)
    keep[drop_g] = False
    rows, cols = cpu.sample_absent(w_c, k, np.random.default_rng(4))
    vals = rng.standard_normal(k).astype(np.float32)
    state = rng.standard_normal(w_sp.nnz).astype(np.float32)
    # Unsorted new positions take the sort path of both backends.
    order = rng.permutation(k)
    got, (s_g,) = emu.rebuild(w_g, keep, rows[order], cols[order], vals[order], state)
    want, (s_c,) = cpu.rebuild(w_c, keep, rows[order], cols[order], vals[order], state)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_array_equal(s_g, s_c)


# --- topology (test_topology) ---------------------------------------------------------------------
@pytest.mark.parametrize("test", [tt.test_sample_absent_properties, tt.test_rebuild_properties],
                         ids=lambda f: f.__name__)
def test_topology_properties(emu, test):
    test(topo_backend=emu)


@pytest.mark.parametrize("test", [
    tt.test_rebuild_accepts_new_values_of_another_float_dtype,
    tt.test_fully_dense_layer,
    tt.test_layer_with_few_free_positions,
    tt.test_set_step_on_er_layer,
], ids=lambda f: f.__name__)
def test_topology_module(emu, test):
    test(emu)


def test_rebuild_of_long_rows(emu):
    """A dense 3 x 2000 layer: every slot rank comes from a binary search over long rows."""
    rng = np.random.default_rng(5)
    dense = np.ones((3, 2000), np.float32)
    dense[rng.random(dense.shape) < 0.3] = 0
    import scipy.sparse as sp

    w_sp = sp.csr_matrix(dense)
    w = to_backend(emu, w_sp)
    keep = rng.random(w.nnz) < 0.5
    free = np.argwhere(dense == 0)
    new = free[np.sort(rng.choice(free.shape[0], 500, replace=False))]
    got, _ = emu.rebuild(w, keep, new[:, 0], new[:, 1], np.full(500, 2.0, np.float32))
    want, _ = CpuBackend().rebuild(to_backend(CpuBackend(), w_sp), keep, new[:, 0], new[:, 1],
                                   np.full(500, 2.0, np.float32))
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(host(emu, getattr(got, name)), getattr(want, name))


# --- bad input (test_bad_input) -------------------------------------------------------------------
@pytest.mark.parametrize("test", [
    tb.test_products_refuse_bad_input,
    tb.test_products_refuse_arrays_of_another_device,
    tb.test_select_refuses_bad_input,
    tb.test_sample_absent_refuses_impossible_requests,
    tb.test_rebuild_refuses_bad_input,
    tb.test_rebuild_reinserting_a_dropped_position_is_fine,
    tb.test_bias_act_dropout_refuses_bad_input,
], ids=lambda f: f.__name__)
def test_bad_input(emu, test):
    test(emu)


# --- training end to end -------------------------------------------------------------------------
def test_training_end_to_end_matches_the_cpu(emu, tmp_path):
    """SET, importance pruning, evaluation and a checkpoint read back on the CPU: the emulated
    GPU run follows the CPU run (same topology, masks and updates; float32 rounding aside)."""
    from sparsekit import load_checkpoint, train

    rng = np.random.default_rng(6)
    centers = rng.standard_normal((3, 16)) * 2.5
    y = rng.integers(0, 3, 400)
    x = (centers[y] + rng.standard_normal((400, 16))).astype(np.float32)
    data = (x[:320], y[:320], x[320:], y[320:])
    kwargs = dict(epochs=3, batch_size=32, epsilon=4, seed=0, prune_start=1, prune_every=1,
                  prune_percentile=10)
    gpu = train([16, 40, 24, 3], data, backend=emu, **kwargs)
    cpu = train([16, 40, 24, 3], data, backend="cpu", **kwargs)
    for g, c in zip(gpu.history, cpu.history, strict=True):
        assert g["connections"] == c["connections"] and g["neurons"] == c["neurons"]
        assert g["train_loss"] == pytest.approx(c["train_loss"], rel=1e-4)
        assert g["test_acc"] == pytest.approx(c["test_acc"], abs=0.02)
    assert gpu.history[-1]["neurons"][1] < 40
    gpu.model.save(tmp_path / "m.npz")
    back = load_checkpoint(tmp_path / "m.npz", backend="cpu").model
    np.testing.assert_allclose(back.logits(data[2]), gpu.model.logits(data[2]), rtol=1e-5,
                               atol=1e-5)
