"""Memory a training run needs, predicted before anything is allocated.

:func:`estimate_memory` follows what :func:`sparsekit.train` allocates on the backend's device
(``device="cpu"``: the host process's peak RSS; ``device="gpu"``: the GPU memory pool).  The
peak is

    baseline + data + heap + persistent + workspace + max(step, evolve, evaluate)

* **persistent** — per layer the CSR arrays (values, indices, row pointers), the momentum, the
  bias and its momentum, and the transposed column index the backward kernels cache (two
  index arrays per connection): 20 bytes per connection at float32 / int32 on the CPU.
* **workspace** (CPU) — what the training engine reuses from step to step: every hidden
  layer's activation, derivative and output gradient (which growth methods that score
  candidates read), the logits, and every layer's weight gradient (4 bytes per connection);
  for layers of at most ``CpuBackend.gather_max_nnz`` connections also the fused backward's
  gradient in the transposed order and that order's inverse permutation.
* **step** — what one optimizer step allocates besides: the input batch (gathered, then
  transposed) and the output's probabilities and gradient.
* **evolve** — the largest evolving layer's topology update (SET: magnitude selection, the
  sampled positions and the rebuilt arrays: about :data:`SET_BYTES_PER_CONNECTION` bytes per
  connection, measured), plus the step's activations when updates happen inside an epoch.
* **evaluate** — the test set's logits and one inference pass: on the CPU the fused pass of
  :meth:`CpuBackend.infer_batch <sparsekit._cython.backend.CpuBackend.infer_batch>`
  samples (at most ``eval_batch_size``; every layer's output live), on the GPU
  a chunk of ``eval_batch_size`` samples streamed one product at a time.  On the CPU a
  network whose activation is not piecewise linear takes that one-product path instead; it
  may hold about three arrays of the widest layer at ``eval_batch_size``, more than predicted.
* **heap** — while a step's arrays are below glibc's mmap ceiling, freed blocks stay resident
  for reuse: an allowance of :data:`HEAP_FRACTION` of the step's arrays.
* **data** — the training and test arrays (float32 features, int64 labels) when their sizes are
  given; **baseline** — the interpreter, NumPy and the extension modules (:data:`BASELINE`).

On the GPU the persistent part skips the first layer's transposed index (its backward needs no
input gradient), the step adds the optimizer's temporaries, and there is no baseline, data or
heap: the data stays on the host.  :mod:`sparsekit.training.memory` compares an estimate with
what the machine or the device can give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._cython.backend import CpuBackend
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
#: glibc's largest dynamic mmap threshold (the CPU backend sets it there from the start,
#: sparsekit/_cython/_malloc.py), and the share of a step's activations that the heap keeps
#: resident below it (measured, see :func:`estimate_memory`).
MMAP_CEILING = 32 * 2**20
HEAP_FRACTION = 0.8
#: Methods whose evolve transient is modelled; "static" never evolves.
METHODS = ("set", "static", "gse", "topkast", "rigl")


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
    workspace: int = 0

    @property
    def transient(self) -> int:
        """The largest of the step, topology-update and evaluation transients."""
        return max(self.step, self.evolve, self.evaluate)

    @property
    def peak(self) -> int:
        """Bytes at the run's highest point: everything resident plus the largest transient."""
        return (self.baseline + self.data + self.heap + self.persistent + self.workspace
                + self.transient)

    def parts(self) -> dict[str, int]:
        """Every part by name, for reports and JSON."""
        return {"peak": self.peak, "baseline": self.baseline, "data": self.data,
                "heap": self.heap, "persistent": self.persistent, "workspace": self.workspace,
                "step": self.step,
                "evolve": self.evolve, "evaluate": self.evaluate, "connections": self.connections}

    def describe(self) -> str:
        """The peak and its parts, in words."""
        size = format_bytes
        fixed = self.baseline + self.data + self.heap
        fixed = (f"{size(fixed)} for the interpreter, the data and the allocator's free "
                 "blocks + " if fixed else "")
        workspace = (f" + {size(self.workspace)} for the training step's reused arrays"
                     if self.workspace else "")
        return (f"about {size(self.peak)} at peak: {fixed}{size(self.persistent)} for "
                f"{self.connections:,} connections (values, indices, momentum, transposed "
                f"indices){workspace} + max({size(self.step)} per training step, {size(self.evolve)} per "
                f"topology update, {size(self.evaluate)} per evaluation chunk)")

    def advice(self) -> str:
        """What to lower, largest part first."""
        tips = {"persistent": "epsilon or the layer sizes (the connections)",
                "workspace": "batch_size (the step keeps every hidden activation)",
                "step": "batch_size",
                "evolve": "epsilon or the width of the largest evolving layer",
                "evaluate": "eval_batch_size"}
        ranked = sorted(tips, key=lambda k: -getattr(self, k))
        return "Lower " + ", then ".join(tips[k] for k in ranked[:2])


def format_bytes(n: float) -> str:
    """``n`` bytes as MiB, or as GiB from 1 GiB up."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _layers(model_or_sizes, epsilon: float) -> list[tuple[int, int, int]]:
    """``(n_in, n_out, nnz)`` per layer of a model or of layer sizes at ``epsilon``."""
    layers = getattr(model_or_sizes, "layers", None)
    if layers is not None:
        return [(layer.w.shape[1], layer.w.shape[0], layer.w.nnz) for layer in layers]
    from .config import check_layer_sizes  # a string is an error, not its characters

    sizes = check_layer_sizes(model_or_sizes)
    return [(n_in, n_out, er_connections(n_out, n_in, epsilon))
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def _topkast_sets(layers, n_evolving: int, forward_density, backward_density, v: int):
    """Top-KAST's evolving layers at their backward-set size |B|, and the bytes of their
    forward sets A (values, indices, row offsets), as :class:`~sparsekit.growth.topkast.TopKAST`
    sizes them."""
    out, extra = [], 0
    for k, (n_in, n_out, nnz) in enumerate(layers):
        if k < n_evolving:
            total = n_in * n_out
            a = nnz if forward_density is None else max(1, round(forward_density * total))
            b = (min(total, 2 * a) if backward_density is None
                 else max(a, round(backward_density * total)))
            i = index_dtype_for(a, (n_out, n_in)).itemsize
            extra += a * (v + i) + (n_out + 1) * i
            nnz = b
        out.append((n_in, n_out, nnz))
    return out, extra


def estimate_memory(layer_sizes, *, epsilon: float = 20.0, batch_size: int = 128,
                    eval_batch_size: int = 4096, method: str = "set", dtype="float32",
                    device: str = "cpu", evolve_output: bool = False,
                    evolve_every: int | None = None, gamma: float = 1.0,
                    n_train: int | None = None, n_test: int | None = None,
                    baseline: int | None = None, state_slots: int = 1,
                    forward_density: float | None = None,
                    backward_density: float | None = None) -> MemoryEstimate:
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
    state_slots : int, default 1
        Optimizer state arrays per value array (momentum SGD 1, Adam and AdamW 2; see
        :attr:`sparsekit.training.optim.Optimizer.slots`).
    forward_density, backward_density : float, optional
        Top-KAST's parameters (:class:`~sparsekit.growth.topkast.TopKAST`): its evolving
        layers hold the backward set B (twice the forward set A by default) plus A's own
        values and indices.

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
    if not isinstance(state_slots, int) or state_slots < 0:
        raise ValueError(f"state_slots must be an integer >= 0, got {state_slots!r}")
    s = 1 + state_slots  # the values and their optimizer state
    layers = _layers(layer_sizes, epsilon)
    # a model's own precision; an array of layer sizes has a dtype too, of its integers
    v = np.dtype(layer_sizes.dtype if hasattr(layer_sizes, "layers") else dtype).itemsize
    n_evolving = len(layers) if evolve_output or len(layers) == 1 else len(layers) - 1
    forward_sets = 0
    if method == "topkast":
        layers, forward_sets = _topkast_sets(layers, n_evolving, forward_density,
                                             backward_density, v)
    idx = [index_dtype_for(nnz, (n_out, n_in)).itemsize for n_in, n_out, nnz in layers]
    b, e = int(batch_size), int(eval_batch_size)  # e = 0: no evaluation
    widths = [layers[0][0]] + [n_out for _, n_out, _ in layers]
    hidden = sum(widths[1:-1])
    evolving = layers[:n_evolving]
    scored = method in ("gse", "topkast", "rigl")
    total = sum(nnz for _, _, nnz in layers)
    if device == "gpu":
        return _gpu_estimate(layers, idx, v, b, e, widths, hidden, evolving, total, s,
                             forward_sets)
    persistent = forward_sets
    for (n_in, n_out, nnz), i in zip(layers, idx):
        persistent += (n_out + 1 + n_in + 1) * i + nnz * (3 * i + s * v) + s * n_out * v
    # The training engine's workspace, kept from step to step (the fused passes write into it):
    # every hidden layer's activation, derivative and output gradient, the logits, and every
    # layer's weight and bias gradient.
    workspace = b * v * (3 * hidden + widths[-1]) + sum(nnz * v + n_out * v
                                                        for _, n_out, nnz in layers)
    # Layers small enough for the fused backward to gather their gradient (on more than one
    # thread) keep the transpose's inverse permutation and write the gradient once more in the
    # transposed order: an index and a value per connection, at most 2^18 of each per layer.
    cap = CpuBackend.gather_max_nnz
    workspace += sum(min(nnz, cap) * (i + v) for (_, _, nnz), i in zip(layers, idx))
    # A step's own arrays: the input batch (copied twice: gathered rows, then transposed) and
    # the output's probabilities and gradient.
    step = b * v * (2 * widths[0] + 2 * widths[-1])
    evolve = 0
    if method != "static":
        per = SCORED_BYTES_PER_CONNECTION if scored else SET_BYTES_PER_CONNECTION
        # candidates: gamma * nnz absent positions, at most every absent one (a huge gamma)
        evolve = max(int(nnz * per + (SCORED_BYTES_PER_CANDIDATE * min(gamma * nnz,
                                                                       n_in * n_out - nnz)
                                      if scored else 0))
                     for n_in, n_out, nnz in evolving)
        if scored or evolve_every is not None:  # updates run with the step's arrays alive
            evolve += step
    # The fused inference pass (piecewise-linear activations, the default): its input chunk
    # and every layer's output (no derivatives), for the samples of one pass.
    p = CpuBackend._infer_samples(widths, v, e) if e else 0
    evaluate = p * v * (widths[0] + hidden + widths[-1]) + p * widths[0]  # + isfinite
    evaluate += 2 * n_te * widths[-1] * v if e else 0  # the test set's logits, and a copy
    data = (n_tr + n_te) * (widths[0] * v + 8) + 8 * n_tr  # + the epoch's permutation
    # glibc serves blocks below its mmap ceiling (32 MiB) from the heap and keeps freed ones
    # for reuse, so while a step's activations are that small, RSS runs above the live bytes:
    # measured 0.65-0.9 x the step's activations at widths 1 000-30 000.
    heap = int(HEAP_FRACTION * step) if b * max(widths[1:]) * v < MMAP_CEILING else 0
    return MemoryEstimate(int(persistent), int(step), int(evolve), int(evaluate), int(total),
                          int(data), int(BASELINE if baseline is None else baseline), "cpu",
                          heap, int(workspace))


def _gpu_estimate(layers, idx, v, b, e, widths, hidden, evolving, total, s,
                  forward_sets: int = 0) -> MemoryEstimate:
    """What the GPU backend allocates (see the module docstring)."""
    persistent = forward_sets
    for k, ((n_in, n_out, nnz), i) in enumerate(zip(layers, idx)):
        persistent += (n_out + 1) * i + nnz * (i + s * v) + s * n_out * v
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


__all__ = ["BASELINE", "METHODS", "MemoryEstimate", "estimate_memory", "format_bytes"]
