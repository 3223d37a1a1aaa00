"""Backend registry and selection: ``get_backend``, ``use_backend``, ``register_backend``."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

from .base import Backend

_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "sparsekit_backend", default=None)


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``get_backend(name)`` build a backend with ``factory()`` (once, lazily)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def available_backends() -> list[str]:
    """Names of the registered backends that can run here."""
    from .._compat import has_cupy_gpu

    return [n for n in _FACTORIES if n != "gpu" or has_cupy_gpu]


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return a backend by name: ``"cpu"``, ``"gpu"`` or ``"auto"``.

    ``None`` means the backend selected by :func:`use_backend`, else the ``SPARSEKIT_BACKEND``
    environment variable, else ``"cpu"``.  ``"auto"`` picks the GPU when one is usable.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        current = _current.get()
        if current is not None:
            return current
        name = os.environ.get("SPARSEKIT_BACKEND", "cpu")
    name = str(name).lower()
    if name == "auto":
        from .._compat import has_cupy_gpu

        name = "gpu" if has_cupy_gpu and "gpu" in _FACTORIES else "cpu"
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {sorted(_FACTORIES) + ['auto']}"
        )
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Context manager: make ``name`` the default backend inside the block."""
    backend = get_backend(name)
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def _make_cpu() -> Backend:
    from .._cython.backend import CpuBackend

    return CpuBackend()


def _make_gpu() -> Backend:
    from .._compat import gpu_unavailable_reason, has_cupy_gpu

    if not has_cupy_gpu:
        raise RuntimeError(
            f"the gpu backend is unavailable: {gpu_unavailable_reason}. Install CuPy for your "
            "CUDA version (pip install 'sparsekit[gpu-cuda12]' or 'sparsekit[gpu-cuda13]') on a "
            "machine with an NVIDIA GPU, or use backend='cpu'"
        )
    from .._cuda.backend import GpuBackend  # pragma: no cover - needs a GPU

    return GpuBackend()  # pragma: no cover


register_backend("cpu", _make_cpu)
register_backend("gpu", _make_gpu)
