"""Kernel backends: the protocol (:mod:`.base`), the registry (:mod:`.registry`) and host
helpers (:mod:`.host`).  The CPU and GPU implementations live in ``sparsekit._cython`` and
``sparsekit._cuda`` and are imported only when first selected."""

from .base import Backend
from .registry import available_backends, get_backend, register_backend, use_backend

__all__ = ["Backend", "available_backends", "get_backend", "register_backend", "use_backend"]
