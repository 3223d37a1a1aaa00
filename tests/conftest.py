"""Shared fixtures: one suite over every backend.

``backend`` runs a test on each kernel backend ("cpu", and "gpu" where CuPy sees a GPU).
``topo_backend`` adds a "vanilla" twin of each, whose topology and elementwise methods are the
generic ``xp`` code of :class:`sparsekit.backends.Backend`, so the fallback every new backend
starts from is checked against the same oracle.

GPU tests skip without CuPy/GPU, and fail instead when ``SPARSEKIT_REQUIRE_GPU=1``, so a GPU run
can never pass by skipping.  Tests marked ``slow`` run only with ``--slow``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import reference` in any import mode

from sparsekit.backends import Backend, get_backend  # noqa: E402

# Topology/elementwise methods a backend may override; the vanilla twin uses Backend's own.
GENERIC_METHODS = ("select", "contains", "sample_absent", "rebuild", "bias_act_dropout")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run tests marked slow (huge layers, long runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def gpu_required() -> bool:
    return os.environ.get("SPARSEKIT_REQUIRE_GPU", "") == "1"


def require_gpu() -> None:
    """Skip (or, with SPARSEKIT_REQUIRE_GPU=1, fail) when no usable GPU is present."""
    from sparsekit import _compat

    if _compat.has_cupy_gpu:
        return
    msg = f"gpu backend unavailable: {_compat.gpu_unavailable_reason}"
    if gpu_required():
        pytest.fail(f"SPARSEKIT_REQUIRE_GPU=1 but the {msg}", pytrace=False)
    pytest.skip(msg)


def vanilla(backend: Backend) -> Backend:
    """A twin of ``backend`` whose GENERIC_METHODS are the base-class implementations."""
    overrides = {name: getattr(Backend, name) for name in GENERIC_METHODS}
    overrides["name"] = f"{backend.name}-vanilla"
    cls = type(f"Vanilla{type(backend).__name__}", (type(backend),), overrides)
    twin = cls.__new__(cls)
    twin.__dict__.update(backend.__dict__)  # same configuration (threads, device, ...)
    return twin


def make_backend(param: str) -> Backend:
    name, _, variant = param.partition("-")
    if name == "gpu":
        require_gpu()
    be = get_backend(name)
    return vanilla(be) if variant == "vanilla" else be


GPU = pytest.mark.gpu
BACKENDS = ["cpu", pytest.param("gpu", marks=GPU)]
TOPO_BACKENDS = ["cpu", "cpu-vanilla", pytest.param("gpu", marks=GPU),
                 pytest.param("gpu-vanilla", marks=GPU)]


# Session scope: backends are stateless, and hypothesis refuses function-scoped fixtures.
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny layers: torch's intra-op threads only spin against the kernels' on a busy machine
    (the torch tests' modules use it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> Backend:
    """Every kernel backend that can run here."""
    return make_backend(request.param)


@pytest.fixture(scope="session", params=TOPO_BACKENDS)
def topo_backend(request) -> Backend:
    """Every backend, plus its twin running the generic Backend topology/elementwise code."""
    return make_backend(request.param)
