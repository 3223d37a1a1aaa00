"""Whether a training run fits, asked before anything is allocated: host memory and GPU memory.

``train()`` calls :func:`check_memory` first.  On the host it compares the part of the
:func:`~sparsekit.training.memory_estimate.estimate_memory` peak not yet resident (the data and an
already built model are) with ``memory_limit`` or the machine's available memory.  On the GPU
backend it also applies ``gpu_memory_limit`` to CuPy's memory pool (:func:`gpu_memory_limit`, so
a run behaves as on a 4 GiB card even on a larger one) and compares the device estimate, with
:data:`GPU_HEADROOM` to spare, with that limit or the device's free memory
(:func:`check_gpu_memory`).  A run that cannot fit is refused with a ``ValueError`` that names
the largest part and what to lower, instead of failing mid-epoch.

Nothing here imports CuPy unless the run is on the GPU backend.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from .memory_estimate import METHODS, MemoryEstimate, estimate_memory, format_bytes

#: Share added to a GPU estimate for the memory pool's block rounding and fragmentation.
GPU_HEADROOM = 1.15

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value, name: str = "memory_limit") -> int | float:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4 GB"``, ``"512M"``, or a fraction ``"80%"``.

    Returns an int (bytes) or, for a percentage, a float in (0, 1] (a fraction of the device's
    memory).  ``K/M/G/T`` alone are binary (GiB), ``KB/MB/GB/TB`` decimal.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size like '4GiB', got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 bytes, got {value}")
        return int(value)
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt]?i?b?)", text)
    if not match or match.group(2) not in _UNITS and match.group(2) != "%":
        raise ValueError(f"{name} must be a size like '4GiB', '512MB' or '80%', got {value!r}")
    number = float(match.group(1))
    if match.group(2) == "%":
        if not 0 < number <= 100:
            raise ValueError(f"{name} percentage must lie in (0, 100], got {value!r}")
        return number / 100
    size = int(number * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {value!r}")
    return size


# --- the host ---------------------------------------------------------------------------------
def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def available_memory() -> int:
    """Bytes the system can give this process now (psutil, else /proc/meminfo, else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def resident_memory() -> int:
    """This process's resident bytes now."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the lifetime peak is the best cheap stand-in
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_resident_memory() -> int:
    """This process's peak resident bytes since it started (``VmHWM``).

    ``ru_maxrss`` is not used on Linux: after ``exec`` it still carries the peak of the image
    that was replaced, so a child started by a large process (pytest after a huge-layer test)
    would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident_model_bytes(model) -> int:
    """Bytes of a built model's arrays already in memory (momentum pages come at first use)."""
    return sum(layer.w.indptr.nbytes + layer.w.indices.nbytes + layer.w.data.nbytes
               + layer.b.nbytes for layer in model.layers)


def check_memory(model_or_sizes, backend=None, memory_limit=None, *,
                 gpu_memory_limit=None, epsilon: float = 20.0, batch_size: int = 128,
                 eval_batch_size: int = 4096, method="set", dtype="float32",
                 evolve_output: bool = False, evolve_every: int | None = None,
                 gamma: float = 1.0, n_train: int | None = None,
                 n_test: int | None = None, state_slots: int = 1,
                 forward_density: float | None = None,
                 backward_density: float | None = None) -> MemoryEstimate | None:
    """Refuse, before anything is allocated, a run whose host peak cannot fit; GPU runs are
    also checked against the device (see :func:`check_gpu_memory`).

    The data and an already built model are resident when this runs, so the part of the peak
    still to come (``n_train``/``n_test`` cap the evaluation chunk) is compared with what is
    left: ``memory_limit`` (bytes, ``"16GiB"``, or ``"80%"`` of physical memory) minus this
    process's resident memory, or, without a limit, the machine's available memory.  Returns
    the host estimate (None for a resumed run, whose model is not known yet).
    """
    # a method the estimate does not know (a user's GrowthMethod) is estimated as SET
    name = method if isinstance(method, str) and method in METHODS else "set"
    check_gpu_memory(model_or_sizes, backend, gpu_memory_limit, epsilon=epsilon,
                     batch_size=batch_size, eval_batch_size=eval_batch_size, dtype=dtype,
                     evolve_output=evolve_output, state_slots=state_slots, method=name,
                     forward_density=forward_density, backward_density=backward_density)
    if model_or_sizes is None:
        return None
    from ..backends import get_backend

    be = getattr(model_or_sizes, "backend", None) or get_backend(backend)
    on_cpu = be.name == "cpu"
    est = estimate_memory(model_or_sizes, epsilon=epsilon, batch_size=batch_size,
                          eval_batch_size=eval_batch_size, method=name, dtype=dtype,
                          evolve_output=evolve_output, evolve_every=evolve_every, gamma=gamma,
                          n_train=n_train, n_test=n_test, baseline=0,
                          state_slots=state_slots, forward_density=forward_density,
                          backward_density=backward_density)
    if not on_cpu:  # the host holds only batches and evaluation chunks
        est = MemoryEstimate(0, 0, 0, est.evaluate, est.connections, 0, 0, "cpu")
    built = hasattr(model_or_sizes, "layers") and on_cpu
    need = est.peak - est.data - (_resident_model_bytes(model_or_sizes) if built else 0)
    if memory_limit is not None:
        limit = parse_bytes(memory_limit, "memory_limit")
        if isinstance(limit, float):
            limit = int(limit * physical_memory())
        held = resident_memory()
        available = limit - held
        what = (f"memory_limit {format_bytes(limit)} less the {format_bytes(held)} this "
                "process holds")
    else:
        available, what = available_memory(), "the memory available on this machine"
    if need > available:
        raise ValueError(
            f"the run does not fit in memory: it needs {format_bytes(need)} more than it holds "
            f"now ({est.describe()}), but {what} is {format_bytes(max(available, 0))}. "
            f"{est.advice()}, or raise memory_limit (--memory-limit)")
    return est


# --- the GPU ----------------------------------------------------------------------------------
def gpu_memory_limit(limit) -> int:
    """Cap CuPy's default memory pool at ``limit`` (bytes, ``"4GiB"`` or ``"80%"``).

    ``None`` or 0 lifts the cap.  Returns the previous limit in bytes (0 = none), so a caller can
    restore it.  The cap applies to the current device and stays for the process; allocations
    beyond it raise ``cupy.cuda.memory.OutOfMemoryError``.
    """
    from .. import _compat

    if not _compat.has_cupy_gpu:
        raise RuntimeError(
            f"gpu_memory_limit needs a usable GPU: {_compat.gpu_unavailable_reason}")
    pool = _compat.cupy.get_default_memory_pool()
    previous = int(pool.get_limit())
    if limit is None or (isinstance(limit, (int, np.integer)) and limit == 0):
        pool.set_limit(size=0)
        return previous
    parsed = parse_bytes(limit, "gpu_memory_limit")
    if isinstance(parsed, float):
        pool.set_limit(fraction=parsed)
    else:
        pool.set_limit(size=parsed)
    return previous


def gpu_available_memory() -> tuple[int, str]:
    """What a run may use on the current device, and what that is: the pool limit, else the
    device's free memory (plus what the pool holds but does not use)."""
    from .._compat import cupy

    pool = cupy.get_default_memory_pool()
    held = int(pool.total_bytes())  # already reserved by the pool, reusable by this run
    limit = int(pool.get_limit())
    if limit > 0:
        return limit, "gpu_memory_limit"
    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free) + held - int(pool.used_bytes()), "the device's free memory"


def check_gpu_memory(model_or_sizes, backend, limit=None, *, epsilon: float = 20.0,
                     batch_size: int = 128, eval_batch_size: int = 4096, dtype="float32",
                     evolve_output: bool = False, state_slots: int = 1,
                     method: str = "set", forward_density: float | None = None,
                     backward_density: float | None = None) -> MemoryEstimate | None:
    """Apply ``limit`` to the GPU pool and refuse, before anything is allocated, a run that
    cannot fit on the device.

    Does nothing (returns None) unless the run is on the GPU backend: a ``gpu_memory_limit``
    given to a run that ``backend="auto"`` put on the CPU is ignored.  Otherwise sets the pool
    limit (when ``limit`` is given), estimates the run's device peak and raises ValueError when
    ``peak * GPU_HEADROOM`` exceeds the limit, or the device's free memory without one.
    """
    from ..backends import get_backend

    be = getattr(model_or_sizes, "backend", None) or get_backend(backend)
    # A GpuBackend exists only once its module is imported: looking the module up instead of
    # importing it keeps CPU runs from importing CuPy.
    cuda = sys.modules.get("sparsekit._cuda.backend")
    if cuda is None or not isinstance(be, cuda.GpuBackend):
        return None
    if limit is not None:
        gpu_memory_limit(limit)
    if model_or_sizes is None:
        return None
    est = estimate_memory(model_or_sizes, epsilon=epsilon, batch_size=batch_size,
                          eval_batch_size=eval_batch_size, dtype=dtype,
                          evolve_output=evolve_output, device="gpu",
                          state_slots=state_slots,
                          method=method,
                          forward_density=forward_density,
                          backward_density=backward_density)
    available, what = gpu_available_memory()
    # Without a pool limit, a model already built holds its persistent arrays outside the free
    # memory measured; with one, the limit caps them too.
    built = hasattr(model_or_sizes, "layers") and what != "gpu_memory_limit"
    need = est.peak - (est.persistent if built else 0)
    if need * GPU_HEADROOM > available:
        raise ValueError(
            f"the model does not fit in GPU memory: it needs {est.describe()}, plus "
            f"{100 * (GPU_HEADROOM - 1):.0f}% headroom, but {what} is {format_bytes(available)}. "
            "Lower batch_size or eval_batch_size, epsilon or the layer sizes, raise "
            "gpu_memory_limit, or train on the CPU backend")
    return est


__all__ = ["GPU_HEADROOM", "available_memory", "check_gpu_memory", "check_memory",
           "gpu_available_memory", "gpu_memory_limit", "parse_bytes", "peak_resident_memory",
           "physical_memory", "resident_memory"]
