"""The training engine: one step under every front end, unchanged behaviour, exact resume for
every optimizer and growth method."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sparsekit import SparseMLP, load_checkpoint, train
from sparsekit.io.datasets import load_dataset
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine, make_growth

PINNED = Path(__file__).parent / "data" / "fmnist_default_3ep_seed0.json"


def strip_times(history):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]


def digest(model):
    h = hashlib.sha256()
    for layer in model.layers:
        for a in (layer.w.indptr, layer.w.indices, layer.w.data, layer.b):
            h.update(model.backend.to_numpy(a).tobytes())
    return h.hexdigest()


def blobs(seed=0, n=400, d=16, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 1.5
    y = rng.integers(0, c, n + 100)
    x = (centers[y] + rng.standard_normal((n + 100, d))).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def this_machine() -> dict:
    """What /proc/cpuinfo says of the first CPU (vendor, model name, AVX-512), for choosing a
    pin: the extensions are built with -march=native, so the bits of a run are the machine's."""
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    info["avx512f"] = "avx512f" in info.get("flags", "").split()
    return info


def test_default_fashion_mnist_history_is_pinned_bit_for_bit():
    """3 epochs of the paper's network (seed 0, CPU, SGD) give exactly the history and weights of
    the code before the training engine was unified, as recorded on this kind of machine
    (tests/data/ says which commit and where)."""
    try:
        data = load_dataset("fashion-mnist")
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    machine = this_machine()
    pins = [p for p in json.loads(PINNED.read_text())["pins"]
            if all(machine.get(k) == v for k, v in p["machine"].items())]
    if not pins:
        pytest.skip(f"no pin recorded for this CPU ({machine.get('vendor_id')}, "
                    f"{machine.get('model name')}): run the commit {PINNED.name} names here "
                    "and add its history")
    res = train([784, 1000, 1000, 1000, 10], data, epochs=3, seed=0, backend="cpu")
    assert strip_times(res.history) == pins[0]["history"]
    assert digest(res.model) == pins[0]["weights_sha256"]


OPTIMIZERS = [dict(optimizer="sgd"), dict(optimizer="sgd", nesterov=True),
              dict(optimizer="adam", lr=0.003), dict(optimizer="adamw", lr=0.003)]
METHODS = [dict(method="set", evolve_every=4), dict(method="gse", evolve_every=3),
           dict(method="topkast", evolve_every=3), dict(method="static")]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_resume_is_bit_identical_for_every_optimizer_and_method(tmp_path, opt, method):
    data = blobs(seed=3)
    kw = dict(epochs=3, batch_size=40, epsilon=3, seed=5, **opt, **method)
    full = train([16, 32, 16, 3], data, **kw)
    part = train([16, 32, 16, 3], data, run_dir=tmp_path, **kw,
                 callbacks=[lambda rec, m: rec["epoch"] == 2])
    assert len(part.history) == 2
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved.train_state["optimizer"]["name"] == opt["optimizer"]
    assert saved.train_state["optimizer"]["t"] == saved.train_state["step"]
    resumed = train([16, 32, 16, 3], data, run_dir=tmp_path, resume=True, **kw)
    assert strip_times(resumed.history) == strip_times(full.history)
    for a, b in zip(full.model.layers, resumed.model.layers):
        assert list(a.state_w) == list(b.state_w) and a.state_w
        for x, y in ((a.w.indices, b.w.indices), (a.w.data, b.w.data), (a.b, b.b),
                     *zip(a.state_w.values(), b.state_w.values()),
                     *zip(a.state_b.values(), b.state_b.values())):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("method", ["topkast", "set", "gse"])
def test_resume_after_neuron_pruning_is_bit_identical(tmp_path, method):
    # Pruning moves a layer off every size the growth method could recompute on resume
    # (Top-KAST's forward set): what it cannot re-derive travels in the checkpoint.
    data = blobs(seed=3)
    kw = dict(epochs=4, batch_size=40, epsilon=3, seed=5, method=method, prune_start=1,
              prune_every=1)
    full = train([16, 32, 32, 3], data, **kw)
    train([16, 32, 32, 3], data, run_dir=tmp_path, **kw, callbacks=[lambda rec, m: True])
    resumed = train([16, 32, 32, 3], data, run_dir=tmp_path, resume=True, **kw)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert digest(resumed.model) == digest(full.model)


def test_resume_continues_the_runs_optimizer_and_refuses_another(tmp_path):
    data = blobs()
    train([16, 8, 3], data, epochs=1, batch_size=40, run_dir=tmp_path, optimizer="adam")
    with pytest.raises(ValueError, match="optimizer: run has 'adam', given 'sgd'"):
        train([16, 8, 3], data, epochs=2, batch_size=40, run_dir=tmp_path, resume=True,
              optimizer="sgd")
    res = train([16, 8, 3], data, epochs=2, batch_size=40, run_dir=tmp_path, resume=True)
    assert len(res.history) == 2 and list(res.model.layers[0].state_w) == ["exp_avg",
                                                                          "exp_avg_sq"]


def test_optimizers_learn():
    data = blobs(seed=1)
    for opt in OPTIMIZERS:
        res = train([16, 32, 3], data, epochs=4, batch_size=20, epsilon=4, seed=0, **opt)
        assert res.history[-1]["test_acc"] > 0.8, opt


def test_set_regrowth_takes_the_dense_fan_in_scale_whatever_the_initial_one():
    model = SparseMLP([20, 30, 4], epsilon=3, seed=0, fan_in="actual")
    growth = make_growth(TrainConfig(fan_in="actual"), model)
    assert growth.params()["fan_in"] == "dense" and growth.params()["init"] == model.init


def test_engine_counts_steps_and_epochs_and_keeps_state_aligned():
    x, y, _, _ = blobs()
    model = SparseMLP([16, 24, 3], epsilon=3, seed=0)
    engine = Engine(model, TrainConfig(batch_size=64, optimizer="adam", method="gse",
                                       evolve_every=2), np.random.default_rng(0))
    fit = engine.train_epoch(x, y)
    assert fit["steps"] == len(x) // 64 == engine.step and fit["samples"] == fit["steps"] * 64
    engine.end_epoch()
    assert engine.epoch == 1 and engine.optimizer.t == engine.step
    for layer in model.layers:
        assert all(s.shape == layer.w.data.shape for s in layer.state_w.values())
    # The estimators' pass: every sample once, a last partial batch included.
    fit = engine.train_epoch(x, y, drop_last=False, sort_batches=True)
    assert fit["samples"] == len(x) and fit["steps"] == -(-len(x) // 64)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_sample_weight_weighs_the_loss_as_repeating_the_sample(backend, loss):
    # An integer weight k counts a sample's loss k times: the weighted step's loss and
    # gradients are those of the batch with each sample repeated k times (0: left out).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 7))
    weights = np.array([0, 1, 2, 3, 1, 0, 2, 1, 1, 4, 2, 1], dtype=np.float64)
    y = rng.integers(0, 3, 12) if loss == "cross_entropy" else rng.standard_normal((12, 3))

    def step(xs, ys, sample_weight):
        model = SparseMLP([7, 10, 3], epsilon=3, dropout=0.0, dtype="float64", seed=0,
                          backend=backend)
        engine = Engine(model, TrainConfig(dropout=0.0, dtype="float64"),
                        np.random.default_rng(0), loss=loss)
        idx = np.arange(xs.shape[0])
        tb = engine.targets(ys, idx)
        sw = None if sample_weight is None else backend.asarray(sample_weight)
        value, _, grads, _ = engine.gradients(xs, tb, [0], idx=idx, weights=sw)
        return float(value), [backend.to_numpy(g) for pair in grads for g in pair]

    reps = weights.astype(int)
    want_value, want = step(x.repeat(reps, axis=0), y.repeat(reps, axis=0), None)
    got_value, got = step(x, y, weights)
    assert got_value == pytest.approx(want_value, rel=1e-12)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)
    # scaling every weight changes nothing; all-zero weights: no loss, no gradient
    assert step(x, y, 2.5 * weights)[0] == pytest.approx(want_value, rel=1e-12)
    zero_value, zero = step(x, y, np.zeros(12))
    assert zero_value == 0.0 and not any(np.any(g) for g in zero)


def test_sample_weights_weigh_the_epochs_loss_and_equal_ones_change_nothing():
    x, y, _, _ = blobs(n=200)

    def engine():
        return Engine(SparseMLP([16, 24, 3], epsilon=3, seed=0), TrainConfig(batch_size=100),
                      np.random.default_rng(0))

    def epoch(sample_weight):
        run = engine()
        fit = run.train_epoch(x, y, drop_last=False, sample_weight=sample_weight)
        return fit, digest(run.model)

    plain, plain_digest = epoch(None)
    ones, ones_digest = epoch(np.ones(len(x)))
    assert ones_digest == plain_digest and ones["loss"] == pytest.approx(plain["loss"])
    # In stored order, a second batch of weight zero leaves the epoch's loss at the first's.
    first = engine()
    loss, _, _ = first.train_step(x, y, np.arange(100), first.lr_at(0.0))
    fit = engine().train_epoch(x, y, drop_last=False, shuffle=False,
                               sample_weight=np.repeat([1.0, 0.0], 100))
    assert fit["loss"] == pytest.approx(float(loss), rel=1e-6) and fit["loss"] > 0
