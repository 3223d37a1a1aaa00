"""Every optional dependency of sparsekit, resolved on first use.

``import sparsekit`` imports none of CuPy, PyTorch, scikit-learn, mpi4py, matplotlib or tqdm and
asks no CUDA driver anything: a CPU run should neither pay for a CUDA installation nor break on
a faulty one.  The names below are module attributes computed the first time they are read
(:pep:`562`) and then kept as ordinary globals, so later reads are plain lookups and tests can
``monkeypatch.setattr`` them.

``cupy``
    The module, or None when CuPy cannot be imported.
``has_cupy``
    CuPy imports.
``has_cupy_gpu``
    CuPy imports *and* a CUDA device answers: "CuPy installed but no GPU" counts as no GPU.
``gpu_unavailable_reason``
    Why ``has_cupy_gpu`` is false ("" when it is true).
``has_mpi``
    mpi4py is installed.  Looked up, not imported: importing mpi4py starts MPI, which only
    :func:`sparsekit.parallel.comm.import_mpi` may do.
``has_sklearn``
    scikit-learn is installed (looked up, not imported).
``tqdm``
    The progress-bar module, or None when it cannot be imported.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def _cupy() -> dict[str, Any]:
    try:  # pragma: no cover - depends on the machine
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return {"cupy": None, "has_cupy": False}
    return {"cupy": cupy, "has_cupy": True}  # pragma: no cover


def _gpu() -> dict[str, Any]:
    this = sys.modules[__name__]
    if not this.has_cupy:
        return {"has_cupy_gpu": False, "gpu_unavailable_reason": "CuPy is not installed"}
    try:  # pragma: no cover - depends on the machine
        n = this.cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover
        reason = f"CuPy is installed but CUDA is unusable ({exc})"
        return {"has_cupy_gpu": False, "gpu_unavailable_reason": reason}
    if n < 1:  # pragma: no cover
        reason = "CuPy is installed but no CUDA device is visible"
        return {"has_cupy_gpu": False, "gpu_unavailable_reason": reason}
    return {"has_cupy_gpu": True, "gpu_unavailable_reason": ""}  # pragma: no cover


def _tqdm() -> dict[str, Any]:
    try:
        import tqdm
    except ImportError:  # pragma: no cover - a declared dependency
        tqdm = None
    return {"tqdm": tqdm}


def _installed(name: str, module: str) -> Callable[[], dict[str, Any]]:
    return lambda: {name: importlib.util.find_spec(module) is not None}


# attribute -> the resolver that computes it (and the attributes resolved along with it)
_RESOLVERS: dict[str, Callable[[], dict[str, Any]]] = {
    "cupy": _cupy, "has_cupy": _cupy,
    "has_cupy_gpu": _gpu, "gpu_unavailable_reason": _gpu,
    "tqdm": _tqdm,
    "has_mpi": _installed("has_mpi", "mpi4py"),
    "has_sklearn": _installed("has_sklearn", "sklearn"),
}


def __getattr__(name: str) -> Any:
    resolver = _RESOLVERS.get(name)
    if resolver is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for key, value in resolver().items():
        # setdefault: a value set meanwhile (a test's monkeypatch) wins over the resolved one
        globals().setdefault(key, value)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_RESOLVERS))


def missing_extra(package: str, extra: str, feature: str) -> ImportError:
    """The error for ``feature`` used without its optional dependency ``package``.

    Parameters
    ----------
    package : str
        What is missing, as a person would name it (``"scikit-learn >= 1.6"``).
    extra : str
        The sparsekit extra that installs it (``pip install 'sparsekit[extra]'``).
    feature : str
        What needed it (``"sparsekit.torch"``).

    Returns
    -------
    ImportError
        To be raised ``from`` the original ImportError.
    """
    return ImportError(f"{feature} needs {package}: pip install 'sparsekit[{extra}]'")


def import_matplotlib():
    """Import matplotlib with a headless backend, or raise a clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return plt
