"""GPU memory: a pool limit, and an estimate of what training a model needs, checked up front.

``train(..., backend="gpu", gpu_memory_limit="4GiB")`` caps CuPy's default memory pool (so the
run behaves as on a 4 GiB card, even on a larger one) and, before any weight is allocated,
compares :func:`estimate_training_memory` with the limit (or with the device's free memory when
no limit is given): a model that cannot fit is refused with a ValueError that says what takes
the space and what to change, instead of failing with an out-of-memory error mid-epoch.

The estimate follows what the GPU backend allocates (see ``GpuBackend``): per layer the CSR
arrays, the momentum, the bias and, for every layer but the first, the cached transposed index;
per training step the activations and derivatives kept for the backward pass, every layer's
gradient, the widest backward transient and the optimizer's temporaries; per SET update the
selection and rebuild buffers of the largest evolving layer; per evaluation chunk the
activations of ``eval_batch_size`` samples.  The peak is the persistent part plus the largest
of the three transients, and a model must fit with :data:`HEADROOM` to spare for the pool's
rounding and fragmentation.  Nothing here imports CuPy until a limit is applied.
"""

from __future__ import annotations

import numpy as np

from ..training.memory import MemoryEstimate, _size, estimate_memory
from ..training.memory import parse_bytes as _parse_bytes

HEADROOM = 1.15  # pool block rounding and fragmentation on top of the live arrays


def parse_bytes(value) -> int | float:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4 GB"``, ``"512M"``, or a fraction ``"80%"``
    (see :func:`sparsekit.training.memory.parse_bytes`)."""
    return _parse_bytes(value, "gpu_memory_limit")


def gpu_memory_limit(limit) -> int:
    """Cap CuPy's default memory pool at ``limit`` (bytes, ``"4GiB"`` or ``"80%"``).

    ``None`` or 0 lifts the cap.  Returns the previous limit in bytes (0 = none), so a caller can
    restore it.  The cap applies to the current device and stays for the process; allocations
    beyond it raise ``cupy.cuda.memory.OutOfMemoryError``.
    """
    from .._compat import cupy, gpu_unavailable_reason, has_cupy_gpu

    if not has_cupy_gpu:
        raise RuntimeError(f"gpu_memory_limit needs a usable GPU: {gpu_unavailable_reason}")
    pool = cupy.get_default_memory_pool()
    previous = int(pool.get_limit())
    if limit is None or (isinstance(limit, (int, np.integer)) and limit == 0):
        pool.set_limit(size=0)
        return previous
    parsed = parse_bytes(limit)
    if isinstance(parsed, float):
        pool.set_limit(fraction=parsed)
    else:
        pool.set_limit(size=parsed)
    return previous


def estimate_training_memory(model_or_sizes, *, epsilon: float = 20.0, batch_size: int = 128,
                             eval_batch_size: int = 4096, dtype="float32",
                             evolve_output: bool = False) -> MemoryEstimate:
    """Device bytes needed to train ``model_or_sizes`` (a SparseMLP or layer sizes).

    :func:`sparsekit.training.memory.estimate_memory` with ``device="gpu"``: one estimator serves the
    host and the device.
    """
    return estimate_memory(model_or_sizes, epsilon=epsilon, batch_size=batch_size,
                           eval_batch_size=eval_batch_size, dtype=dtype,
                           evolve_output=evolve_output, device="gpu")


def check_training_memory(model_or_sizes, backend, limit=None, *, epsilon: float = 20.0,
                          batch_size: int = 128, eval_batch_size: int = 4096, dtype="float32",
                          evolve_output: bool = False) -> MemoryEstimate | None:
    """Apply ``limit`` and refuse, before anything is allocated, a run that cannot fit.

    Does nothing (returns None) unless the run is on the GPU backend: a ``gpu_memory_limit``
    given to a run that ``backend="auto"`` put on the CPU is ignored.  Otherwise sets the pool
    limit (when ``limit`` is given), estimates the run's peak and raises ValueError when
    ``peak * HEADROOM`` exceeds the limit, or the device's free memory without one.
    """
    from ..backends import get_backend
    from .backend import GpuBackend

    be = getattr(model_or_sizes, "backend", None) or get_backend(backend)
    if not isinstance(be, GpuBackend):
        return None
    if limit is not None:
        gpu_memory_limit(limit)
    if model_or_sizes is None:
        return None
    est = estimate_training_memory(model_or_sizes, epsilon=epsilon, batch_size=batch_size,
                                   eval_batch_size=eval_batch_size, dtype=dtype,
                                   evolve_output=evolve_output)
    available, what = available_bytes()
    # Without a pool limit, a model already built holds its persistent arrays outside the free
    # memory measured; with one, the limit caps them too.
    built = hasattr(model_or_sizes, "layers") and what != "gpu_memory_limit"
    need = est.peak - (est.persistent if built else 0)
    if need * HEADROOM > available:
        raise ValueError(
            f"the model does not fit in GPU memory: it needs {est.describe()}, plus "
            f"{100 * (HEADROOM - 1):.0f}% headroom, but {what} is {_size(available)}. "
            "Lower batch_size or eval_batch_size, epsilon or the layer sizes, raise "
            "gpu_memory_limit, or train on the CPU backend")
    return est


def available_bytes() -> tuple[int, str]:
    """What the run may use on the current device: the pool limit, else the free memory."""
    from .._compat import cupy

    pool = cupy.get_default_memory_pool()
    held = int(pool.total_bytes())  # already reserved by the pool, reusable by this run
    limit = int(pool.get_limit())
    if limit > 0:
        return limit, "gpu_memory_limit"
    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free) + held - int(pool.used_bytes()), "the device's free memory"
