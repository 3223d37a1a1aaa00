"""Memory a training run needs, predicted before anything is allocated, and the up-front refusal.

:func:`estimate_memory` follows what :func:`sparsekit.train` allocates on the backend's device
(``device="cpu"``: the host process's peak RSS; ``device="gpu"``: the GPU memory pool, see
:mod:`sparsekit._cuda.memory`).  The peak is

    baseline + data + persistent + max(step, evolve, evaluate)

* **persistent** — per layer the CSR arrays (values, indices, row pointers), the momentum, the
  bias and its momentum, and the transposed column index the backward kernels cache (two
  index arrays per connection): 20 bytes per connection at float32 / int32 on the CPU.
* **step** — one optimizer step: the input batch and, for every hidden layer, its activation
  and its derivative (kept for the backward pass), every layer's weight gradient (they live
  until the update), and the widest backward transient (a layer's output gradient and its
  input gradient).  Growth methods that score candidates keep every layer's output gradient too.
* **evolve** — the largest evolving layer's topology update (SET: magnitude selection, the
  sampled positions and the rebuilt arrays: about :data:`SET_BYTES_PER_CONNECTION` bytes per
  connection, measured), plus the step's activations when updates happen inside an epoch.
* **evaluate** — one evaluation chunk of ``eval_batch_size`` samples streamed through the
  network (only the current layer's input, pre-activation, activation and derivative live).
* **heap** — while a step's arrays are below glibc's mmap ceiling, freed blocks stay resident
  for reuse: an allowance of :data:`HEAP_FRACTION` of the step's activations (measured).
* **data** — the training and test arrays (float32 features, int64 labels) when their sizes are
  given; **baseline** — the interpreter, NumPy and the extension modules (:data:`BASELINE`).

:func:`check_memory` is what ``train()`` calls: it compares the part of the peak not yet
resident (the data and an already built model are) with ``memory_limit`` or the machine's
available memory and raises a ``ValueError`` naming the largest part and what to lower.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ..nn.csr import index_dtype_for
from ..nn.init import er_connections

#: Resident bytes of a Python process that imported NumPy and sparsekit (measured: ~40 MiB).
BASELINE = 48 * 2**20
#: Transient bytes per connection of the largest evolving layer during a SET update (measured
#: with tracemalloc on a 2-million-connection layer: 29.8).
SET_BYTES_PER_CONNECTION = 30
#: The same for the gradient-scored methods, per connection plus per sampled candidate
#: (positions as int64, membership flags, scores, the selection's buffers): a rough allowance.
SCORED_BYTES_PER_CONNECTION = 30
SCORED_BYTES_PER_CANDIDATE = 64
#: glibc's largest dynamic mmap threshold, and the share of a step's activations that its heap
#: keeps resident below it (measured, see :func:`estimate_memory`).
MMAP_CEILING = 32 * 2**20
HEAP_FRACTION = 0.8
#: Methods whose evolve transient is modelled; "static" never evolves.
METHODS = ("set", "static", "gse", "topkast", "rigl")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs on one device (see the module docstring)."""

    persistent: int
    step: int
    evolve: int
    evaluate: int
    connections: int
    data: int = 0
    baseline: int = 0
    device: str = "gpu"
    heap: int = 0

    @property
    def transient(self) -> int:
        """The largest of the step, topology-update and evaluation transients."""
        return max(self.step, self.evolve, self.evaluate)

    @property
    def peak(self) -> int:
        return self.baseline + self.data + self.heap + self.persistent + self.transient

    def parts(self) -> dict[str, int]:
        """Every part by name, for reports and JSON."""
        return {"peak": self.peak, "baseline": self.baseline, "data": self.data,
                "heap": self.heap, "persistent": self.persistent, "step": self.step, "evolve": self.evolve,
                "evaluate": self.evaluate, "connections": self.connections}

    def describe(self) -> str:
        fixed = self.baseline + self.data + self.heap
        fixed = (f"{_size(fixed)} for the interpreter, the data and the allocator's free "
                 "blocks + " if fixed else "")
        return (f"about {_size(self.peak)} at peak: {fixed}{_size(self.persistent)} for "
                f"{self.connections:,} connections (values, indices, momentum, transposed "
                f"indices) + max({_size(self.step)} per training step, {_size(self.evolve)} per "
                f"topology update, {_size(self.evaluate)} per evaluation chunk)")

    def advice(self) -> str:
        """What to lower, largest part first."""
        tips = {"persistent": "epsilon or the layer sizes (the connections)",
                "step": "batch_size (the step keeps every hidden activation)",
                "evolve": "epsilon or the width of the largest evolving layer",
                "evaluate": "eval_batch_size"}
        ranked = sorted(tips, key=lambda k: -getattr(self, k))
        return "Lower " + ", then ".join(tips[k] for k in ranked[:2])


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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


def estimate_memory(layer_sizes, *, epsilon: float = 20.0, batch_size: int = 128,
                    eval_batch_size: int = 4096, method: str = "set", dtype="float32",
                    device: str = "cpu", evolve_output: bool = False,
                    evolve_every: int | None = None, gamma: float = 1.0,
                    n_train: int | None = None, n_test: int | None = None,
                    baseline: int | None = None) -> MemoryEstimate:
    """Bytes needed to train a sparse MLP with :func:`sparsekit.train`, predicted up front.

    Parameters
    ----------
    layer_sizes : sequence of int or SparseMLP
        ``[n_features, hidden..., n_classes]`` (Erdős–Rényi counts at ``epsilon``), or a built
        model (its actual connection counts and dtype).
    epsilon, batch_size, eval_batch_size, method, dtype, evolve_output, evolve_every
        As in :func:`sparsekit.train`.
    device : {"cpu", "gpu"}
        ``"cpu"``: the host process's peak resident memory; ``"gpu"``: the device memory pool
        (no baseline or data: the data stays on the host).
    gamma : float
        Candidates sampled per connection by the gradient-scored methods (``gse``, ``topkast``).
    n_train, n_test : int, optional
        Samples of the training and test sets, counted as float features plus int64 labels
        (None: not counted).  ``n_test`` also caps the evaluation chunk; 0 means no
        evaluation.
    baseline : int, optional
        Resident bytes before training (interpreter, libraries); default :data:`BASELINE` on
        the CPU and 0 on the GPU.

    Returns
    -------
    MemoryEstimate
        ``.peak`` in bytes and its parts.

    Examples
    --------
    >>> est = estimate_memory([784, 1000, 1000, 1000, 10])
    >>> est.connections
    125680
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if batch_size < 1 or eval_batch_size < 1:
        raise ValueError(f"batch_size and eval_batch_size must be >= 1, got {batch_size}, "
                         f"{eval_batch_size}")
    n_tr, n_te = int(n_train or 0), int(n_test or 0)
    if n_tr < 0 or n_te < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    if n_test is not None:
        eval_batch_size = min(eval_batch_size, n_te)
    layers = _layers(layer_sizes, epsilon)
    v = np.dtype(getattr(layer_sizes, "dtype", dtype)).itemsize
    idx = [index_dtype_for(nnz, (n_out, n_in)).itemsize for n_in, n_out, nnz in layers]
    b, e = int(batch_size), int(eval_batch_size)  # e = 0: no evaluation
    widths = [layers[0][0]] + [n_out for _, n_out, _ in layers]
    hidden = sum(widths[1:-1])
    evolving = layers if evolve_output or len(layers) == 1 else layers[:-1]
    scored = method in ("gse", "topkast", "rigl")
    total = sum(nnz for _, _, nnz in layers)
    if device == "gpu":
        return _gpu_estimate(layers, idx, v, b, e, widths, hidden, evolving, total)
    persistent = 0
    for (n_in, n_out, nnz), i in zip(layers, idx):
        persistent += (n_out + 1 + n_in + 1) * i + nnz * (3 * i + 2 * v) + 2 * n_out * v
    # The input batch (copied twice: gathered rows, then transposed), each hidden layer's
    # activation and derivative, and the output's logits, probabilities and gradient.
    acts = b * v * (2 * widths[0] + 2 * hidden + 3 * widths[-1])
    kept_dz = b * v * sum(widths[1:]) if scored else 0
    backward = 0
    for k in range(len(layers) - 1, -1, -1):  # gradients accumulate from the top down
        n_in, n_out, _ = layers[k]
        grads = sum(nnz * v + no * v for _, no, nnz in layers[k:])
        backward = max(backward, grads + b * v * (n_out + (n_in if k else 0)))
    forward = max(b * v * 3 * n_out for _, n_out, _ in layers)
    step = acts + kept_dz + max(forward, backward)
    evolve = 0
    if method != "static":
        per = SCORED_BYTES_PER_CONNECTION if scored else SET_BYTES_PER_CONNECTION
        cand = SCORED_BYTES_PER_CANDIDATE * gamma if scored else 0
        evolve = max(int(nnz * (per + cand)) for _, _, nnz in evolving)
        if scored or evolve_every is not None:  # updates run with the step's arrays alive
            evolve += acts + kept_dz
    evaluate = e * v * (widths[0] + max(n_in + 3 * n_out for n_in, n_out, _ in layers))
    evaluate += 2 * n_te * widths[-1] * v if e else 0  # the test set's logits, and a copy
    data = (n_tr + n_te) * (widths[0] * v + 8) + 8 * n_tr  # + the epoch's permutation
    # glibc serves blocks below its mmap ceiling (32 MiB) from the heap and keeps freed ones
    # for reuse, so while a step's activations are that small, RSS runs above the live bytes:
    # measured 0.65-0.9 x the step's activations at widths 1 000-30 000.
    heap = int(HEAP_FRACTION * acts) if b * max(widths[1:]) * v < MMAP_CEILING else 0
    return MemoryEstimate(int(persistent), int(step), int(evolve), int(evaluate), int(total),
                          int(data), int(BASELINE if baseline is None else baseline), "cpu",
                          heap)


def _gpu_estimate(layers, idx, v, b, e, widths, hidden, evolving, total) -> MemoryEstimate:
    """What the GPU backend allocates (see :mod:`sparsekit._cuda.memory`)."""
    persistent = 0
    for k, ((n_in, n_out, nnz), i) in enumerate(zip(layers, idx)):
        persistent += (n_out + 1) * i + nnz * (i + 2 * v) + 2 * n_out * v
        if k:  # the first layer's backward needs no dx, hence no transposed index
            persistent += (n_in + 1) * i + 2 * nnz * i
    # Kept for the backward pass: the input batch, and each hidden layer's activation and
    # derivative; the softmax's probabilities and gradient are classes x batch.
    acts = b * v * (widths[0] + 2 * hidden + 3 * widths[-1])
    grads = sum(nnz * v + n_out * v for _, n_out, nnz in layers)
    widest = max((n_in + 2 * n_out) * b * v for n_in, n_out, _ in layers)
    optimizer = max(2 * nnz * v for _, _, nnz in layers)
    step = acts + grads + widest + optimizer
    # keep mask, sign indices, the sorted keys and CuPy's sort buffer, the rebuild's prefix
    # sums, source map, new indices, values and momentum.
    evolve = max(nnz * (1 + 8 + 3 * v + 8 + 8 + index_dtype_for(nnz, (n_out, n_in)).itemsize
                        + 2 * v) for n_in, n_out, nnz in evolving)
    evaluate = e * v * (widths[0] + 2 * hidden + widths[-1] + max(widths[1:]))
    return MemoryEstimate(int(persistent), int(step), int(evolve), int(evaluate), int(total))


# --- the host check -------------------------------------------------------------------------
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
                 n_test: int | None = None) -> MemoryEstimate | None:
    """Refuse, before anything is allocated, a run whose host peak cannot fit; GPU runs are
    also checked against the device (see :func:`sparsekit._cuda.memory.check_training_memory`).

    The data and an already built model are resident when this runs, so the part of the peak
    still to come (``n_train``/``n_test`` cap the evaluation chunk) is compared with what is
    left: ``memory_limit`` (bytes, ``"16GiB"``, or
    ``"80%"`` of physical memory) minus this process's resident memory, or, without a limit,
    the machine's available memory.  Returns the host estimate (None for a resumed run, whose
    model is not known yet).
    """
    from .._cuda.memory import check_training_memory

    check_training_memory(model_or_sizes, backend, gpu_memory_limit, epsilon=epsilon,
                          batch_size=batch_size, eval_batch_size=eval_batch_size, dtype=dtype,
                          evolve_output=evolve_output)
    if model_or_sizes is None:
        return None
    from ..backends import get_backend

    be = getattr(model_or_sizes, "backend", None) or get_backend(backend)
    on_cpu = be.name == "cpu"
    name = method if isinstance(method, str) and method in METHODS else "set"
    est = estimate_memory(model_or_sizes, epsilon=epsilon, batch_size=batch_size,
                          eval_batch_size=eval_batch_size, method=name, dtype=dtype,
                          evolve_output=evolve_output, evolve_every=evolve_every, gamma=gamma,
                          n_train=n_train, n_test=n_test, baseline=0)
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
        what = f"memory_limit {_size(limit)} less the {_size(held)} this process holds"
    else:
        available, what = available_memory(), "the memory available on this machine"
    if need > available:
        raise ValueError(
            f"the run does not fit in memory: it needs {_size(need)} more than it holds now "
            f"({est.describe()}), but {what} is {_size(max(available, 0))}. {est.advice()}, "
            "or raise memory_limit (--memory-limit)")
    return est


__all__ = ["MemoryEstimate", "available_memory", "check_memory", "estimate_memory",
           "parse_bytes", "physical_memory", "resident_memory"]
