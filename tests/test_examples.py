"""Every example in examples/ runs in its fast mode; one whose feature (or data) is missing here
is skipped with the reason, never imitated."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sparsekit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXIT_UNAVAILABLE = 3  # examples/_common.py


def fashion_mnist_missing() -> str:
    from sparsekit.io.datasets import _find_fashion_mnist

    try:
        _find_fashion_mnist(None)
    except FileNotFoundError as exc:
        return str(exc)
    return ""


def gse_missing() -> str:
    missing = {"set", "gse"} - set(sparsekit.available_methods())
    return f"growth methods {sorted(missing)} are not implemented yet" if missing else ""


def sklearn_missing() -> str:
    return "" if sparsekit._compat.has_sklearn else "scikit-learn is not installed"


def torch_missing() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("torch") else "PyTorch is not installed"


def mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpi_missing() -> str:
    if mpiexec() is None:
        return "mpiexec not found (pip install 'sparsekit[mpi]')"
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"],
                           capture_output=True, text=True, timeout=60)
    return "" if probe.returncode == 0 else f"mpi4py unusable: {probe.stderr.strip()[-200:]}"


CASES = {
    "fashion_mnist_set": (fashion_mnist_missing, [], "test accuracy"),
    "gse_vs_set": (gse_missing, [], "gse "),
    "microarray": (sklearn_missing, [], "cross-validated accuracy"),
    "microarray-sparse": (sklearn_missing, ["--sparse"], "sparse input"),
    "mpi_wasap": (mpi_missing, [], "WASAP (sync): test accuracy"),
    "torch_char_transformer": (torch_missing, ["--threads", "1"], "sparse (gse)"),
    "torch_fashion_mnist": (lambda: torch_missing() or fashion_mnist_missing(),
                            ["--threads", "1"], "epoch 2: test accuracy"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_in_fast_mode(name, tmp_path):
    missing, extra, expected = CASES[name]
    why = missing()
    if why:
        pytest.skip(f"examples/{name}: {why}")
    script = EXAMPLES / (name.split("-")[0] + ".py")
    cmd = [sys.executable, str(script), "--fast", *extra]
    if name == "mpi_wasap":
        cmd = [mpiexec(), "-n", "2", *cmd]
    env = {**os.environ, "SPARSEKIT_EXAMPLES_FAST": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode != EXIT_UNAVAILABLE, f"the example says it cannot run: {r.stderr}"
    assert r.returncode == 0, r.stderr[-3000:]
    assert expected in r.stdout, r.stdout[-3000:]


def test_every_example_is_covered():
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == {name.split("-")[0] for name in CASES}
