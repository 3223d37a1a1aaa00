"""Kernel backends: the protocol (:mod:`.base`), the registry (:mod:`.registry`) and host
helpers (:mod:`.host`).  The CPU and GPU implementations live in ``sparsekit._cython`` and
``sparsekit._cuda`` and are imported only when first selected."""

from .base import Backend
from .registry import available_backends, get_backend, register_backend, use_backend

__all__ = ["Backend", "CpuBackend", "available_backends", "get_backend", "register_backend",
           "use_backend"]


def __getattr__(name):
    # The CPU backend's class (``CpuBackend(num_threads=n)``), imported on first use like the
    # backend itself.
    if name == "CpuBackend":
        from .._cython.backend import CpuBackend

        return CpuBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
