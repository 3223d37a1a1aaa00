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

import re
from dataclasses import dataclass

import numpy as np

from ..csr import index_dtype_for
from ..init import er_connections

HEADROOM = 1.15  # pool block rounding and fragmentation on top of the live arrays
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value) -> int | float:
    """Bytes from ``4294967296``, ``"4GiB"``, ``"4 GB"``, ``"512M"``, or a fraction ``"80%"``.

    Returns an int (bytes) or, for a percentage, a float in (0, 1] (a fraction of the device's
    memory).  ``K/M/G/T`` alone are binary (GiB), ``KB/MB/GB/TB`` decimal.
    """
    if isinstance(value, bool):
        raise ValueError(f"gpu_memory_limit must be a size like '4GiB', got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"gpu_memory_limit must be > 0 bytes, got {value}")
        return int(value)
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt]?i?b?)", text)
    if not match or match.group(2) not in _UNITS and match.group(2) != "%":
        raise ValueError(f"gpu_memory_limit must be a size like '4GiB', '512MB' or '80%', "
                         f"got {value!r}")
    number = float(match.group(1))
    if match.group(2) == "%":
        if not 0 < number <= 100:
            raise ValueError(f"gpu_memory_limit percentage must lie in (0, 100], got {value!r}")
        return number / 100
    size = int(number * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"gpu_memory_limit must be > 0 bytes, got {value!r}")
    return size


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


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of device memory a training run needs (see the module docstring)."""

    persistent: int
    step: int
    evolve: int
    evaluate: int
    connections: int

    @property
    def peak(self) -> int:
        return self.persistent + max(self.step, self.evolve, self.evaluate)

    def describe(self) -> str:
        return (f"about {_size(self.peak)} at peak: {_size(self.persistent)} for "
                f"{self.connections:,} connections (values, indices, momentum, transposed "
                f"indices) + max({_size(self.step)} per training step, {_size(self.evolve)} per "
                f"topology update, {_size(self.evaluate)} per evaluation chunk)")


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _layers(model_or_sizes, epsilon: float) -> list[tuple[int, int, int]]:
    """``(n_in, n_out, nnz)`` per layer of a model or of layer sizes at ``epsilon``."""
    layers = getattr(model_or_sizes, "layers", None)
    if layers is not None:
        return [(layer.w.shape[1], layer.w.shape[0], layer.w.nnz) for layer in layers]
    sizes = [int(s) for s in model_or_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer_sizes needs >= 2 positive sizes, got {list(model_or_sizes)}")
    return [(n_in, n_out, er_connections(n_out, n_in, epsilon))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def estimate_training_memory(model_or_sizes, *, epsilon: float = 20.0, batch_size: int = 128,
                             eval_batch_size: int = 4096, dtype="float32",
                             evolve_output: bool = False) -> MemoryEstimate:
    """Device bytes needed to train ``model_or_sizes`` (a SparseMLP or layer sizes).

    Parameters
    ----------
    model_or_sizes : SparseMLP or sequence of int
        A built model (its actual connection counts) or ``[n_features, hidden..., n_classes]``
        (Erdős–Rényi counts at ``epsilon``).
    epsilon, batch_size, eval_batch_size, dtype
        As in :func:`sparsekit.train`.
    evolve_output : bool
        Whether the output layer evolves too (its rebuild buffers then count).
    """
    layers = _layers(model_or_sizes, epsilon)
    v = np.dtype(getattr(model_or_sizes, "dtype", dtype)).itemsize
    b, e = int(batch_size), int(eval_batch_size)
    persistent = 0
    for k, (n_in, n_out, nnz) in enumerate(layers):
        i = index_dtype_for(nnz, (n_out, n_in)).itemsize
        persistent += (n_out + 1) * i + nnz * (i + 2 * v) + 2 * n_out * v
        if k:  # the first layer's backward needs no dx, hence no transposed index
            persistent += (n_in + 1) * i + 2 * nnz * i
    widths = [layers[0][0]] + [n_out for _, n_out, _ in layers]
    hidden = sum(widths[1:-1])
    # Kept for the backward pass: the input batch, and each hidden layer's activation and
    # derivative; the softmax's probabilities and gradient are classes x batch.
    acts = b * v * (widths[0] + 2 * hidden + 3 * widths[-1])
    grads = sum(nnz * v + n_out * v for _, n_out, nnz in layers)
    widest = max((n_in + 2 * n_out) * b * v for n_in, n_out, _ in layers)
    optimizer = max(2 * nnz * v for _, _, nnz in layers)
    step = acts + grads + widest + optimizer
    evolving = layers if evolve_output or len(layers) == 1 else layers[:-1]
    # keep mask, sign indices, the sorted keys and CuPy's sort buffer, the rebuild's prefix
    # sums, source map, new indices, values and momentum.
    evolve = max(nnz * (1 + 8 + 3 * v + 8 + 8 + index_dtype_for(nnz, (n_out, n_in)).itemsize
                        + 2 * v) for n_in, n_out, nnz in evolving)
    evaluate = e * v * (widths[0] + 2 * hidden + widths[-1] + max(widths[1:]))
    return MemoryEstimate(int(persistent), int(step), int(evolve), int(evaluate),
                          int(sum(nnz for _, _, nnz in layers)))


def check_training_memory(model_or_sizes, backend, limit=None, *, epsilon: float = 20.0,
                          batch_size: int = 128, eval_batch_size: int = 4096, dtype="float32",
                          evolve_output: bool = False) -> MemoryEstimate | None:
    """Apply ``limit`` and refuse, before anything is allocated, a run that cannot fit.

    Does nothing (returns None) unless the run is on the GPU backend: a ``gpu_memory_limit``
    given to a run that ``backend="auto"`` put on the CPU is ignored.  Otherwise sets the pool
    limit (when ``limit`` is given), estimates the run's peak and raises ValueError when
    ``peak * HEADROOM`` exceeds the limit, or the device's free memory without one.
    """
    from ..backend import get_backend
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
