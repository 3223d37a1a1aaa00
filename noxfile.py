"""nox sessions: lint, tests_cpu, tests_gpu, tests_mpi, bench, docs.

``nox -s lint tests_cpu tests_mpi`` is the test command of README.md and CI.  On a machine whose
Python packages are preinstalled and which has no package registry (a GPU box), run a session in
the current environment with ``nox --no-venv -s tests_gpu`` (or ``-db none``).
"""

import os

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


@nox.session
def tests_mpi(session):
    """WASAP-SGD under a real mpiexec (mpi4py + the mpich wheel), and its MPI-free unit tests."""
    _install(session, "dev,mpi")
    session.run(*PYTEST, "tests/test_mpi.py", "tests/test_wasap_average.py", *session.posargs,
                env={"OMP_NUM_THREADS": "1"})


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
