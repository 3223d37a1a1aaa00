"""Every optional import lives here, with ``has_*`` flags.

``has_cupy_gpu`` is true only when CuPy imports *and* a CUDA device answers, so "CuPy installed
but no GPU" counts as no GPU.
"""

from __future__ import annotations

import importlib.util

try:  # pragma: no cover - depends on the machine
    import cupy
    import cupyx
    import cupyx.scipy.sparse

    has_cupy = True
except Exception:  # ImportError, or a CUDA library that fails to load
    cupy = None
    cupyx = None
    has_cupy = False


def _probe_gpu() -> tuple[bool, str]:
    if not has_cupy:
        return False, "CuPy is not installed"
    try:  # pragma: no cover - depends on the machine
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover
        return False, f"CuPy is installed but CUDA is unusable ({exc})"
    if n < 1:  # pragma: no cover
        return False, "CuPy is installed but no CUDA device is visible"
    return True, ""  # pragma: no cover


has_cupy_gpu, gpu_unavailable_reason = _probe_gpu()

# mpi4py initialises MPI when imported, so it is only looked up here and imported on first use
# (sparsekit.parallel.comm.import_mpi); plain `import sparsekit` never starts MPI.
has_mpi = importlib.util.find_spec("mpi4py") is not None

try:
    import tqdm

    has_tqdm = True
except ImportError:  # pragma: no cover
    tqdm = None
    has_tqdm = False

# Looked up, not imported: `import sparsekit` stays free of scikit-learn (and its import time);
# sparsekit.sklearn and the digits loader import it when used.
has_sklearn = importlib.util.find_spec("sklearn") is not None


def import_matplotlib():
    """Import matplotlib with a headless backend, or raise a clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return plt
