"""Top-KAST — Top-K Always-Sparse Training (Jayakumar et al., 2020), storing only B.

Each evolving layer holds a **backward set** B (density ``D + M``) as its weights ``layer.w``;
the **forward set** A is the top-``|A|`` of ``|θ_B|`` (density D), installed as the layer's
``w_forward``, so the forward pass and the gradient to the inputs use A while the weight
gradient — and so the optimizer, with its learning-rate schedule, momentum and weight decay —
covers all of B.  Entries of B \\ A are "what if this connection existed" weights that can
overtake A's smallest and enter it at the next refresh.  ``A ⊆ B`` always.

Deviations from the paper, and why:

* **Only B is stored.**  The paper keeps a dense θ and recomputes B as the top ``D + M`` of all
  of it; that is ``n_in x n_out`` memory.  Here values outside B are forgotten (0), and B keeps
  its size by *refilling*: on the growth schedule (every ΔT steps or once per epoch, cosine-
  annealed fraction α_t of ``|B \\ A|``, stopping at ``T_end``) the smallest ``|θ|`` of B \\ A
  leave and as many absent connections enter, chosen GSE-style — the top ``|gradient|`` of
  ``⌈γ·|B \\ A|⌉`` uniformly sampled candidates, scored on that step's batch — at weight 0
  with zero momentum.  At the start B is the initial (ER) layer plus uniformly random
  zero-valued connections.
* **Exploration penalty as a proximal L1 step.**  The penalty ``|θ|`` on A and ``|θ| / D`` on
  B \\ A is applied after each optimizer step as a soft threshold
  ``θ <- sign(θ)·max(|θ| - λ·c, 0)`` (c = 1 on A, 1/D on B \\ A), so λ is a per-step amount,
  independent of the learning rate, and weights it pushes to zero stay at zero.  It is computed
  as ``θ - clip(θ, -λc, λc)`` (the same value, up to the sign of a zero) in three in-place
  passes.
* **Checkpoints during training hold B**; the forward set is recomputed from it (top-|A| of
  |θ|) on resume.  A is also refreshed after every epoch's last step, where checkpoints are
  taken, so a resumed run matches the uninterrupted one exactly.  After the last epoch the
  layers are reduced to A, so the trained model has A's density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..nn.csr import CSR
from ..nn.init import er_connections
from .base import GrowthMethod, register_method
from .gse import sample_candidates
from .schedule import (
    UpdateSchedule,
    evolving_layers,
    free_positions,
    output_grads,
    replace_connections,
)


@dataclass
class _LayerState:
    """Top-KAST bookkeeping of one layer."""

    b: CSR                 # the CSR installed as layer.w (identity tells us it is unchanged)
    a_size: int            # |A|
    a_slots: Any = None    # positions of A's entries in b.data (increasing)
    a: CSR | None = None   # A itself (own values, synced from B); None when A = B
    in_a: Any = None       # bool mask over b.data: the entries in A
    shrink: Any = None     # per-entry penalty step λ·c, aligned with b.data (None: no penalty)
    neg_shrink: Any = None  # -shrink
    scratch: Any = None    # a buffer like b.data, reused by every step's penalty


def sub_pattern(be, w: CSR, slots) -> CSR:
    """The CSR made of W's entries at the increasing positions ``slots`` (values copied)."""
    xp = be.xp
    n_rows = w.shape[0]
    counts = xp.bincount(w.row_ids()[slots], minlength=n_rows)
    indptr = xp.zeros(n_rows + 1, dtype=w.indptr.dtype)
    indptr[1:] = xp.cumsum(counts).astype(w.indptr.dtype)
    return CSR(indptr, w.indices[slots], w.data[slots], w.shape, check=False)


class TopKAST(GrowthMethod):
    """Top-KAST with only the backward set stored (see the module notes for the choices).

    Parameters
    ----------
    forward_density : float, optional
        D, the fraction of ``n_in * n_out`` positions in A.  Default: each layer's Erdős–Rényi
        budget (``min(n_in * n_out, ε(n_in + n_out))``, the model's initial size).
    backward_density : float, optional
        ``D + M``, the fraction of positions in B.  Default: twice the forward set (M = D), capped
        at the full layer.
    penalty : float, default 1e-6
        λ, the exploration penalty's per-step shrink of ``|θ|`` on A (``λ / D`` on B \\ A);
        0 turns it off.
    refresh_every : int, default 100
        Recompute A = top-|A| of ``|θ_B|`` every this many steps, and after each epoch's last
        step.  The paper refreshes every step and reports that every 100 steps trains as well;
        a refresh is a selection over B, which on the default network costs about as much as a
        training step, so the default refreshes every 100.
    gamma : float, default 1
        Candidates scored per refill: ``⌈γ·|B \\ A|⌉``.
    drop_fraction, every_steps, t_end, anneal
        The refill schedule (see :class:`~sparsekit.growth.schedule.UpdateSchedule`); α_t is a
        fraction of ``|B \\ A|``.
    evolve_output, layers
        Which layers use Top-KAST (default: the hidden ones).
    """

    name = "topkast"

    def __init__(self, forward_density: float | None = None,
                 backward_density: float | None = None, penalty: float = 1e-6,
                 refresh_every: int = 100, gamma: float = 1.0, drop_fraction: float = 0.3,
                 every_steps: int | None = None, t_end: float = 0.75, anneal: str = "cosine",
                 evolve_output: bool = False, layers: Sequence[int] | None = None) -> None:
        for name, d in (("forward_density", forward_density),
                        ("backward_density", backward_density)):
            if d is not None and not 0 < d <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {d}")
        if (forward_density is not None and backward_density is not None
                and backward_density < forward_density):
            raise ValueError(f"backward_density ({backward_density}) must be >= forward_density "
                             f"({forward_density}): the forward set lies inside the backward set")
        if not (math.isfinite(penalty) and penalty >= 0):
            raise ValueError(f"penalty must be a finite number >= 0, got {penalty}")
        if int(refresh_every) != refresh_every or refresh_every < 1:
            raise ValueError(f"refresh_every must be a whole number >= 1, got {refresh_every}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive number, got {gamma}")
        self.schedule = UpdateSchedule(drop_fraction, every_steps, t_end, anneal)
        self.forward_density, self.backward_density = forward_density, backward_density
        self.penalty, self.refresh_every, self.gamma = float(penalty), int(refresh_every), gamma
        self.evolve_output = bool(evolve_output)
        self.layers = None if layers is None else [int(i) for i in layers]
        self._states: dict[int, _LayerState] = {}
        self._replaced: list[int] | None = None

    def params(self) -> dict:
        return {"forward_density": self.forward_density,
                "backward_density": self.backward_density, "penalty": self.penalty,
                "refresh_every": self.refresh_every, "gamma": self.gamma,
                **self.schedule.params(), "evolve_output": self.evolve_output,
                "layers": self.layers}

    # --- sizes -------------------------------------------------------------------------------
    def _b_size(self, a_size: int, total: int, i: int) -> int:
        if self.backward_density is None:
            return min(total, 2 * a_size)
        b = max(1, round(self.backward_density * total))
        if b < a_size:
            raise ValueError(f"backward_density={self.backward_density} gives layer {i} {b} "
                             f"connections, fewer than its forward set's {a_size}")
        return b

    def state_dict(self) -> dict:
        """Each Top-KAST layer's forward-set size |A|: after neuron pruning, or in a layer the
        user built, it follows from no budget the resumed run could recompute."""
        return {"forward_sizes": [[int(i), int(st.a_size)] for i, st in self._states.items()]}

    def load_state_dict(self, state: dict) -> None:
        sizes = state.get("forward_sizes", []) if isinstance(state, dict) else None
        if not (isinstance(sizes, list) and all(
                isinstance(p, list) and len(p) == 2 and all(type(v) is int and v >= 0 for v in p)
                for p in sizes)):
            raise ValueError(f"topkast state must hold forward_sizes [[layer, size], ...], got "
                             f"{state!r}")
        self._resumed_sizes = dict(map(tuple, sizes))

    _resumed_sizes: dict = {}

    def _sizes(self, model, i: int) -> tuple[int, int]:
        """``(|A|, |B|)`` of layer i."""
        w = model.layers[i].w
        n_out, n_in = w.shape
        total = n_out * n_in
        if i in self._resumed_sizes:  # a resumed run: B is the layer as saved
            return min(self._resumed_sizes[i], w.nnz), w.nnz
        if self.forward_density is not None:
            a = max(1, round(self.forward_density * total))
        else:
            # The ER budget; a layer already at its B size is a resumed Top-KAST run, and any
            # other size is a user-built layer whose own size is the forward budget.
            try:
                a = er_connections(n_out, n_in, model.epsilon)
            except ValueError:  # no ER budget at this epsilon: the layer's own size is
                a = w.nnz
            if w.nnz not in (a, self._b_size(a, total, i)):
                a = w.nnz
        return a, self._b_size(a, total, i)

    # --- hooks -------------------------------------------------------------------------------
    def setup(self, model, steps_per_epoch, epochs, rng=None) -> None:
        self.schedule.setup(steps_per_epoch, epochs)
        model.keep_dz = True
        rng = np.random.default_rng(rng)
        self._states = {}
        for i in evolving_layers(model, self.evolve_output, self.layers):
            layer = model.layers[i]
            a_size, b_size = self._sizes(model, i)
            if layer.nnz > b_size:  # keep the largest |θ|
                extra = layer.nnz - b_size
                drop = layer.backend.select(layer.backend.xp.abs(layer.w.data), extra, False)
                empty = layer.backend.xp.empty(0, dtype=layer.w.indices.dtype)
                replace_connections(layer, drop, empty, empty)
            elif layer.nnz < b_size:  # B \ A starts as random connections at weight 0
                rows, cols = layer.backend.sample_absent(layer.w, b_size - layer.nnz, rng)
                replace_connections(layer, layer.backend.xp.empty(0, dtype=np.int64), rows, cols)
            self._states[i] = self._install(layer, a_size)
        self._resumed_sizes = {}

    def after_step(self, model, step, epoch, rng, cache=None):
        self.schedule.require_setup()
        due = self.schedule.due(step)
        fraction = self.schedule.fraction(step) if due else 0.0
        if due and cache is None:
            raise ValueError("topkast needs the step's (acts, derivs, dlogits) cache to refill B")
        dzs = output_grads(model, cache) if due else None
        # Also refresh at every epoch's end, where checkpoints are taken: a resumed run then
        # recomputes exactly the A in use.
        epoch_end = (step + 1) % self.schedule.steps_per_epoch == 0
        replaced = [0] * len(model.layers)
        for i in evolving_layers(model, self.evolve_output, self.layers):
            layer = model.layers[i]
            st = self._state(model, i)
            self._penalize(layer, st)
            if due:
                replaced[i] = self._refill(layer, st, fraction, rng, cache[0][i], dzs[i])
                st = self._install(layer, st.a_size)
            elif (step + 1) % self.refresh_every == 0 or epoch_end:
                st = self._refresh(layer, st)
            if st.a is not None:  # A's values follow B's after every update of B
                st.a.data[...] = layer.w.data[st.a_slots]
            self._states[i] = st
        if due:
            self._replaced = replaced
            return {"replaced": replaced, "drop_fraction": fraction}
        return None

    def end_of_epoch(self, model, epoch, epochs, rng):
        for i in list(self._states):  # evaluation follows: layers pruned since use A again
            self._state(model, i)
        stats = {"forward_connections": self.forward_connections(model)}
        if self._replaced is not None:
            stats["replaced"], self._replaced = self._replaced, None
        if epoch == epochs - 1:
            self.finalize(model)
        return stats

    # --- public helpers -----------------------------------------------------------------------
    def forward_connections(self, model) -> list[int]:
        """|A| per layer (the layer's own size where Top-KAST is not active)."""
        out = []
        for i, layer in enumerate(model.layers):
            st = self._states.get(i)
            out.append(st.a_size if st is not None and layer.w is st.b else layer.nnz)
        return out

    def forward_slots(self, i: int):
        """Positions in layer ``i``'s values of the entries of its forward set A (increasing,
        on the layer's device), or None where A is the whole layer."""
        st = self._states.get(i)
        return None if st is None or st.a is None else st.a_slots

    def finalize(self, model) -> None:
        """Reduce every Top-KAST layer to its forward set A (values and momentum kept)."""
        for i, st in self._states.items():
            layer = model.layers[i]
            if layer.w is st.b and st.a is not None:
                st.a.data[...] = layer.w.data[st.a_slots]
                layer.set_topology(st.a, {k: v[st.a_slots] for k, v in layer.state_w.items()})
        self._states = {}

    # --- internals ----------------------------------------------------------------------------
    def _state(self, model, i: int) -> _LayerState:
        """Layer i's state, re-derived when its pattern changed elsewhere (neuron pruning)."""
        layer, st = model.layers[i], self._states.get(i)
        if st is None or layer.w is not st.b:
            ratio = 0.5 if st is None else st.a_size / max(st.b.nnz, 1)
            st = self._states[i] = self._install(layer, max(1, round(ratio * layer.nnz)))
        return st

    def _install(self, layer, a_size: int) -> _LayerState:
        """Choose A = top-``a_size`` of ``|θ_B|`` and make it the layer's forward weights."""
        st = _LayerState(b=layer.w, a_size=min(a_size, layer.nnz))
        return self._refresh(layer, st, force=True)

    def _refresh(self, layer, st: _LayerState, force: bool = False) -> _LayerState:
        be, w = layer.backend, layer.w
        xp = be.xp
        if st.a_size >= w.nnz:  # A = B: an ordinary layer
            st.a_slots, st.a, layer.w_forward = None, None, None
            self._set_shrink(layer, st, xp.ones(w.nnz, dtype=bool))
            return st
        slots = be.select(xp.abs(w.data), st.a_size, largest=True)
        if not force and st.a_slots is not None and bool(xp.all(slots == st.a_slots)):
            return st  # same pattern: keep A and its cached transpose
        in_a = xp.zeros(w.nnz, dtype=bool)
        in_a[slots] = True
        st.in_a, st.a_slots, st.a = in_a, slots, sub_pattern(be, w, slots)
        self._set_shrink(layer, st, in_a)
        layer.w_forward = st.a
        return st

    def _set_shrink(self, layer, st: _LayerState, in_a) -> None:
        """Penalty steps: λ on A, λ/D on B \\ A (D = |A| / (n_in n_out)), in the weights' dtype."""
        if self.penalty == 0:
            st.shrink = st.neg_shrink = st.scratch = None
            return
        xp = layer.backend.xp
        n_out, n_in = layer.w.shape
        inv_d = n_out * n_in / max(st.a_size, 1)
        st.shrink = xp.where(in_a, self.penalty, self.penalty * inv_d).astype(layer.w.dtype)
        st.neg_shrink = -st.shrink
        if st.scratch is None or st.scratch.shape != st.shrink.shape:
            st.scratch = xp.empty_like(st.shrink)

    def _penalize(self, layer, st: _LayerState) -> None:
        """The soft threshold ``θ - clip(θ, -λc, λc)``: the value of ``sign(θ)·max(|θ| - λc, 0)``
        (IEEE rounding is symmetric, so ``θ + λc = -(|θ| - λc)`` for θ < 0; a zeroed weight is
        +0), in three passes over B without allocating."""
        if st.shrink is None:
            return
        xp = layer.backend.xp
        data, buf = layer.w.data, st.scratch
        xp.minimum(data, st.shrink, out=buf)
        xp.maximum(buf, st.neg_shrink, out=buf)
        xp.subtract(data, buf, out=data)

    def _refill(self, layer, st: _LayerState, fraction: float, rng, x_ib, dz_ob) -> int:
        """Replace the fraction ``fraction`` of B \\ A: smallest |θ| out, best sampled in."""
        be, w = layer.backend, layer.w
        xp = be.xp
        explore = w.nnz - st.a_size
        k = min(int(fraction * explore), free_positions(w))
        if k <= 0 or st.a_slots is None:
            return 0
        rows, cols = sample_candidates(be, w, math.ceil(self.gamma * explore), rng)
        scores = xp.abs(be.sampled_grad(x_ib, dz_ob, rows, cols))
        grow = be.select(scores, min(k, scores.shape[0]), largest=True)
        outside = xp.flatnonzero(~st.in_a)
        prune = outside[be.select(xp.abs(w.data[outside]), grow.shape[0], largest=False)]
        replace_connections(layer, prune, rows[grow], cols[grow])
        return int(grow.shape[0])


register_method("topkast", TopKAST)
