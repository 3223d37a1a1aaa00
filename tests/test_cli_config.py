"""CLI plumbing: --config file.toml, --quiet/--verbose, logging, and the documented exit codes."""

import argparse
import json
import logging
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from sparsekit import train
from sparsekit.cli.main import _parser
from sparsekit.cli.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    NOT_IN_CONFIG,
    parse_args,
    subparsers,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    return path


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sparsekit", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def write(path, text):
    path.write_text(text)
    return path


def base_config(tiny, out):
    return (f'dataset = "{tiny}"\nhidden = [16]\nepochs = 1\nbatch-size = 32\n'
            f'no_plot = true\nno-progress = true\nout = "{out}"\n')


def test_config_file_sets_options_and_flags_override_it(tiny, tmp_path):
    out = tmp_path / "run"
    cfg = write(tmp_path / "c.toml", base_config(tiny, out) + "lr = 0.05\nseed = 7\n")
    r = run_cli("train", "--config", cfg, "--epochs", "2", "--seed", "3")
    assert r.returncode == EXIT_OK, r.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["hidden"] == [16] and saved["dataset"] == str(tiny)
    assert saved["train"]["batch_size"] == 32 and saved["train"]["lr"] == 0.05
    assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == 3  # flags win
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert not (out / "plot.png").exists()  # no_plot = true from the file


def example_value(action: argparse.Action):
    if isinstance(action, argparse._StoreTrueAction):
        return True
    one = {int: 3, float: 0.5}.get(action.type, "some-text")
    if action.choices is not None:
        one = list(action.choices)[-1]
    if isinstance(action.nargs, int):
        return [one] * action.nargs
    return [one, one] if action.nargs in ("+", "*") else one


def toml_literal(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return json.dumps(value)


def test_every_train_flag_is_settable_in_the_config(tmp_path):
    train_parser = subparsers(_parser())["train"]
    options = [a for a in train_parser._actions
               if a.option_strings and a.dest not in NOT_IN_CONFIG]
    assert len(options) > 25
    expected = {a.dest: example_value(a) for a in options}
    # half the keys with dashes, half with underscores: both spellings are accepted
    lines = [f"{(d.replace('_', '-') if i % 2 else d)} = {toml_literal(v)}"
             for i, (d, v) in enumerate(expected.items())]
    cfg = write(tmp_path / "all.toml", "\n".join(lines) + "\n")
    args = parse_args(_parser(), ["train", "--config", str(cfg)])
    for dest, value in expected.items():
        assert getattr(args, dest) == value, dest


@pytest.mark.parametrize("text, message", [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("epochs = \"ten\"\n", "epochs must be an integer"),
    ("epochs = true\n", "epochs must be an integer"),
    ("hidden = 100\n", "hidden must be a list"),
    ("lr = \"fast\"\n", "lr must be a number"),
    ("no-plot = 1\n", "no-plot must be true or false"),
    ("parallel = \"horovod\"\n", "parallel must be one of"),
    ("epochs = = 3\n", "not valid TOML"),
])
def test_bad_config_is_a_usage_error_naming_the_key(tmp_path, text, message):
    cfg = write(tmp_path / "bad.toml", text)
    r = run_cli("train", "--config", cfg)
    assert r.returncode == EXIT_USAGE
    assert message in r.stderr and r.stdout == ""


def test_optimizer_from_the_config_file_and_bad_values_exit_2_before_any_work(tiny, tmp_path):
    out = tmp_path / "run"
    cfg = write(tmp_path / "c.toml", base_config(tiny, out)
                + 'optimizer = "adamw"\nbetas = [0.8, 0.99]\nadam-eps = 1e-7\n')
    r = run_cli("train", "--config", cfg)
    assert r.returncode == EXIT_OK, r.stderr
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["optimizer"] == "adamw" and saved["betas"] == [0.8, 0.99]
    assert saved["adam_eps"] == 1e-7 and saved["weight_decay"] == 0.01  # AdamW's default
    for flags, message in ((["--lr", "-1"], "lr must be > 0"),
                           (["--optimizer", "adam", "--decay", "decoupled"], "adamw"),
                           (["--zeta", "1"], "zeta must lie in"),
                           (["--betas", "0.9", "1.5"], "betas must lie in")):
        bad = tmp_path / "bad"
        r = run_cli("train", "--dataset", tmp_path / "absent.npz", "--out", bad, *flags)
        assert r.returncode == EXIT_USAGE, (flags, r.stderr)
        assert message in r.stderr and not bad.exists()  # before the data or the folder
    bad = write(tmp_path / "bad.toml", 'betas = [0.9]\n')
    r = run_cli("train", "--config", bad)
    assert r.returncode == EXIT_USAGE and "betas must be a list of 2 values" in r.stderr


def test_missing_config_file_is_a_usage_error(tmp_path):
    r = run_cli("train", "--config", tmp_path / "nowhere.toml")
    assert r.returncode == EXIT_USAGE and "cannot read" in r.stderr


def test_quiet_and_verbose(tiny, tmp_path):
    cfg = write(tmp_path / "c.toml", base_config(tiny, tmp_path / "r1"))
    normal = run_cli("train", "--config", cfg)
    assert normal.returncode == EXIT_OK, normal.stderr
    assert "epoch   1" in normal.stdout and "arguments:" not in normal.stdout
    quiet = run_cli("train", "--config", cfg, "--quiet", "--out", tmp_path / "r2")
    assert quiet.returncode == EXIT_OK and quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "r2" / "checkpoint.npz").exists()
    verbose = run_cli("train", "--config", cfg, "-v", "--out", tmp_path / "r3")
    assert verbose.returncode == EXIT_OK and "arguments:" in verbose.stdout
    assert "epoch   1" in verbose.stdout
    r = run_cli("train", "-q", "-v")
    assert r.returncode == EXIT_USAGE and "not allowed with" in r.stderr
    ev = run_cli("evaluate", tmp_path / "r1", "--quiet")
    assert ev.returncode == EXIT_OK and ev.stdout == ""


def test_exit_codes_for_data_and_usage_errors(tmp_path):
    r = run_cli("train", "--dataset", tmp_path / "missing.npz", "--out", tmp_path / "r")
    assert r.returncode == EXIT_ERROR and r.stderr.startswith("sparsekit: error:")
    r = run_cli("train", "--epochs", "many")
    assert r.returncode == EXIT_USAGE
    r = run_cli("frobnicate")
    assert r.returncode == EXIT_USAGE
    r = run_cli("train", "--dataset", tmp_path / "missing.npz", "-v", "--out", tmp_path / "r")
    assert r.returncode == EXIT_ERROR and "Traceback" in r.stdout  # the debug traceback


def test_wasap_flags_without_parallel_are_usage_errors(tmp_path):
    r = run_cli("train", "--dataset", "synthetic", "--wasap-mode", "async", "--out",
                tmp_path / "r")
    assert r.returncode == EXIT_USAGE and "--wasap-mode applies to --parallel wasap only" in \
        r.stderr and not (tmp_path / "r").exists()


def test_interrupt_exits_130(tiny, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sparsekit", "train", "--dataset", str(tiny),
                             "--hidden", "16", "--epochs", "100000", "--batch-size", "8",
                             "--no-plot", "--no-progress", "--out", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A job started in the background inherits SIGINT ignored, and
                            # Python then keeps ignoring it: give the child Ctrl-C's default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED
    assert f"interrupted; resume with sparsekit train --resume {tmp_path / 'r'}" in err


def test_train_logs_epoch_lines_to_the_sparsekit_logger(caplog):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    seen = []
    with caplog.at_level(logging.INFO, logger="sparsekit"):
        train([5, 8, 2], (x, y), epochs=2, batch_size=16, log=seen.append)
    lines = [r.getMessage() for r in caplog.records if r.name == "sparsekit"]
    assert len(lines) == 2 and lines == seen and lines[0].startswith("epoch   1")


def test_warmup_epochs_reaches_the_schedule(tiny, tmp_path):
    """--warmup-epochs ramps the learning rate from 0.1x to 1x of --lr over 2 epochs."""
    from sparsekit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", str(tiny), "--hidden", "16", "--epochs", "2", "--lr",
                 "0.02", "--warmup-epochs", "2", "--no-progress", "--no-plot", "--out", str(out)]) == 0
    hist = json.loads((out / "history.json").read_text())
    lrs = [h["lr"] for h in (hist["history"] if isinstance(hist, dict) else hist)]
    assert lrs[0] < 0.6 * 0.02 and lrs[0] < lrs[1] <= 0.02  # no warm-up: both 0.02


def train_tiny(data, out, *extra, cwd=None):
    return run_cli("train", "--dataset", data, "--hidden", "8", "--epochs", "1",
                   "--batch-size", "32", "--no-plot", "--no-progress", "--threads", "1",
                   "--out", out, *extra, cwd=cwd)


def test_a_folder_named_like_a_dataset_does_not_hide_the_dataset(tmp_path):
    (tmp_path / "digits").mkdir()  # e.g. the data itself, downloaded next to the runs
    r = train_tiny("digits", tmp_path / "r", cwd=tmp_path)
    assert r.returncode == EXIT_OK, r.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["dataset"] == "digits"


def test_a_bad_all_relu_slope_is_a_usage_error_before_any_folder(tiny, tmp_path):
    r = train_tiny(tiny, tmp_path / "r", "--alpha", "-1")
    assert r.returncode == EXIT_USAGE and "alpha (the All-ReLU slope) must be > 0" in r.stderr
    assert not (tmp_path / "r").exists()


def test_evaluate_names_its_data_and_finds_a_moved_data_file(tiny, tmp_path):
    data = tmp_path / "data.npz"
    data.write_bytes(tiny.read_bytes())
    assert train_tiny(data, tmp_path / "run").returncode == EXIT_OK
    (tmp_path / "moved").mkdir()
    data.rename(tmp_path / "moved" / "data.npz")
    r = run_cli("evaluate", tmp_path / "run")
    assert r.returncode == EXIT_ERROR and "does not exist" in r.stderr
    r = run_cli("evaluate", tmp_path / "run", "--data-dir", tmp_path / "moved")
    assert r.returncode == EXIT_OK and "accuracy" in r.stdout, r.stderr
    r = run_cli("train", "--resume", tmp_path / "run", "--epochs", "2", "--data-dir",
                tmp_path / "moved", "--no-progress")
    assert r.returncode == EXIT_OK, r.stderr
    # a checkpoint alone does not say which data it was trained on
    lone = tmp_path / "lone.npz"
    lone.write_bytes((tmp_path / "run" / "checkpoint.npz").read_bytes())
    r = run_cli("evaluate", lone)
    assert r.returncode == EXIT_USAGE and "give the data with --dataset" in r.stderr
    r = run_cli("evaluate", lone, "--dataset", tmp_path / "moved" / "data.npz")
    assert r.returncode == EXIT_OK and "epoch 2" in r.stdout, r.stderr
    r = run_cli("evaluate", lone, "--dataset", tiny, "--backend", "tpu")
    assert r.returncode == EXIT_USAGE and "unknown backend 'tpu'" in r.stderr


def unparsable_header(path, member: str):
    """``path`` with one padding byte of ``member``'s .npy header made "(", which NumPy's header
    parser hands to tokenize (a TokenError, not a ValueError); the zip's checksums still
    match."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    raw = bytearray(members[member])
    raw[raw.index(b"}") + 5] = ord("(")
    members[member] = bytes(raw)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_an_unparsable_array_header_is_a_one_line_error(tiny, tmp_path):
    assert train_tiny(tiny, tmp_path / "run").returncode == EXIT_OK
    unparsable_header(tmp_path / "run" / "checkpoint.npz", "layer0_indices.npy")
    r = run_cli("evaluate", tmp_path / "run")
    assert r.returncode == EXIT_ERROR and "has an unreadable header" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    data = tmp_path / "data.npz"
    data.write_bytes(tiny.read_bytes())
    unparsable_header(data, "x_train.npy")
    r = train_tiny(data, tmp_path / "r2")
    assert r.returncode == EXIT_ERROR and "array x_train is unreadable" in r.stderr
    assert "Traceback" not in r.stderr
    text = tmp_path / "text.npz"
    text.write_text("hello\n")
    r = train_tiny(text, tmp_path / "r3")
    assert r.returncode == EXIT_ERROR and "not an .npz archive" in r.stderr


def test_help_is_shown_whatever_the_config_file_holds(tmp_path):
    bad = write(tmp_path / "bad.toml", "bogus = [\n")
    r = run_cli("train", f"--config={bad}", "--help")
    assert r.returncode == EXIT_OK and "usage: sparsekit train" in r.stdout
    r = run_cli("train", f"--config={bad}")
    assert r.returncode == EXIT_USAGE and "not valid TOML" in r.stderr
