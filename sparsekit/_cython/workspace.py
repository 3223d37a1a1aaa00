"""The arrays a CPU training step keeps from one step to the next, in the caller's ``buffers``
dict (the engine's, or an inference call's).

Each array is the front of one flat, 64-byte-aligned allocation that only grows, so alternating
sizes (an epoch's partial last batch, an inference pass's remainder, a layer after pruning)
reuse memory instead of faulting in fresh pages; and the step's plan (:class:`StepPlan`, what
``CpuBackend._step_plan`` decides before a step) is kept per shape of step.  Also the two
conversions a pass's arguments go through: a layer's arrays as :mod:`sparsekit._cython.mlp`
takes them, and a batch's row indices, checked once for the passes' own gather.
"""

from __future__ import annotations

import math

import numpy as np

from .._align import aligned_empty
from . import elementwise

#: The key of the step plans (a dict: plan key -> plan) in a buffers dict, and how many it
#: keeps: an epoch with a partial last batch alternates two.
PLAN = "step_plan"
MAX_PLANS = 4


def buffer(buffers: dict, key, shape, dtype) -> np.ndarray:
    """An aligned C-contiguous array of ``shape`` kept in ``buffers`` under ``key``: a prefix
    view of the key's storage, which is reallocated only to grow (or for another dtype).

    A partial last batch used to reallocate every buffer twice per epoch: 6 % of a small
    estimator's fit (digits, batch 200).
    """
    dtype = np.dtype(dtype)
    kept = buffers.get(key)  # (flat storage, the last view): only ever filled here
    if kept is not None and kept[1].shape == shape and kept[1].dtype == dtype:
        return kept[1]
    size = math.prod(shape)
    flat = None if kept is None else kept[0]
    if flat is None or flat.dtype != dtype or flat.shape[0] < size:
        # Plans that hold views of the old storage go too: they would keep it alive, and write
        # into it while the caller reads the new one.
        buffers.pop(PLAN, None)
        flat = aligned_empty((size,), dtype)
    view = flat[:size].reshape(shape)
    buffers[key] = (flat, view)
    return view


def batch_buffer(buffers: dict, key, n_rows: int, n_batch: int, dtype, ld: int | None = None):
    """A ``(n_rows, n_batch)`` batch array kept in ``buffers`` (see :func:`buffer`) whose rows
    are ``ld`` values apart (``ld >= n_batch``; None: ``n_batch``, C-contiguous): the view
    ``[:, :n_batch]`` of an ``(n_rows, ld)`` array, which the fused passes take as it is."""
    if ld is None or ld == n_batch:
        return buffer(buffers, key, (n_rows, n_batch), dtype)
    return buffer(buffers, key, (n_rows, ld), dtype)[:, :n_batch]


def kept_plan(buffers: dict, key):
    """The plan kept under ``key``, or None."""
    return buffers.get(PLAN, {}).get(key)


def keep_plan(buffers: dict, key, **fields) -> StepPlan:
    """Keep a new plan under ``key`` (call it after taking its buffers: growing one drops every
    plan), evicting the oldest past :data:`MAX_PLANS` (e.g. a topology whose nnz changes at
    every update)."""
    plans = buffers.setdefault(PLAN, {})
    if len(plans) >= MAX_PLANS:
        plans.pop(next(iter(plans)))
    plan = plans[key] = StepPlan(key=key, **fields)
    return plan


class StepPlan:
    """What ``CpuBackend._step_plan`` keeps between steps of the same ``key``."""

    __slots__ = ("key", "dtype", "fused_update", "x_ib", "scratch", "outs", "derivs", "dzs",
                 "gws", "gbs", "slopes", "work")

    def __init__(self, **fields) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


def layer_arrays(layer, transpose=None) -> dict:
    """A layer's arrays as :mod:`sparsekit._cython.mlp` takes them."""
    w = layer.w
    out = {"indptr": w.indptr, "indices": w.indices, "data": w.data, "bias": layer.b,
           "n_in": w.shape[1]}
    if transpose is not None:
        out["t_indptr"], out["t_rows"], out["t_perm"] = transpose
    return out


def transpose_inverse(w, transpose) -> np.ndarray:
    """The inverse of the transpose index's permutation (W's position -> the transposed
    order's; ``transpose`` is ``w``'s index), cached on the CSR like the index: the fused
    backward gathers the gradient into W's order with it (mlp.hh ``sk_gathers``)."""
    if w._transpose_inv is None:
        perm = transpose[2]
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.shape[0], dtype=perm.dtype)
        w._transpose_inv = inv
    return w._transpose_inv


def batch_rows(x, idx):
    """``idx`` as int64 if every index lies in ``[0, len(x))`` (the passes gather those
    themselves), else None (NumPy's indexing rules: negative indices wrap, others raise)."""
    if idx.shape[0] == 0 or idx.dtype.kind not in "iu":
        return None
    rows = np.ascontiguousarray(idx, dtype=np.int64)
    return rows if elementwise.indices_below(rows, x.shape[0]) else None
