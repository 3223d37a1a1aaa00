"""Adversarial cases: nothing silent, nothing lost (docs/guarantees.rst).

Run-folder locking, strict resume, crash debris, the bounded checkpoint loader, bad input to
train(), the model and the command line.  Each case must end in correct behaviour or a clear
one-line error; none may end in a traceback, a hang, a silent wrong answer or a large
allocation.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from sparsekit import SparseMLP, train
from sparsekit.cli.main import main
from sparsekit.io.checkpoint import _digest, load_checkpoint, save_checkpoint
from sparsekit.io.runfolder import RunFolderBusy, run_folder_lock
from sparsekit.training.config import TrainConfig

EXIT_ERROR, EXIT_USAGE = 1, 2


def data(seed=0, n=300, d=12, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x[:240], y[:240], x[240:], y[240:]


KW = dict(epochs=2, batch_size=40, epsilon=3, seed=1)
SIZES = [12, 16, 3]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    x, y, xt, yt = data()
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-epoch run folder (train()); tests copy what they modify."""
    folder = tmp_path_factory.mktemp("run") / "r"
    train(SIZES, data(), run_dir=folder, **KW)
    return folder


def cli(*args):
    """``sparsekit`` in this process: (exit status, stderr text)."""
    err = io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    finally:
        sys.stderr = old
    return code, err.getvalue()


def cli_train(tiny_npz, out, *extra):
    return cli("train", "--dataset", tiny_npz, "--hidden", 16, "--epochs", 1,
               "--batch-size", 40, "--epsilon", 3, "--no-plot", "--out", out, *extra)


# --- the run-folder lock ----------------------------------------------------------------------
HOLDER = """
import sys, time
from sparsekit.io.runfolder import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/"busy"'s lock."""
    folder = tmp_path / "busy"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder, tiny_npz):
    folder, proc = holder
    with pytest.raises(RunFolderBusy, match=f"in use by process {proc.pid}"):
        train(SIZES, data(), run_dir=folder, **KW)
    assert not (folder / "checkpoint.npz").exists()
    code, err = cli_train(tiny_npz, folder)
    assert code == EXIT_ERROR and f"process {proc.pid}" in err and err.count("\n") == 1
    assert not (folder / "config.json").exists()


def test_the_lock_dies_with_its_process(holder):
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # free, and re-entrant in this thread where the holder allows it (the command line's)
    with run_folder_lock(folder, allow_nested=True), run_folder_lock(folder):
        pass
    with run_folder_lock(folder), pytest.raises(RuntimeError, match="in use by this process"):
        with run_folder_lock(folder):
            pass


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    stale = [folder / ".checkpoint.npz.tmp-99999", folder / ".history.json.tmp-4",
             folder / ".config.json.tmp-4-140211"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = folder / "notes.tmp-1"
    keep.write_text("mine")
    train(SIZES, data(), run_dir=folder, **{**KW, "epochs": 1})
    assert not any(p.exists() for p in stale) and keep.exists()
    assert not list(folder.glob(".*.tmp-*"))


def test_run_folder_under_a_regular_file_fails_before_training(tmp_path):
    (tmp_path / "f").write_text("x")
    calls = []
    with pytest.raises(NotADirectoryError, match="is a file"):
        train(SIZES, data(), run_dir=tmp_path / "f" / "run", callbacks=[calls.append], **KW)
    assert calls == []


# --- strict resume ----------------------------------------------------------------------------
def test_cli_resume_refuses_changed_flags_and_allows_epochs(tiny_npz, tmp_path):
    out = tmp_path / "r"
    assert cli_train(tiny_npz, out)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, err = cli("train", "--resume", out, "--lr", 5, "--hidden", 999)
    assert code == EXIT_USAGE and err.count("\n") == 1
    assert "lr: run has 0.01, given 5.0" in err and "hidden: run has [16]" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    code, err = cli("train", "--resume", out, "--epochs", 2, "--lr", 0.01, "--no-plot")
    assert code == 0, err  # --epochs may change; --lr equal to the run's is no difference
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


def test_cli_fresh_run_refuses_an_existing_run_folder(tiny_npz, tmp_path):
    out = tmp_path / "r"
    assert cli_train(tiny_npz, out)[0] == 0
    code, err = cli_train(tiny_npz, out)
    assert code == EXIT_ERROR and "already holds a run" in err and "--resume" in err


def test_cli_a_run_too_large_for_its_data_or_memory_makes_no_folder(tiny_npz, tmp_path):
    out = tmp_path / "r"
    code, err = cli_train(tiny_npz, out, "--batch-size", 5000)
    assert code == EXIT_ERROR and "exceeds the" in err and not out.exists()
    code, err = cli_train(tiny_npz, out, "--hidden", 100000, 100000, "--epsilon", 1e6)
    assert code == EXIT_ERROR and "does not fit in memory" in err and not out.exists()


def test_cli_a_run_that_failed_before_its_first_epoch_leaves_a_reusable_folder(tiny_npz,
                                                                               tmp_path):
    out = tmp_path / "r"
    assert cli_train(tiny_npz, out, "--batch-size", 20)[0] == 0
    (out / "checkpoint.npz").unlink()  # as a run killed in its first epoch leaves it
    code, err = cli_train(tiny_npz, out)  # no checkpoint there: nothing to lose
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == 40


def test_cli_run_keeps_its_data_file_from_any_working_directory(tiny_npz, tmp_path,
                                                                 monkeypatch):
    (tmp_path / "a").mkdir()
    local = tmp_path / "a" / "d.npz"
    local.write_bytes(tiny_npz.read_bytes())
    monkeypatch.chdir(tmp_path / "a")
    assert cli_train("d.npz", tmp_path / "r")[0] == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["dataset"] == str(local.resolve())
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")  # holds no d.npz
    code, err = cli("train", "--resume", tmp_path / "r", "--epochs", 2, "--no-plot")
    assert code == 0, err
    code, err = cli("train", "--resume", tmp_path / "r", "--dataset", local, "--epochs", 2,
                    "--no-plot")
    assert code == 0, err  # the same file, named another way, is no difference


def test_cli_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`sparsekit train ... | head -1`: no traceback for each line that can no longer be
    written."""
    cmd = (f"{sys.executable} -m sparsekit train --dataset digits --hidden 8 --epochs 4 "
           f"--no-plot --out {tmp_path / 'r'} | head -1")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("sparsekit: digits"), proc.stdout
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_cli_a_config_json_with_a_bad_dataset_is_a_one_line_error(run, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(run, folder)
    (folder / "config.json").write_text(json.dumps(
        {"dataset": 5, "data_dir": None, "hidden": [16], "backend": "cpu", "train": {}}))
    code, err = cli("evaluate", folder)
    assert code == EXIT_ERROR and err.count("\n") == 1 and "dataset must be a string" in err


@pytest.mark.parametrize("parallel", [None, "wasap"])
def test_train_fresh_run_refuses_a_folder_holding_a_run(run, tmp_path, parallel):
    if parallel:  # one rank, in this process (tests/test_mpi.py runs it under mpiexec)
        pytest.importorskip("mpi4py", reason="WASAP needs mpi4py (nox -s tests_mpi has it)")
    folder = tmp_path / "r"
    shutil.copytree(run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    opts = {} if parallel is None else {"parallel": parallel}
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoint\.npz\); "
                                              r"continue it with resume=True"):
        train(SIZES, data(), run_dir=folder, **KW, **opts)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    # an empty or checkpoint-less folder (a run killed before its first epoch) is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(train(SIZES, data(), run_dir=empty, **KW, **opts).history) == 2


def test_train_resume_uses_the_runs_config_and_lists_differences(run, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    for name in ("checkpoint.npz", "history.json"):
        (folder / name).write_bytes((run / name).read_bytes())
    with pytest.raises(ValueError, match=r"zeta: run has 0\.3, given 0\.1; lr: run has 0\.01"):
        train(SIZES, data(), run_dir=folder, resume=True, lr=0.5, zeta=0.1)
    with pytest.raises(ValueError, match="options differ"):
        train(SIZES, data(), TrainConfig(epochs=3), run_dir=folder, resume=True)
    longer = train(SIZES, data(), run_dir=folder, resume=True, epochs=3)  # the run's config
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]


def test_a_checkpoint_of_another_architecture_is_refused(tiny_npz, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_train(tiny_npz, a)[0] == 0
    assert cli("train", "--dataset", tiny_npz, "--hidden", 8, "--epochs", 1, "--batch-size",
               40, "--epsilon", 3, "--no-plot", "--out", b)[0] == 0
    (a / "checkpoint.npz").write_bytes((b / "checkpoint.npz").read_bytes())
    code, err = cli("train", "--resume", a, "--epochs", 2)
    assert code == EXIT_ERROR and "do not match the configured network [12, 16, 3]" in err


def test_a_checkpoint_whose_config_differs_from_config_json_is_refused(tiny_npz, tmp_path):
    out = tmp_path / "r"
    assert cli_train(tiny_npz, out)[0] == 0
    saved = json.loads((out / "config.json").read_text())
    saved["train"]["zeta"] = 0.2
    (out / "config.json").write_text(json.dumps(saved))
    code, err = cli("train", "--resume", out, "--epochs", 2)
    assert code == EXIT_ERROR and "zeta: run has 0.3, given 0.2" in err


def test_truncated_config_json_names_the_file(tiny_npz, tmp_path):
    out = tmp_path / "r"
    assert cli_train(tiny_npz, out)[0] == 0
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text[: len(text) // 2])
    code, err = cli("train", "--resume", out)
    assert code == EXIT_ERROR and f"{out / 'config.json'} is not valid JSON" in err
    code, err = cli("evaluate", out)
    assert code == EXIT_ERROR and "config.json is not valid JSON" in err


# --- the checkpoint loader --------------------------------------------------------------------
def rewrite(src, dst, change):
    """Copy checkpoint ``src`` to ``dst`` after ``change(meta, arrays)``, with a valid checksum
    (what a careful forger would do)."""
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "checksum"}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), np.uint8)
    np.savez(dst, **arrays)
    return dst


def _set(path, value):
    def change(meta, arrays):
        *keys, last = path
        target = meta
        for k in keys:
            target = target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return change


def _arrays(fn):
    return lambda meta, arrays: fn(arrays)


STRUCTURAL = {
    "extra model key": (_set(["model", "colour"], "red"), "unknown model option"),
    "extra array": (_arrays(lambda a: a.__setitem__("layer9_data", np.zeros(3, np.float32))),
                    "unexpected array"),
    "missing array": (_arrays(lambda a: a.pop("layer1_bias")), "missing array"),
    "bias too long": (_arrays(lambda a: a.__setitem__("layer0_bias", np.zeros(17, np.float32))),
                      "has 17 entries, expected 16"),
    "string array": (_arrays(lambda a: a.__setitem__("layer0_indices", np.array(["a"]))),
                     "expected numbers"),
    "negative epoch": (_set(["train_state", "epoch"], -5), "epoch -5 is not an integer"),
    "history not a list": (_set(["train_state", "history"], {"a": 1}), "history is not a list"),
    "shapes do not chain": (_set(["shapes"], [[16, 12], [3, 15]]), "do not chain"),
    "zero shape": (_set(["shapes"], [[0, 12], [3, 0]]), "positive integers"),
    "bad version": (_set(["version"], 99), "unsupported checkpoint format"),
    "slots not names": (_set(["slots"], ["momentum", "momentum"]), "distinct names"),
    "bad dtype": (_set(["model", "dtype"], "int8"), "float32 or float64"),
    "negative epsilon": (_set(["model", "epsilon"], -1), "epsilon must be a finite number > 0"),
    "unknown init": (_set(["model", "init"], "bogus"), "init must be one of"),
    "unknown fan_in": (_set(["model", "fan_in"], "bogus"), "fan_in must be one of"),
    "NaN bias": (_arrays(lambda a: a["layer0_bias"].__setitem__(0, np.nan)),
                 "bias holds NaN or inf"),
    "NaN optimizer state": (_arrays(lambda a: a["layer1_w_momentum"].__setitem__(0, np.inf)),
                            "w_momentum holds NaN or inf"),
}


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_structural_problems_are_one_clear_error(run, tmp_path, case):
    change, message = STRUCTURAL[case]
    path = rewrite(run / "checkpoint.npz", tmp_path / "c.npz", change)
    with pytest.raises(ValueError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("missing", ["history", "rng", "epoch"])
def test_a_checkpoint_without_training_state_cannot_be_resumed(run, tmp_path, missing):
    folder = tmp_path / "r"
    folder.mkdir()
    rewrite(run / "checkpoint.npz", folder / "checkpoint.npz",
            _set(["train_state", missing], KeyError))
    with pytest.raises(ValueError, match=f"no resumable training state.*{missing}"):
        train(SIZES, data(), run_dir=folder, resume=True)


@pytest.mark.parametrize("path,value,message", [
    (["train_state", "optimizer"], None, "training state cannot be restored"),
    (["train_state", "optimizer"], [1, 2], "training state cannot be restored"),
    (["train_state", "history"], [{}, {}], r"records are not numbered 1\.\.2"),
])
def test_a_malformed_training_state_is_refused_before_training(run, tmp_path, path, value,
                                                                message):
    folder = tmp_path / "r"
    folder.mkdir()
    rewrite(run / "checkpoint.npz", folder / "checkpoint.npz", _set(path, value))
    before = (folder / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match=message):
        train(SIZES, data(), run_dir=folder, resume=True, epochs=3)
    assert (folder / "checkpoint.npz").read_bytes() == before


def test_rng_state_garbage_is_a_clear_error(run, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    rewrite(run / "checkpoint.npz", folder / "checkpoint.npz",
            _set(["train_state", "rng"], {"bit_generator": "Nope"}))
    with pytest.raises(ValueError, match="training state cannot be restored"):
        train(SIZES, data(), run_dir=folder, resume=True)


def _npy_header(shape, dtype="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def test_declared_sizes_are_bounded_before_reading(run, tmp_path):
    # A small member whose .npy header declares 2 GiB: refused from the headers, at once.
    src = run / "checkpoint.npz"
    bomb = tmp_path / "declares.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename == "layer0_data.npy":
                body = _npy_header((2**28,)) + b"\0" * 4096
            zout.writestr(info.filename, body)
    # A deflate bomb: 64 MiB of zeros in ~64 KiB, beyond 16x the file's size.
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        zout.writestr("meta.npy", _npy_header((2**26,), "|u1") + bytes(2**26))
    for path, message in ((bomb, "declares shape"), (deflated, "refused before reading")):
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * 2**20 and elapsed < 2, (path.name, peak, elapsed)


def test_truncated_and_garbage_files(run, tmp_path):
    raw = (run / "checkpoint.npz").read_bytes()
    for i, body in enumerate([raw[: len(raw) // 2], raw[:100], b"", b"PK\x03\x04" + b"x" * 50]):
        path = tmp_path / f"t{i}.npz"
        path.write_bytes(body)
        with pytest.raises(ValueError, match="truncated or corrupt|not a sparsekit") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a file"):
        load_checkpoint(tmp_path)


def test_a_valid_checkpoint_still_round_trips(run, tmp_path):
    ckpt = load_checkpoint(run / "checkpoint.npz", layer_sizes=SIZES)
    path = save_checkpoint(tmp_path / "again.npz", ckpt.model, ckpt.train_state)
    again = load_checkpoint(path)
    for a, b in zip(ckpt.model.layers, again.model.layers):
        np.testing.assert_array_equal(a.w.data, b.w.data)
        np.testing.assert_array_equal(a.state_w["momentum"], b.state_w["momentum"])


# --- train() and model inputs -----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_epochs": -3}, "warmup_epochs must be >= 0"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        train(SIZES, data(), **{**KW, **kwargs})
    assert "\n" not in str(info.value)


def test_fractional_layer_size_is_an_error():
    with pytest.raises(ValueError, match=r"positive integers, got \[12, 32.7, 3\]"):
        train([12, 32.7, 3], data(), **KW)


def test_single_class_training_set_is_refused():
    x, y, xt, yt = data()
    with pytest.raises(ValueError, match="single class"):
        train(SIZES, (x, np.zeros_like(y), xt, yt), **KW)


def test_empty_test_set_records_no_test_metrics():
    x, y, xt, yt = data()
    with pytest.warns(UserWarning, match="test set is empty"):
        result = train(SIZES, (x, y, xt[:0], yt[:0]), **{**KW, "epochs": 1})
    assert "test_acc" not in result.history[-1]


def test_a_batch_larger_than_the_data_says_so():
    with pytest.raises(ValueError, match="batch_size 1000000000 exceeds the 240 training"):
        train(SIZES, data(), **{**KW, "batch_size": 10**9})


def test_scipy_sparse_input_trains_as_dense_does():
    x, y, xt, yt = data()
    x[x < 0.5] = 0  # something sparse
    dense = train(SIZES, (x, y, xt, yt), **KW)
    sparse = train(SIZES, (sp.csr_matrix(x), y, sp.csr_array(xt), yt), **KW)
    assert [r["train_loss"] for r in dense.history] == [r["train_loss"] for r in sparse.history]
    assert dense.history[-1]["test_acc"] == sparse.history[-1]["test_acc"]
    bad = sp.csr_matrix(x)
    bad.data[3] = np.nan
    with pytest.raises(ValueError, match="x_train contains NaN"):
        train(SIZES, (bad, y, xt, yt), **KW)


def test_model_input_checks():
    model = SparseMLP(SIZES, seed=0)
    x = data()[2]
    cases = [
        (lambda: model.evaluate(x[:0], []), "no rows"),
        (lambda: model.evaluate(x[:2], [0, 12]), "label 12 outside 0..2"),
        (lambda: model.evaluate(x[:2], [0]), "1 labels but x has 2 rows"),
        (lambda: model.predict_proba(np.where(np.eye(3, 12) > 0, np.nan, 0)),
         r"NaN or inf \(first at row 0, column 0\)"),
        (lambda: model.predict(np.full((2, 12), "a")), "real numbers"),
        (lambda: model.predict(x, batch_size=0), "batch_size must be a positive integer"),
    ]
    for thunk, message in cases:
        with pytest.raises(ValueError, match=message):
            thunk()


# --- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [
    ["--lr", "-1"], ["--hidden", "0"], ["--hidden", "16", "-3"], ["--zeta", "1"],
    ["--threads", "0"], ["--backend", "tpu"], ["--memory-limit", "lots"],
    ["--gpu-memory-limit", "200%"], ["--epochs", "0"], ["--batch-size", "0"], ["--dropout", "1"],
    ["--momentum", "1.5"], ["--seed", "-1"], ["--warmup-epochs", "-3"], ["--lr", "nan"],
    ["--epsilon", "0"], ["--prune-percentile", "100"], ["--lr-schedule", "zigzag"],
    ["--method", "gse", "--gamma", "-1"], ["--method", "gse", "--drop-fraction", "2"],
    ["--method", "topkast", "--forward-density", "2"], ["--drop-fraction", "0.5"],
])
def test_bad_flags_exit_2_before_data_or_folder(tmp_path, flags):
    out = tmp_path / "r"
    code, err = cli("train", "--dataset", tmp_path / "no-such-data.npz", "--out", out, *flags)
    assert code == EXIT_USAGE, err
    assert "no-such-data" not in err and err.count("\n") == 1 and not out.exists()


def test_missing_data_leaves_no_folder(tmp_path):
    out = tmp_path / "r"
    code, err = cli("train", "--dataset", tmp_path / "no-such-data.npz", "--out", out)
    assert code == EXIT_ERROR and not out.exists()


def test_help_names_the_real_default_folder(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "runs/<dataset>-<method>-<time>" in " ".join(capsys.readouterr().out.split())


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    import sparsekit

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"sparsekit {sparsekit.__version__}\n"
    assert version("sparsekit") == sparsekit.__version__  # one source: pyproject reads it


def test_no_progress_bar_off_a_terminal(tiny_npz, tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparsekit", "train", "--dataset", str(tiny_npz),
                        "--hidden", "16", "--epochs", "1", "--batch-size", "40", "--no-plot",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr


# --- kill -9 during checkpointing -------------------------------------------------------------
KILL_IN_SAVE = """
import os, sys, time
import numpy as np
from sparsekit import train
_savez, saves = np.savez, []
def savez(fh, **arrays):  # write the temporary file, then pause there to be killed in
    _savez(fh, **arrays)
    fh.flush()
    saves.append(1)
    if len(saves) == int(os.environ.get("PAUSE_AT_SAVE", 0)):
        time.sleep(60)
np.savez = savez
rng = np.random.default_rng(0)
x = rng.standard_normal((400, 12)).astype(np.float32)
y = rng.integers(0, 3, 400) + (x[:, 0] > 0)
train([12, 32, 4], (x, y, x[:50], y[:50]), epochs=3, batch_size=40, epsilon=3, seed=2,
      optimizer="adam", run_dir=sys.argv[1], resume=sys.argv[2] == "1")
"""


def test_kill_during_a_checkpoint_write_resumes_bit_identical(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(KILL_IN_SAVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "ref"), "0"], check=True,
                   env=env, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run), "0"],
                            env={**env, "PAUSE_AT_SAVE": "2"})
    deadline = time.time() + 120
    while not list(run.glob(".checkpoint.npz.tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(run.glob(".checkpoint.npz.tmp-*")), "killed outside the write; proves nothing"
    assert load_checkpoint(run / "checkpoint.npz").train_state["epoch"] == 1  # the old one
    subprocess.run([sys.executable, str(script), str(run), "1"], check=True, env=env,
                   timeout=300)
    assert not list(run.glob(".*.tmp-*"))  # the killed write's debris is gone
    ref = load_checkpoint(tmp_path / "ref" / "checkpoint.npz")
    got = load_checkpoint(run / "checkpoint.npz")
    assert [r["train_loss"] for r in got.train_state["history"]] == \
        [r["train_loss"] for r in ref.train_state["history"]]
    for a, b in zip(ref.model.layers, got.model.layers):
        np.testing.assert_array_equal(a.w.data, b.w.data)
        for slot in a.state_w:
            np.testing.assert_array_equal(a.state_w[slot], b.state_w[slot])


def test_resume_without_options_continues_a_pruned_run(tmp_path):
    kw = {**KW, "prune_start": 1, "prune_every": 1, "prune_percentile": 20, "epochs": 3}
    full = train(SIZES, data(), **kw)
    part = train(SIZES, data(), run_dir=tmp_path, callbacks=[lambda r, m: r["epoch"] == 1], **kw)
    assert part.model.layer_sizes[1] < SIZES[1]  # pruned: smaller than configured
    resumed = train(SIZES, data(), run_dir=tmp_path, resume=True)  # the run's own config
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


@pytest.mark.mpi
def test_under_mpi_rank_0_owns_the_folder(holder, tiny_npz):
    pytest.importorskip("mpi4py")
    if _mpiexec() is None:
        pytest.skip("mpiexec not found (pip install 'sparsekit[mpi]')")
    folder, proc = holder
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "sparsekit", "train",
                        "--parallel", "wasap", "--dataset", str(tiny_npz), "--hidden", "16",
                        "--epochs", "1", "--batch-size", "40", "--no-plot", "--threads", "1",
                        "--out", str(folder)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and f"in use by process {proc.pid}" in r.stderr
    assert "Traceback" not in r.stderr and not (folder / "config.json").exists()


GUARDED = """
import os, sys
import sparsekit.parallel.comm as comm

comm.ABORT_GRACE_SECONDS = 0


class TwoRanks:  # what guarded() uses of a communicator
    size, rank = 2, 1

    def abort(self, code):
        os._exit(code)


with comm.guarded(TwoRanks()):
    raise {exc}("the cause")
"""


@pytest.mark.parametrize("exc,traceback", [("ValueError", False), ("FileExistsError", False),
                                           ("KeyError", True), ("AttributeError", True)])
def test_a_failing_rank_reports_expected_errors_in_one_line(exc, traceback):
    # Bad input or a used folder on one rank is one line; an unexpected error (a bug) keeps
    # its traceback.  Every rank is ended either way.
    r = subprocess.run([sys.executable, "-c", GUARDED.format(exc=exc)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert f"sparsekit[rank 1/2]: {exc}: " in r.stderr and "the cause" in r.stderr
    assert ("Traceback" in r.stderr) == traceback, r.stderr


def test_a_second_thread_or_a_run_inside_a_callback_cannot_write_the_folder(tmp_path):
    import threading

    folder = tmp_path / "r"
    inside, tried = threading.Event(), threading.Event()

    def hold(record, model):  # the first run waits, holding the folder, for the second try
        inside.set()
        tried.wait(60)

    first = threading.Thread(target=train, args=([12, 16, 3], data()),
                             kwargs=dict(epochs=1, batch_size=8, run_dir=folder,
                                         callbacks=[hold]))
    first.start()
    assert inside.wait(60)
    try:
        with pytest.raises(RuntimeError, match="in use by this process .another thread"):
            train([12, 16, 3], data(), epochs=1, batch_size=8, run_dir=folder)
    finally:
        tried.set()
        first.join()
    assert (folder / "checkpoint.npz").exists()

    inner = tmp_path / "m"

    def nested(record, model):  # a run started from a callback, into the same folder
        train([12, 16, 3], data(), epochs=1, batch_size=8, run_dir=inner, resume=True)

    with pytest.raises(RuntimeError, match="a run whose callbacks started this one"):
        train([12, 16, 3], data(), epochs=1, batch_size=8, run_dir=inner, callbacks=[nested])


def test_resume_takes_the_runs_own_method_params_and_refuses_fewer_epochs(tmp_path):
    kw = dict(epochs=2, batch_size=40, epsilon=3, seed=1, method="gse",
              method_params={"gamma": 2.0})
    train([12, 16, 3], data(), run_dir=tmp_path, callbacks=[lambda r, m: True], **kw)
    done = train([12, 16, 3], data(), run_dir=tmp_path, resume=True,
                 method_params={"gamma": 2.0})  # over the run's config, not the defaults
    assert len(done.history) == 2
    with pytest.raises(ValueError, match="epochs=1 is fewer than the 2 it has trained"):
        train([12, 16, 3], data(), run_dir=tmp_path, resume=True, epochs=1)


def test_test_features_without_labels_and_values_beyond_float32_are_refused():
    x, y, xt, yt = data()
    with pytest.raises(ValueError, match="x_test and y_test must be given together"):
        train([12, 16, 3], (x, y, xt, None), epochs=1, batch_size=40)
    with pytest.raises(ValueError, match="evaluate needs the labels"):
        SparseMLP([12, 16, 3], seed=0).evaluate(xt, None)
    wide = x.astype(np.float64)
    wide[3, 5] = 1e39
    with pytest.raises(ValueError, match=r"x_train contains values beyond float32's range "
                                         r"\(1e\+39, first at row 3, column 5\)"):
        train([12, 16, 3], (wide, y), epochs=1, batch_size=40)
    assert train([12, 16, 3], (wide / 1e30, y), epochs=1, batch_size=40, dtype="float64").history
