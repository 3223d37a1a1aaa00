"""The host memory estimator: its parts against real arrays, its peak against measured RSS, and
the trainer's up-front refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import sparsekit
from sparsekit.training import memory
from sparsekit.training.memory_estimate import estimate_memory
from sparsekit.training.optim import Adam, MomentumSGD

SIZES = [50, 400, 300, 7]


def _model_bytes(model, optimizer=None) -> int:
    """Bytes of every persistent array of a model with an optimizer's state (momentum SGD, what
    train() attaches by default), transposed indices included."""
    (optimizer or MomentumSGD()).attach(model)
    total = 0
    for layer in model.layers:
        w = layer.w
        arrays = [w.indptr, w.indices, w.data, layer.b, *layer.state_w.values(),
                  *layer.state_b.values()]
        arrays += list(model.backend.transpose_index(w))
        total += sum(a.nbytes for a in arrays)
    return total


def test_persistent_part_is_the_models_arrays():
    model = sparsekit.SparseMLP(SIZES, epsilon=5, seed=0, backend="cpu")
    est = estimate_memory(model, batch_size=16)
    assert est.persistent == _model_bytes(model)
    assert est.connections == sum(model.n_connections)
    # From sizes the Erdős–Rényi counts give the same figure.
    assert estimate_memory(SIZES, epsilon=5, batch_size=16).persistent == est.persistent
    # Adam keeps two state arrays per value array: both counted.
    adam = sparsekit.SparseMLP(SIZES, epsilon=5, seed=0, backend="cpu")
    assert (estimate_memory(adam, batch_size=16, state_slots=2).persistent
            == _model_bytes(adam, Adam()))
    # 20 bytes per connection at float32 / int32 (value, index, momentum, transposed index).
    wide = estimate_memory([784, 100_000, 10])
    assert 20 <= wide.persistent / wide.connections < 21


def test_parts_move_with_their_knobs():
    base = estimate_memory([784, 5000, 5000, 10], n_test=10_000)
    assert estimate_memory([784, 5000, 5000, 10], batch_size=256,
                           n_test=10_000).step > base.step
    # An evaluation chunk below the fused pass (64 samples at width 5 000) shrinks it; above,
    # the pass stays the same.
    assert estimate_memory([784, 5000, 5000, 10], eval_batch_size=16,
                           n_test=10_000).evaluate < base.evaluate
    assert estimate_memory([784, 5000, 5000, 10], eval_batch_size=512,
                           n_test=10_000).evaluate == base.evaluate
    assert estimate_memory([784, 5000, 5000, 10], n_test=0).evaluate == 0
    assert estimate_memory([784, 5000, 5000, 10], method="static").evolve == 0
    assert estimate_memory([784, 5000, 5000, 10], epsilon=40).persistent > base.persistent
    f64 = estimate_memory([784, 5000, 5000, 10], dtype="float64", n_test=10_000)
    assert f64.persistent > base.persistent and f64.step > base.step
    gse = estimate_memory([784, 5000, 5000, 10], method="gse", n_test=10_000)
    assert gse.evolve > base.evolve  # scoring candidates (output gradients: the workspace)
    with_data = estimate_memory([784, 5000, 5000, 10], n_train=60_000, n_test=10_000)
    assert with_data.data >= 70_000 * 784 * 4 and with_data.peak > base.peak
    assert base.peak == sum(v for k, v in base.parts().items()
                            if k in ("baseline", "data", "heap", "persistent", "workspace")
                            ) + base.transient
    assert estimate_memory([784, 5000, 5000, 10], batch_size=256,
                           n_test=10_000).workspace > base.workspace


def test_the_gpu_estimate_leaves_out_the_host():
    gpu = estimate_memory([784, 3000, 3000, 10], device="gpu", n_train=60_000, n_test=10_000)
    assert gpu.baseline == gpu.data == gpu.heap == 0


@pytest.mark.parametrize("bad", [dict(device="tpu"), dict(method="adam"), dict(batch_size=0),
                                 dict(n_train=-1)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        estimate_memory([784, 100, 10], **bad)


def test_parse_memory_limit():
    assert memory.parse_bytes("16GiB") == 16 * 2**30
    assert memory.parse_bytes("80%") == 0.8
    with pytest.raises(ValueError, match="memory_limit"):
        memory.parse_bytes("lots")


_MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import sparsekit
    from sparsekit.training.memory import peak_resident_memory, resident_memory
    from sparsekit.training.memory_estimate import estimate_memory
    width, steps = int(sys.argv[1]), int(sys.argv[2])
    sizes = [784, width, width, width, 10]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128 * steps, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128 * steps)
    xt, yt = x[:256].copy(), y[:256].copy()
    base = resident_memory()  # interpreter, libraries and the data, already resident
    est = estimate_memory(sizes, n_test=256, baseline=base)
    sparsekit.train(sizes, (x, y, xt, yt), epochs=2, backend="cpu", seed=0)
    peak = peak_resident_memory()
    print(json.dumps({"predicted": est.peak, "measured": peak}))
""")


@pytest.mark.parametrize("width", [20_000, 70_000])
def test_predicted_peak_within_20_percent_of_measured_rss(width):
    # Two epochs: training steps, a SET update between them, evaluation after each.  70 000
    # puts every step array above glibc's mmap ceiling, 20 000 below it (heap allowance).
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(width), "3"], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert 0.8 <= r["predicted"] / r["measured"] <= 1.2, r


def test_train_refuses_before_allocating():
    x = np.zeros((256, 784), np.float32)
    y = np.zeros(256, np.int64)
    start = time.perf_counter()
    # 10**8 hidden neurons would take minutes and tens of GB to build.
    with pytest.raises(ValueError, match=r"does not fit in memory.*Lower batch_size"):
        sparsekit.train([784, 10**8, 10], (x, y), epochs=1, memory_limit="1GiB")
    with pytest.raises(ValueError, match=r"batch_size"):
        sparsekit.train([784, 200_000, 10], (x, y), epochs=1, batch_size=128, epsilon=1,
                        memory_limit=memory.resident_memory() + 150 * 2**20)
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="memory_limit"):
        sparsekit.train([784, 100, 10], (x, y), epochs=1, memory_limit="-3GB")


def test_train_accepts_what_fits():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    res = sparsekit.train([20, 64, 3], (x, y), epochs=1, memory_limit="90%", backend="cpu")
    assert res.history[0]["epoch"] == 1


def test_cli_memory_limit(tmp_path):
    from sparsekit.cli import main

    code = main(["train", "--dataset", "synthetic", "--hidden", "100000000", "--epochs", "1",
                 "--memory-limit", "2GiB", "--out", str(tmp_path / "run"), "--no-plot", "-q"])
    assert code == 1  # refused with a message, as a runtime error


def test_layer_sizes_as_an_integer_array_estimate_like_a_tuple():
    from sparsekit import estimate_memory

    # the array's own dtype (int64) is not the values' precision
    assert estimate_memory(np.array([784, 100, 10])) == estimate_memory((784, 100, 10))


def test_topkast_counts_its_backward_set_and_forward_copy():
    from sparsekit.nn.init import er_connections

    sizes = [100, 3000, 3000, 10]
    er = [er_connections(n_out, n_in, 20.0) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    gse = estimate_memory(sizes, method="gse")
    tk = estimate_memory(sizes, method="topkast")
    # the hidden layers hold B = 2 |A| (A: the ER budget), the output layer its budget
    assert tk.connections == 2 * er[0] + 2 * er[1] + er[2] == gse.connections + er[0] + er[1]
    assert tk.persistent > gse.persistent
    dense = estimate_memory(sizes, method="topkast", backward_density=0.5)
    assert dense.connections == round(0.5 * 100 * 3000) + round(0.5 * 3000 * 3000) + er[2]


_MEASURE_TOPKAST = textwrap.dedent("""
    import json, sys
    import numpy as np
    import sparsekit
    from sparsekit.training.memory import peak_resident_memory, resident_memory
    from sparsekit.training.memory_estimate import estimate_memory
    width, density = int(sys.argv[1]), float(sys.argv[2]) or None
    sizes, params = [100, width, width, 10], {} if density is None else {
        "backward_density": density}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 100)).astype(np.float32)
    y = rng.integers(0, 10, 160)
    base = resident_memory()
    est = estimate_memory(sizes, method="topkast", batch_size=32, n_test=32, baseline=base,
                          **params)
    sparsekit.train(sizes, (x[:128], y[:128], x[128:], y[128:]), epochs=2, batch_size=32,
                    method="topkast", method_params=params, backend="cpu", seed=0)
    print(json.dumps({"predicted": est.peak, "measured": peak_resident_memory()}))
""")


@pytest.mark.parametrize("width, density", [(20_000, 0.0), (3_000, 0.5)])
def test_topkast_peak_is_not_underestimated(width, density):
    out = subprocess.run([sys.executable, "-c", _MEASURE_TOPKAST, str(width), str(density)],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert 1.0 <= r["predicted"] / r["measured"] <= 1.5, r


def test_the_gpu_estimate_counts_topkast_sets_too():
    def peak(forward_density):
        return estimate_memory([784, 1000, 1000, 10], method="topkast", device="gpu",
                               forward_density=forward_density, backward_density=0.5).peak

    assert peak(0.45) > peak(0.05)  # A's copy grows with its density
    assert peak(0.05) > estimate_memory([784, 1000, 1000, 10], method="gse",
                                        device="gpu").peak
