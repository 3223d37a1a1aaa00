"""nox sessions: lint, tests_cpu, tests_gpu, tests_mpi, bench, docs.

``nox -s lint tests_cpu tests_mpi`` is the test command of README.md and CI.  On a machine whose
Python packages are preinstalled and which has no package registry (a GPU box), run a session in
the current environment with ``nox --no-venv -s tests_gpu`` (or ``-db none``).
"""

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "tests_cpu"]
nox.options.reuse_existing_virtualenvs = True

PYTEST = ["python", "-m", "pytest", "-q"]


def _install(session, extras="dev"):
    if session.venv_backend != "none":
        session.install("-e", f".[{extras}]")


@nox.session
def lint(session):
    """ruff over the package, tests and benchmarks."""
    if session.venv_backend != "none":
        session.install("ruff")
    session.run("ruff", "check", "sparsekit", "tests", "benchmarks", "examples", "docs",
                "noxfile.py", "setup.py")


#: PyTorch for sparsekit.torch's tests, pinned: a bare "torch" takes a CUDA build of several GB
#: on Linux, while this release's CPU build lies in the wheel cache of the project's machines.
TORCH = "torch==2.13.0"


@nox.session
def tests_cpu(session):
    """The whole suite on the CPU backend, sparsekit.torch included (GPU cases skip; MPI cases
    run if mpi4py exists)."""
    _install(session)
    if session.venv_backend != "none":
        session.install(TORCH)
    session.run(*PYTEST, "-m", "not gpu", *session.posargs)


def _newest_python():
    """The newest CPython 3.12 or later on this machine that starts, as a path; None (nox's own
    Python) where there is none.

    tests_mpi runs there, so that CI also builds sparsekit against the newest NumPy, which only
    those Pythons get: NumPy 2.5 changed the Cython declarations the kernels use (it dropped
    ``ufunc.types``), and a build on 3.11 never saw it.  pyenv's versions count even when not
    selected (their shims then refuse to start, so each candidate is run once)."""
    found = [shutil.which(f"python3.{minor}") for minor in range(20, 11, -1)]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found += glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))
    best = None
    for exe in filter(None, found):
        try:
            out = subprocess.run([exe, "-c", "import sys, venv; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        version = tuple(int(v) for v in out.stdout.split()) if out.returncode == 0 else ()
        if len(version) == 2 and version >= (3, 12) and (best is None or version > best[0]):
            best = (version, exe)
    return best[1] if best else None


@nox.session(python=_newest_python())
def tests_mpi(session):
    """WASAP-SGD under a real mpiexec (mpi4py + the mpich wheel) and its MPI-free unit tests,
    on the newest Python found (see ``_newest_python``); there also the kernels against their
    oracles, the step plan that calls NumPy's own exp and log loops, and the import checks, so
    that the build against the newest NumPy is tested too (those files add about 15 s)."""
    _install(session, "dev,mpi")
    session.run(*PYTEST, "tests/test_mpi.py", "tests/test_wasap_average.py",
                "tests/test_kernels.py", "tests/test_step_plan.py", "tests/test_mlp_pass.py",
                "tests/test_import.py", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session
def tests_gpu(session):
    """GPU cases only; fails (never skips) when no usable GPU is found."""
    _install(session, "dev,gpu")
    session.run(*PYTEST, "-m", "gpu", *session.posargs,
                env={"SPARSEKIT_REQUIRE_GPU": "1"})


@nox.session
def bench(session):
    """Kernel benchmark side by side with SciPy, PyTorch and NumPy dense."""
    _install(session, "dev,bench")
    session.run("python", "benchmarks/kernels.py", *session.posargs,
                env={"PYTHONUNBUFFERED": "1", **{k: v for k, v in os.environ.items()
                                                 if k.startswith("SPARSEKIT_")}})


@nox.session
def docs(session):
    """The Sphinx user guide and API reference, built to docs/_build/html (nitpicky warnings
    are printed, not fatal)."""
    _install(session, "docs,sklearn")
    session.run("sphinx-build", "-b", "html", "-q", "docs", "docs/_build/html", *session.posargs)
