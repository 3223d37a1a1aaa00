"""WASAP-SGD under a real ``mpiexec``: runs tests/mpi/wasap_run.py with 1-3 ranks.

Every launch has a timeout, so a hang fails the test instead of stalling the suite.  Skips
cleanly when mpi4py (with an MPI library) or mpiexec is missing; ``nox -s tests_mpi`` installs
both (``.[mpi]``: mpi4py + the mpich wheel).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sparsekit import load_checkpoint

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi" / "wasap_run.py"
LAUNCH_TIMEOUT = 180  # generous: the machine may be shared; a hang still ends here
FAIL_BOUND = 60  # the bound on ending a job after a failure


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_ready() -> str:
    """Empty when mpi4py imports with a working MPI library and mpiexec exists, else why not."""
    if _mpiexec() is None:
        return "mpiexec not found (pip install 'sparsekit[mpi]')"
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"],
                           capture_output=True, text=True, timeout=60)
    return "" if probe.returncode == 0 else f"mpi4py unusable: {probe.stderr.strip()[-200:]}"


_WHY_NOT = _mpi_ready()
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT)]


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


def mpirun(n: int, *args: str, env: dict | None = None, timeout: float = LAUNCH_TIMEOUT):
    cmd = [_mpiexec(), "-n", str(n), sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or _env())


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("extra", [
    (),
    # WASAP once regrew SET links at the actual fan-in scale (the scale that made Fashion-MNIST
    # diverge) while train() used the dense one; one engine, one growth set-up now.
    ("--fan-in", "actual"),
    ("--optimizer", "adam", "--lr", "0.003"),
    ("--optimizer", "adamw", "--lr", "0.003"),
])
def test_one_rank_equals_single_process_trainer(extra):
    proc = ok(mpirun(1, "--compare-single", "--epochs", "5", *extra))
    assert "equal to the single-process trainer" in proc.stdout


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("n", [2, 3])
def test_training_improves_accuracy(tmp_path, n, mode):
    result = tmp_path / "result.json"
    ok(mpirun(n, "--mode", mode, "--epochs", "6", "--out", str(tmp_path / "run"),
              "--result", str(result)))
    res = json.loads(result.read_text())
    h = res["history"]
    assert res["size"] == n and [r["epoch"] for r in h] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in h] == [1, 1, 1, 1, 2, 2]  # round(0.7 * 6) = 4 phase-1 epochs
    # From chance (25 %) to well above it; the loss goes down.
    assert h[-1]["test_acc"] > 0.6, [r["test_acc"] for r in h]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    # The final model keeps the connection budget, and the saved checkpoint is that model.
    budget = h[3]["connections"]
    assert res["connections"] == budget and h[-1]["connections"] == budget
    assert h[-1]["averaged_workers"] == (n if mode == "sync" else n - 1)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ckpt.train_state["wasap"]["stage"] == "final"
    assert ckpt.model.n_connections == budget
    assert not (tmp_path / "run" / "wasap-workers").exists()
    for r in h:  # per-rank logs
        assert len(r["samples_per_s"]) == len(r["time_comm"]) == len(r["bytes_per_step"]) == n
        assert min(r["time_comm"]) >= 0
    values = (sum(budget) + sum(h[0]["neurons"][1:])) * 4  # float32 weights + biases
    if mode == "sync":
        # Phase 1 sends exactly the values of the gradient (no indices) per step.
        assert all(b == values for b in h[0]["bytes_per_step"])
        assert all(b == 0 for b in h[-1]["bytes_per_step"])  # phase 2: local
        assert all(s > 0 for s in h[0]["samples_per_s"])
    else:
        assert h[0]["bytes_per_step"][0] >= values  # the server's replies: values (+ topology)
        assert all(b >= values for b in h[0]["bytes_per_step"][1:])  # workers' pushes
        assert "staleness_mean" in h[0] and h[0]["topology_version"] >= 1
        assert h[0]["samples_per_s"][0] > 0


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_only_local_or_only_data_parallel(tmp_path, mode, fraction):
    ok(mpirun(2, "--mode", mode, "--epochs", "2", "--phase1-fraction", str(fraction),
              "--result", str(tmp_path / "r.json")))
    h = json.loads((tmp_path / "r.json").read_text())["history"]
    assert [r["phase"] for r in h] == ([2, 2] if fraction == 0 else [1, 1])
    # Phase 2 leaves diverged copies to average; a shared model needs no averaging.
    assert h[-1]["averaged_workers"] == ((2 if mode == "sync" else 1) if fraction == 0 else 1)


# A phase-1 and a phase-2 checkpoint; Adam's moments and step count must survive both.
@pytest.mark.parametrize("crash_after,optimizer", [(1, "sgd"), (3, "sgd"), (1, "adam"),
                                                   (3, "adamw")])
def test_resume_after_crash_matches_uninterrupted_run(tmp_path, crash_after, optimizer):
    common = ["--epochs", "4", "--phase1-fraction", "0.5", "--optimizer", optimizer]
    if optimizer != "sgd":
        common += ["--lr", "0.003"]
    ok(mpirun(2, *common, "--out", str(tmp_path / "full")))
    crashed = mpirun(2, *common, "--out", str(tmp_path / "part"), "--crash-after",
                     str(crash_after))
    assert crashed.returncode != 0
    part = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    assert part.train_state["epoch"] == crash_after
    ok(mpirun(2, *common, "--out", str(tmp_path / "part"), "--resume"))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    for la, lb in zip(a.model.layers, b.model.layers):
        assert list(la.state_w) == list(lb.state_w) and la.state_w
        for x, y in ((la.w.indices, lb.w.indices), (la.w.data, lb.w.data), (la.b, lb.b),
                     *zip(la.state_w.values(), lb.state_w.values()),
                     *zip(la.state_b.values(), lb.state_b.values())):
            np.testing.assert_array_equal(x, y)
    assert a.train_state["optimizer"] == b.train_state["optimizer"]
    strip = [{k: v for k, v in r.items() if not k.startswith(("time", "samples_per_s"))}
             for r in a.train_state["history"]]
    assert strip == [{k: v for k, v in r.items() if not k.startswith(("time", "samples_per_s"))}
                     for r in b.train_state["history"]]


def test_async_resume_finishes(tmp_path):
    common = ["--mode", "async", "--epochs", "4", "--phase1-fraction", "0.5", "--out",
              str(tmp_path / "run"), "--result", str(tmp_path / "r.json")]
    assert mpirun(3, *common, "--crash-after", "1").returncode != 0
    ok(mpirun(3, *common, "--resume"))
    h = json.loads((tmp_path / "r.json").read_text())["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3, 4] and h[-1]["test_acc"] > 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_async_phase2_resume_keeps_each_workers_own_state(tmp_path, optimizer):
    # In phase 2 the async workers step while the server (rank 0) does not: a resume that gave
    # them rank 0's step and optimizer scalars rewound their counters (and Adam's bias
    # correction) by a whole epoch.
    run = tmp_path / "run"
    common = ["--mode", "async", "--epochs", "5", "--phase1-fraction", "0.4", "--out",
              str(run), "--optimizer", optimizer, "--lr", "0.003"]
    assert mpirun(3, *common, "--crash-after", "3").returncode != 0

    def worker_states(epoch):
        folder = run / "wasap-workers" / f"epoch-{epoch:04d}"
        return [load_checkpoint(folder / f"rank-{r}.npz").train_state for r in (1, 2)]

    server_step = load_checkpoint(run / "checkpoint.npz").train_state["step"]
    before = worker_states(3)
    per_epoch = before[0]["step"] - server_step  # phase 2's first epoch, from the switch
    assert per_epoch > 0
    assert mpirun(3, *common, "--resume", "--crash-after", "4").returncode != 0
    for b, a in zip(before, worker_states(4)):
        assert a["epoch"] == 4 and a["step"] == b["step"] + per_epoch
        if optimizer == "adam":
            assert a["optimizer"]["t"] == b["optimizer"]["t"] + per_epoch
        others = [{k: v for k, v in s["optimizer"].items() if k != "t"} for s in (a, b)]
        assert others[0] == others[1]


def _pid_of_rank(pid_dir: Path, rank: int, proc) -> int:
    path = pid_dir / f"rank-{rank}.pid"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never started")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killed_worker_ends_job_quickly(tmp_path, mode):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    run = tmp_path / "run"
    cmd = [_mpiexec(), "-n", "3", sys.executable, str(SCRIPT), "--mode", mode, "--epochs",
           "100000", "--out", str(run), "--pid-dir", str(pid_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        victim = _pid_of_rank(pid_dir, 1, proc)
        deadline = time.monotonic() + LAUNCH_TIMEOUT  # wait until training is under way
        while not (run / "checkpoint.npz").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "job did not start"
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=FAIL_BOUND)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and elapsed < FAIL_BOUND
    # The launcher reports the dead process by pid; the start-up rank map ties it to rank 1.
    assert f"rank 1: pid {victim}" in out + err


def test_ctrl_c_ends_the_job_with_the_interrupt_exit_code(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    run = tmp_path / "run"
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "--epochs", "100000", "--out",
           str(run), "--pid-dir", str(pid_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        _pid_of_rank(pid_dir, 1, proc)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (run / "checkpoint.npz").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "job did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # mpiexec forwards it to every rank, as Ctrl-C does
        out, err = proc.communicate(timeout=FAIL_BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-500:]
    assert "interrupted (the run folder continues with --resume)" in err


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_failing_rank_ends_job_with_its_rank_and_cause(how):
    start = time.monotonic()
    proc = mpirun(3, "--epochs", "50", "--fault", how, "--fault-rank", "1", "--fault-epoch",
                  "1")
    assert proc.returncode != 0 and time.monotonic() - start < LAUNCH_TIMEOUT
    cause = "RuntimeError: injected failure" if how == "raise" else "SystemExit"
    assert f"sparsekit[rank 1/3]: {cause}" in proc.stderr
    # an expected kind of error is one line, not a traceback (sparsekit._errors)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    out = tmp_path / "run"
    ok(mpirun(2, "--epochs", "1", "--out", str(out)))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    proc = mpirun(2, "--epochs", "1", "--out", str(out))
    assert proc.returncode != 0
    assert "sparsekit[rank 0/2]: FileExistsError: " in proc.stderr and "resume=True" in \
        proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before


def test_stuck_rank_times_out_instead_of_hanging():
    start = time.monotonic()
    proc = mpirun(3, "--epochs", "50", "--fault", "stop", "--fault-rank", "2", "--fault-epoch",
                  "1", env=_env(SPARSEKIT_MPI_TIMEOUT="3"))
    assert proc.returncode != 0 and time.monotonic() - start < FAIL_BOUND
    assert "did not complete within 3 s" in proc.stderr, \
        f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"


def test_huge_layer_job_stays_o_nnz(tmp_path):
    """The one rule across messages: a 200 000 x 200 000 layer (160 GB dense) goes through the
    broadcast, the gradient allreduce, SET on every rank, phase 2 and the union averaging."""
    n = 200_000
    ok(mpirun(2, "--huge", str(n), "--epochs", "2", "--phase1-fraction", "0.5", "--batch-size",
              "16", "--result", str(tmp_path / "r.json")))
    res = json.loads((tmp_path / "r.json").read_text())
    h = res["history"]
    assert res["connections"] == h[0]["connections"] == [800_000, 400_008]
    assert h[0]["bytes_per_step"] == [4.0 * (800_000 + 400_008 + n + 4)] * 2
    assert h[-1]["averaged_workers"] == 2
    assert res["peak_rss_mib"] < 1536, res["peak_rss_mib"]  # per rank; dense: 160 GB


def test_ranks_on_a_node_share_its_cores(tmp_path):
    env = _env()
    env.pop("OMP_NUM_THREADS")
    ok(mpirun(2, "--epochs", "1", "--default-backend", "--result", str(tmp_path / "r.json"),
              env=env))
    cores = len(os.sched_getaffinity(0))
    assert json.loads((tmp_path / "r.json").read_text())["threads"] == max(1, cores // 2)


def test_ranks_that_loaded_different_data_stop_at_once():
    proc = mpirun(2, "--uneven-data", timeout=120)
    assert proc.returncode != 0 and "the ranks loaded different data" in proc.stderr


def test_ranks_given_different_options_stop_at_once():
    start = time.monotonic()
    proc = mpirun(2, "--uneven-options", env=_env(SPARSEKIT_MPI_TIMEOUT="60"), timeout=120)
    assert proc.returncode != 0 and "given different training options" in proc.stderr
    assert time.monotonic() - start < FAIL_BOUND


def test_a_rank_that_cannot_start_ends_every_rank_at_once(tmp_path):
    """The command line: data missing on one node, a batch larger than a WASAP shard."""
    rng = np.random.default_rng(0)
    x = rng.random((75, 20), np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    np.savez(tmp_path / "d_0.npz", x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    train = [sys.executable, "-m", "sparsekit", "train", "--parallel", "wasap", "--hidden", "8",
             "--epochs", "1", "--threads", "1", "--no-plot", "--no-progress"]
    start = time.monotonic()
    # only rank 0 finds its data (PMI_RANK: MPICH's launcher)
    proc = subprocess.run([_mpiexec(), "-n", "2", "sh", "-c",
                           f'exec "$@" --dataset {tmp_path}/d_$PMI_RANK.npz --batch-size 8 '
                           f'--out {tmp_path}/r1', "sh", *train],
                          capture_output=True, text=True, timeout=120,
                          env=_env(SPARSEKIT_MPI_TIMEOUT="60"))
    assert proc.returncode == 1 and time.monotonic() - start < FAIL_BOUND
    # rank 0 reports rank 1's error, once, and nothing else
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsekit[rank 1/2]: error: "), lines
    assert "d_1.npz does not exist" in lines[0]
    assert not (tmp_path / "r1").exists()
    proc = subprocess.run([_mpiexec(), "-n", "2", *train, "--dataset", str(tmp_path / "d_0.npz"),
                           "--batch-size", "32", "--out", str(tmp_path / "r2")],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 1 and "each of the 2 data shards has 30 samples" in proc.stderr
    assert not (tmp_path / "r2").exists()
    # resuming: the run folder missing on one node
    ok(subprocess.run([_mpiexec(), "-n", "2", *train, "--dataset", str(tmp_path / "d_0.npz"),
                       "--batch-size", "8", "--out", str(tmp_path / "r_0")],
                      capture_output=True, text=True, timeout=120, env=_env()))
    start = time.monotonic()
    proc = subprocess.run([_mpiexec(), "-n", "2", "sh", "-c",
                           f'exec "$@" --resume {tmp_path}/r_$PMI_RANK', "sh",
                           sys.executable, "-m", "sparsekit", "train", "--no-progress"],
                          capture_output=True, text=True, timeout=120,
                          env=_env(SPARSEKIT_MPI_TIMEOUT="60"))
    assert proc.returncode == 1 and time.monotonic() - start < FAIL_BOUND
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsekit[rank 1/2]: error: "), lines
    assert "r_1 is not a run folder" in lines[0]


def test_start_up_errors_print_once_for_all_ranks(tmp_path):
    """A usage error, a bad option and missing data that every rank meets alike read as they
    do from one process (exit 2, 2 and 1), not once per rank."""
    train = [_mpiexec(), "-n", "3", sys.executable, "-m", "sparsekit", "train", "--parallel",
             "wasap", "--no-progress", "--out", str(tmp_path / "run")]
    for flags, status, start in ((["--epochs", "-1"], 2, "sparsekit train: error: epochs"),
                                 (["--bogus"], 2, "usage: sparsekit"),
                                 (["--data-dir", str(tmp_path)], 1,
                                  "sparsekit: error: Fashion-MNIST not found")):
        proc = subprocess.run([*train, *flags], capture_output=True, text=True,
                              timeout=LAUNCH_TIMEOUT, env=_env())
        assert proc.returncode == status and proc.stderr.startswith(start), proc.stderr
        assert proc.stderr.count("error:") == 1, proc.stderr
    assert not (tmp_path / "run").exists()


def test_failure_lines_name_the_ranks_unless_all_share_the_error():
    from sparsekit.cli.launch import failure_lines

    same = {r: ("sparsekit train", "bad", 2) for r in range(3)}
    assert failure_lines(same, 3) == ["sparsekit train: error: bad"]
    assert failure_lines({1: same[1], 2: same[2]}, 3) == ["sparsekit[ranks 1,2/3] train: error: bad"]
    mixed = {0: ("sparsekit", "a", 1), 2: ("sparsekit", "b", 1)}
    assert failure_lines(mixed, 3) == ["sparsekit[rank 0/3]: error: a",
                                       "sparsekit[rank 2/3]: error: b"]


def test_async_needs_two_ranks():
    proc = mpirun(1, "--mode", "async")
    assert proc.returncode != 0 and "needs at least 2 ranks" in proc.stderr


def test_several_ranks_without_parallel_is_a_usage_error(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "sparsekit", "train",
                           "--dataset", "synthetic", "--out", str(run)],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=_env())
    assert proc.returncode == 2 and "each rank would train its own copy" in proc.stderr
    assert not run.exists()


@pytest.mark.parametrize("flags, message", [
    (["--wasap-mode", "async"], "needs at least 2 ranks"),
    (["--method", "gse"], "supports methods 'set' and 'static'"),
    (["--wasap-mode", "async", "--prune-start", "1"], "not supported with wasap mode 'async'"),
])
def test_wasap_usage_errors_exit_2_before_any_folder(tmp_path, flags, message):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sparsekit", "train", "--parallel", "wasap",
                           "--dataset", "synthetic", "--out", str(run), *flags],
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=_env())
    assert proc.returncode == 2 and message in proc.stderr and not run.exists()


def test_command_line(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 700)
    x = (rng.standard_normal((3, 12))[y] + rng.standard_normal((700, 12))).astype(np.float32)
    data = tmp_path / "blobs.npz"
    np.savez(data, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    run = tmp_path / "run"
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "sparsekit", "train", "--parallel",
           "wasap", "--wasap-mode", "async", "--phase1-fraction", "0.5", "--dataset", str(data),
           "--hidden", "16", "--epochs", "2", "--batch-size", "50", "--threads", "1",
           "--epsilon", "4", "--out", str(run), "--no-progress", "--no-plot"]
    proc = ok(subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                             env=_env()))
    assert proc.stdout.count("sparsekit: ") == 1  # rank 0 alone prints
    assert "phase 1 async" in proc.stdout and "done: test accuracy" in proc.stdout
    # the job's rate is the worker's: the server's figure counts the same samples again
    rates = re.findall(r"phase 1 async: (\d+) samples/s \((\d+) (\d+)\)", proc.stdout)
    assert rates and all(total == worker for total, _, worker in rates), rates
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["parallel"] == "wasap" and cfg["train"]["wasap_mode"] == "async"
    assert [r["phase"] for r in json.loads((run / "history.json").read_text())] == [1, 2]
    ev = ok(subprocess.run([sys.executable, "-m", "sparsekit", "evaluate", str(run)],
                           capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=_env()))
    acc = proc.stdout.split("done: test accuracy ")[1].split("%")[0]
    assert f"accuracy {acc}%" in ev.stdout  # the checkpoint is the final, averaged model
    again = ok(subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "sparsekit", "train",
                               "--resume", str(run), "--no-progress", "--no-plot"],
                              capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=_env()))
    assert "holds a finished WASAP-SGD run" in again.stdout
    assert f"done: test accuracy {acc}%" in again.stdout
    before = (run / "config.json").read_text()
    longer = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "sparsekit", "train",
                             "--resume", str(run), "--epochs", "4", "--no-progress", "--no-plot"],
                            capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=_env())
    assert longer.returncode != 0 and "cannot train further" in longer.stderr
    assert (run / "config.json").read_text() == before  # the folder still says 2 epochs
