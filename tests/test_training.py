"""train(): learning, determinism, exact resume (also after a real kill), checkpoints, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from reference import parallel_cpu

import sparsekit
from sparsekit import SparseMLP, load_checkpoint, save_checkpoint, train
from sparsekit.io.datasets import load_dataset
from sparsekit.training.optim import MomentumSGD


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_dataset("digits")


def small_data(seed=0, n=600, d=20, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x[:500], y[:500], x[500:], y[500:]


def weights(model):
    """Every value array of the model, optimizer state included."""
    return [np.concatenate([layer.w.data, layer.b, *layer.state_w.values(),
                            *layer.state_b.values()]) for layer in model.layers]


def strip_times(history):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]


def test_learns_digits(digits):
    result = train([64, 128, 128, 10], digits, epochs=8, batch_size=32, epsilon=10, seed=0)
    assert result.history[-1]["test_acc"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_result_any_thread_count():
    data = small_data()
    runs = []
    for threads in (1, 2, 1):
        be = parallel_cpu(threads)  # the thresholds would keep this small network on one
        runs.append(train([20, 32, 16, 3], data, backend=be, epochs=3, batch_size=50, seed=7,
                          epsilon=4, prune_start=2, prune_every=1, prune_percentile=10))
    for other in runs[1:]:
        assert strip_times(other.history) == strip_times(runs[0].history)
        for a, b in zip(weights(runs[0].model), weights(other.model)):
            np.testing.assert_array_equal(a, b)
    different = train([20, 32, 16, 3], data, epochs=3, batch_size=50, seed=8, epsilon=4)
    assert not np.array_equal(weights(different.model)[0], weights(runs[0].model)[0])


def test_history_records_topology(tmp_path):
    data = small_data()
    res = train([20, 40, 30, 3], data, epochs=4, batch_size=50, epsilon=4, seed=0,
                prune_start=2, prune_every=2, prune_percentile=25, run_dir=tmp_path)
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert h[0]["neurons"] == [20, 40, 30, 3]
    assert h[1]["neurons"][1] < 40 and h[1]["pruned"][0] > 0
    assert h[1]["connections"][0] < h[0]["connections"][0]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "time_train", "lr"} <= set(h[0])
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads(json.dumps(h))
    assert (tmp_path / "history.csv").read_text().count("\n") == 5


def test_resume_matches_uninterrupted(tmp_path):
    data = small_data()
    kw = dict(epochs=4, batch_size=50, epsilon=4, seed=3, prune_start=2, prune_every=2)
    full = train([20, 24, 16, 3], data, run_dir=tmp_path / "full", **kw)
    part = train([20, 24, 16, 3], data, run_dir=tmp_path / "part", **{**kw, "epochs": 4},
                 callbacks=[lambda rec, m: rec["epoch"] == 2])
    assert len(part.history) == 2
    resumed = train([20, 24, 16, 3], data, run_dir=tmp_path / "part", resume=True, **kw)
    assert strip_times(resumed.history) == strip_times(full.history)
    for a, b in zip(weights(full.model), weights(resumed.model)):
        np.testing.assert_array_equal(a, b)


KILL_SCRIPT = """
import sys, time, numpy as np
from sparsekit import train
from sparsekit.training.step import Engine
# Slow every step down (the arithmetic is untouched) so a kill lands inside an epoch.
_after_step = Engine.after_step
Engine.after_step = lambda self, *a, **k: (time.sleep(0.004), _after_step(self, *a, **k))[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((6000, 64)).astype(np.float32)
y = (x[:, :8].sum(1) > 0).astype(np.int64)
train([64, 256, 256, 2], (x, y, x[:500], y[:500]), epochs=int(sys.argv[2]), batch_size=32,
      seed=5, run_dir=sys.argv[1], resume=sys.argv[3] == "1", optimizer=sys.argv[4])
"""


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_killed_run_resumes_exactly(tmp_path, optimizer):
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "ref"), "3", "0", optimizer],
                   check=True, env=env, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run), "3", "0", optimizer],
                            env=env)
    deadline = time.time() + 240
    while not (run / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoint.npz").exists(), "the first epoch's checkpoint was not written"
    done = load_checkpoint(run / "checkpoint.npz").train_state["epoch"]
    assert done < 3, "the job finished before it could be killed; the test proves nothing"
    subprocess.run([sys.executable, str(script), str(run), "3", "1", optimizer], check=True,
                   env=env, timeout=300)
    ref = load_checkpoint(tmp_path / "ref" / "checkpoint.npz")
    got = load_checkpoint(run / "checkpoint.npz")
    assert strip_times(got.train_state["history"]) == strip_times(ref.train_state["history"])
    for a, b in zip(weights(ref.model), weights(got.model)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = SparseMLP([12, 16, 4], epsilon=3, seed=0)
    MomentumSGD().attach(model)
    model.layers[0].state_w["momentum"][:] = 0.5
    path = save_checkpoint(tmp_path / "ck.npz", model, {"epoch": 3})
    assert not list(tmp_path.glob(".ck.npz.tmp-*"))
    loaded = load_checkpoint(path)
    assert loaded.train_state == {"epoch": 3}
    for a, b in zip(weights(model), weights(loaded.model)):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_array_equal(model.predict_proba(x), loaded.model.predict_proba(x))
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.npz")
    # Flip one byte inside the stored weights (npz is an uncompressed zip).
    with np.load(path) as npz:
        needle = npz["layer0_data"].tobytes()[:16]
    pos = raw.index(needle)
    tampered = bytearray(raw)
    tampered[pos + 3] ^= 0x40
    (tmp_path / "tampered.npz").write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match="checksum mismatch|corrupt"):
        load_checkpoint(tmp_path / "tampered.npz")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


def test_version_1_checkpoints_load_their_momentum_as_the_sgd_slot(tmp_path):
    """Checkpoints written before the optimizer protocol held momentum as vel_w/vel_b."""
    from sparsekit.io import checkpoint as ck

    model = SparseMLP([6, 5, 3], epsilon=2, seed=0)
    arrays = {}
    for i, layer in enumerate(model.layers):
        for key, arr in (("indptr", layer.w.indptr), ("indices", layer.w.indices),
                         ("data", layer.w.data), ("bias", layer.b),
                         ("vel_w", np.full(layer.nnz, 0.25, np.float32)),
                         ("vel_b", np.full(layer.out_features, 0.5, np.float32))):
            arrays[f"layer{i}_{key}"] = np.asarray(arr)
    meta = {"format": ck.FORMAT, "version": 1, "model": model.config(),
            "shapes": [list(layer.w.shape) for layer in model.layers],
            "train_state": {"epoch": 2}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v1.npz", **arrays)
    loaded = load_checkpoint(tmp_path / "v1.npz")
    for layer in loaded.model.layers:
        assert list(layer.state_w) == ["momentum"]
        assert (layer.state_w["momentum"] == 0.25).all() and (layer.state_b["momentum"] == 0.5).all()
    assert loaded.train_state == {"epoch": 2}


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = SparseMLP([6, 5, 2], epsilon=2, seed=0)
    path = save_checkpoint(tmp_path / "ck.npz", model, {"epoch": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, model, {"epoch": 2})
    assert load_checkpoint(path).train_state == {"epoch": 1}
    assert not list(tmp_path.glob(".ck.npz.tmp-*"))


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x[:, :5], y), "features"),
    (lambda x, y: (x, y + 10), "outside"),
    (lambda x, y: (np.where(np.arange(x.shape[1]) == 0, np.nan, x), y), "NaN"),
    (lambda x, y: (x, y[:-1]), "labels but"),
    (lambda x, y: (x, y + 0.5), "integer class labels"),
])
def test_bad_data_is_refused(bad, match):
    x, y, _, _ = small_data()
    bx, by = bad(x, y)
    with pytest.raises(ValueError, match=match):
        train([20, 8, 3], (bx, by), epochs=1, batch_size=50)


def test_bad_training_arguments():
    data = small_data()
    with pytest.raises(ValueError, match="method"):
        train([20, 8, 3], data, method="nope", epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        train([20, 8, 3], data, batch_size=10_000, epochs=1)
    with pytest.raises(ValueError, match="run_dir"):
        train([20, 8, 3], data, resume=True)


def test_diverging_run_raises_clearly():
    data = small_data()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train([20, 64, 3], data, lr=1e4, momentum=0.99, epochs=3, batch_size=50)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparsekit", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_cli_train_evaluate_resume(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    r = run_cli("train", "--dataset", "digits", "--hidden", "64", "64", "--epochs", "2",
                "--batch-size", "32", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("epoch ") >= 2 and "test accuracy" in r.stdout
    for name in ("checkpoint.npz", "history.json", "history.csv", "plot.png", "config.json"):
        assert (out / name).exists(), name
    r = run_cli("evaluate", str(out))
    assert r.returncode == 0 and "accuracy" in r.stdout
    r = run_cli("train", "--resume", str(out), "--epochs", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((out / "history.json").read_text())) == 3


def test_cli_errors_exit_nonzero_with_message(tmp_path):
    r = run_cli("train", "--dataset", str(tmp_path / "nothing.npz"), "--epochs", "1",
                "--out", str(tmp_path / "r"))
    assert r.returncode == 1 and "error" in r.stderr and r.stderr.count("\n") <= 2
    r = run_cli("evaluate", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no checkpoint" in r.stderr
    r = run_cli("train", "--backend", "tpu", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "unknown backend" in r.stderr  # a usage error, no folder
    assert not (tmp_path / "r2").exists()


def test_huge_hidden_layer_trains_evolves_and_checkpoints_in_onnz(tmp_path):
    """The one rule, end to end: a 100 000 x 100 000 layer (10^10 dense cells, 40 GB as float32)
    does a training step, a SET update, evaluation and a checkpoint round trip in O(nnz)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 100)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    tracemalloc.start()
    res = train([100, 100_000, 100_000, 2], (x, y, x, y), epochs=2, batch_size=32, seed=0,
                run_dir=tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    nnz = sum(res.model.n_connections)
    assert res.model.n_connections[1] == 4_000_000
    assert res.history[0]["growth_replaced"][1] > 1_000_000  # SET really ran on the big layer
    assert peak < 200 * nnz, f"peak {peak / 1e6:.0f} MB for {nnz} connections"
    assert peak < 2e9
    back = load_checkpoint(tmp_path / "checkpoint.npz")
    assert back.model.n_connections == res.model.n_connections


def test_public_api_surface():
    for name in ("train", "SparseMLP", "SparseLayer", "CSR", "get_backend", "use_backend",
                 "load_dataset", "erdos_renyi", "save_checkpoint", "load_checkpoint"):
        assert hasattr(sparsekit, name), name


def test_actual_fan_in_scales_initial_weights_only():
    """fan_in="actual" scales the initial weights by each neuron's ~epsilon inputs; regrown
    weights keep the dense scale U(+-sqrt(6 / n_in)), ~2.5x smaller here (at that larger scale,
    SET's 30 % per-epoch regrowth made Fashion-MNIST training diverge)."""
    x, y, _, _ = small_data(n=256, d=50, c=2)
    model = SparseMLP([50, 400, 2], epsilon=5, fan_in="actual", dropout=0.0, seed=0)
    w0 = model.layers[0].w.to_scipy().tocoo()
    before = set(zip(w0.row.tolist(), w0.col.tolist()))
    dense_bound = np.sqrt(6 / 50)
    assert np.abs(w0.data).max() > 1.5 * dense_bound  # the actual-fan-in initial scale
    train(model, (x, y), epochs=2, lr=1e-9, weight_decay=0.0, zeta=0.3, fan_in="actual", seed=0)
    w1 = model.layers[0].w.to_scipy().tocoo()
    new = [abs(v) for r, c, v in zip(w1.row, w1.col, w1.data) if (r, c) not in before]
    assert len(new) > 300 and max(new) <= dense_bound


def test_network_options_given_with_a_ready_model_must_match_it(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = sparsekit.SparseMLP([12, 20, 3], epsilon=3, dropout=0.3, seed=0)
    for option in ({"dropout": 0.0}, {"activation": "relu"}, {"dtype": "float64"},
                   {"epsilon": 5}):
        with pytest.raises(ValueError, match=f"{next(iter(option))}=.* differs from the given "
                                             "model's"):
            sparsekit.train(model, (x, y), epochs=1, batch_size=16, **option)
    # the model's own values, or none, train it, and the run records the model's
    sparsekit.train(model, (x, y), epochs=1, batch_size=16, dropout=0.3, epsilon=3)
    run = tmp_path / "run"
    sparsekit.train(model, (x, y), sparsekit.training.config.TrainConfig(dropout=0.0),
                    epochs=1, batch_size=16, run_dir=run)
    saved = load_checkpoint(run / "checkpoint.npz").train_state["config"]
    assert saved["dropout"] == 0.3 and saved["epsilon"] == 3.0


def test_schedules_after_a_warmup_are_continuous_and_the_step_is_configurable():
    from sparsekit.training.optim import LRSchedule

    for kind in ("cosine", "linear"):
        s = LRSchedule(kind, epochs=5, warmup_epochs=1)
        assert s(1.0, 0.0) == pytest.approx(0.1) and s(1.0, 1.0) == pytest.approx(1.0)
        assert s(1.0, 0.999) < s(1.0, 1.0) and s(1.0, 5.0) == pytest.approx(0.0)
        assert s(1.0, 3.0) == pytest.approx(0.5)  # halfway through the annealing
    cfg = sparsekit.training.config.TrainConfig(lr_schedule="step", lr_step_size=2, lr_gamma=0.5)
    engine_lr = [LRSchedule("step", epochs=6, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)(
        1.0, e) for e in range(6)]
    assert engine_lr == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    res = sparsekit.train([12, 20, 3], (x, y), epochs=3, batch_size=32, lr=0.1,
                          lr_schedule="step", lr_step_size=1, lr_gamma=0.5)
    assert [r["lr"] for r in res.history] == pytest.approx([0.05, 0.025, 0.0125])
    with pytest.raises(ValueError, match="lr_step_size"):
        sparsekit.train([12, 20, 3], (x, y), epochs=1, lr_step_size=0)


def test_resume_must_be_a_bool():
    with pytest.raises(TypeError, match="resume must be True or False, got 'yes'"):
        sparsekit.train([4, 3], small_data(d=4), resume="yes")


def test_wasap_options_without_parallel_are_refused_as_on_the_command_line():
    with pytest.raises(ValueError, match="wasap_mode applies to parallel='wasap' only"):
        sparsekit.train([20, 8, 3], small_data(), epochs=1, wasap_mode="async")
