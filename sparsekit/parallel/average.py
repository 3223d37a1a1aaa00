"""WASAP-SGD's final step: average the workers' models over the union of their supports, then
prune back to the connection budget; and the topology filter of stale asynchronous gradients.

Averaging treats a connection a worker lacks as a zero weight (``W_avg = (1/K) sum_k W_k``), as
the reference implementation does.  A connection that every worker grew keeps its full
magnitude, one that a single worker grew is shrunk K-fold, so the magnitude pruning that follows
favours connections the workers agree on.  Everything works on sorted ``row * n_in + col``
keys: O(K nnz log(K nnz)) time and O(K nnz) memory, never O(n_in n_out).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backends import Backend
from ..nn.csr import CSR, array_module, index_dtype_for
from ..nn.layers import SparseLayer
from ..nn.model import SparseMLP


def support_keys(w: CSR):
    """``row * n_in + col`` of every stored entry (int64, increasing for a valid CSR)."""
    xp = w.xp
    return w.row_ids().astype(xp.int64) * w.shape[1] + w.indices.astype(xp.int64)


def csr_from_keys(keys, values, shape: tuple[int, int]) -> CSR:
    """A CSR from increasing unique keys and their values."""
    xp = array_module(values)
    n_rows, n_cols = shape
    idt = index_dtype_for(keys.shape[0], shape)
    indptr = xp.zeros(n_rows + 1, dtype=idt)
    indptr[1:] = xp.cumsum(xp.bincount(keys // n_cols, minlength=n_rows)).astype(idt)
    return CSR(indptr, (keys % n_cols).astype(idt), xp.ascontiguousarray(values), shape,
               check=False)


def union_average(ws: Sequence[CSR], states: Sequence[Sequence] = ()):
    """Average K same-shaped sparse matrices over the union of their supports.

    Parameters
    ----------
    ws : sequence of CSR
        The workers' weights (one device, one dtype, one shape).
    states : sequence of sequences, optional
        ``states[k]`` lists arrays aligned with ``ws[k].data`` (momentum); each is averaged the
        same way.

    Returns
    -------
    (CSR, list)
        The average on the union support, and the averaged states aligned with it.
    """
    if not ws:
        raise ValueError("ws must hold at least one matrix")
    shape, dtype = ws[0].shape, ws[0].dtype
    for w in ws:
        if w.shape != shape or w.dtype != dtype:
            raise ValueError(f"ws must share shape and dtype, got {w.shape}/{w.dtype} and "
                             f"{shape}/{dtype}")
    n_states = len(states[0]) if states else 0
    if states and (len(states) != len(ws) or any(len(s) != n_states for s in states)):
        raise ValueError("states must give the same number of arrays for every matrix")
    xp = ws[0].xp
    k = len(ws)
    keys = xp.concatenate([support_keys(w) for w in ws])
    union, inverse = xp.unique(keys, return_inverse=True)
    inverse = inverse.ravel()

    def mean(parts):
        # float64 sums: exact for one worker, order-independent to rounding for several.
        total = xp.bincount(inverse, weights=xp.concatenate(parts).astype(xp.float64),
                            minlength=union.shape[0])
        return (total / k).astype(dtype)

    avg = csr_from_keys(union, mean([w.data for w in ws]), shape)
    return avg, [mean([s[i] for s in states]) for i in range(n_states)]


def budget_keep_mask(backend: Backend, data, budget: int):
    """Keep mask leaving exactly ``min(budget, n)`` entries: SET's sign-split magnitude rule with
    an adaptive fraction.

    Exact zeros go first; of the ``r`` removals left, ``ζ' = r / n_nonzero`` of the negative
    weights closest to zero and ``ζ'`` of the positive ones are removed (rounded so that the
    counts add up to ``r``).  Selection is O(n) with the backend's ``select``.
    """
    xp = backend.xp
    n = int(data.shape[0])
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    keep = xp.ones(n, dtype=bool)
    remove = n - int(budget)
    if remove <= 0:
        return keep
    zeros = xp.flatnonzero(data == 0)[:remove]
    keep[zeros] = False
    remove -= int(zeros.shape[0])
    if remove:
        neg, pos = xp.flatnonzero(data < 0), xp.flatnonzero(data > 0)
        n_neg, n_pos = int(neg.shape[0]), int(pos.shape[0])
        k_neg = round(remove * n_neg / (n_neg + n_pos))
        k_neg = min(max(k_neg, remove - n_pos, 0), n_neg, remove)
        # Negatives closest to zero are the largest ones, positives the smallest.
        keep[neg[backend.select(data[neg], k_neg, largest=True)]] = False
        keep[pos[backend.select(data[pos], remove - k_neg, largest=False)]] = False
    return keep


def prune_to_budget(backend: Backend, w: CSR, budget: int, *states):
    """``(w, [states])`` with ``w`` magnitude-pruned to ``budget`` entries (see
    :func:`budget_keep_mask`); unchanged when it already fits."""
    if w.nnz <= budget:
        return w, list(states)
    keep = budget_keep_mask(backend, w.data, budget)
    xp = backend.xp
    empty_i = xp.zeros(0, dtype=w.indices.dtype)
    return backend.rebuild(w, keep, empty_i, empty_i, xp.zeros(0, dtype=w.dtype), *states)


def average_models(models: Sequence[SparseMLP], budgets: Sequence[int]) -> SparseMLP:
    """Union-support average of same-architecture models, pruned to ``budgets[l]`` per layer.

    Weights and their optimizer state are averaged over the union of supports, biases and
    theirs plainly; the result has at most ``budgets[l]`` connections in layer ``l``.
    """
    if not models:
        raise ValueError("models must hold at least one model")
    sizes = models[0].layer_sizes
    if any(m.layer_sizes != sizes for m in models):
        raise ValueError(f"models must share layer sizes, got {[m.layer_sizes for m in models]}")
    if len(budgets) != len(models[0].layers):
        raise ValueError(f"budgets needs one entry per layer ({len(models[0].layers)})")
    be = models[0].backend
    xp = be.xp
    slots = list(models[0].layers[0].state_w)
    layers = []
    for i, budget in enumerate(budgets):
        parts = [m.layers[i] for m in models]
        w, states = union_average([p.w for p in parts],
                                  [[p.state_w[s] for s in slots] for p in parts])
        w, states = prune_to_budget(be, w, int(budget), *states)
        layer = SparseLayer(w, _mean(xp, [p.b for p in parts]), backend=be)
        layer.state_w = dict(zip(slots, states))
        layer.state_b = {s: _mean(xp, [p.state_b[s] for p in parts]) for s in slots}
        layers.append(layer)
    cfg = dict(models[0].config())
    for key in ("layer_sizes", "dtype"):
        cfg.pop(key)
    return SparseMLP.from_layers(layers, **cfg)


def _mean(xp, arrays):
    """Elementwise mean accumulated in float64 (exact for one array)."""
    return (sum(a.astype(xp.float64) for a in arrays) / len(arrays)).astype(arrays[0].dtype)


def remap_values(old: CSR, new: CSR, values):
    """Values aligned with ``old``'s entries, re-expressed on ``new``'s support.

    Entries of ``old`` that ``new`` lacks are dropped; entries new to ``new`` get 0.  Used to
    filter a gradient computed on an outdated topology to the current one.
    """
    xp = old.xp
    if old.shape != new.shape:
        raise ValueError(f"shapes differ: {old.shape} and {new.shape}")
    if values.shape != (old.nnz,):
        raise ValueError(f"values must have shape ({old.nnz},), got {values.shape}")
    out = xp.zeros(new.nnz, dtype=values.dtype)
    if not old.nnz or not new.nnz:
        return out
    old_keys, new_keys = support_keys(old), support_keys(new)
    pos = xp.minimum(xp.searchsorted(new_keys, old_keys), new.nnz - 1)
    hit = new_keys[pos] == old_keys
    out[pos[hit]] = values[hit]
    return out
