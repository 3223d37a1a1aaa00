"""Pieces shared by the gradient-guided growth methods (GSE, Top-KAST, RigL).

* :class:`UpdateSchedule` — when topology updates happen (every ΔT steps or once per epoch, never
  after ``T_end``) and how large they are (cosine-annealed drop fraction).
* :func:`evolving_layers` — which layers evolve (hidden layers, optionally the output layer).
* :func:`output_grads` — each layer's output gradient ``dz`` for the step just taken.
* :func:`select_counts` / :func:`replace_connections` — per-layer or global top-k selection and
  the prune + grow surgery (new weights 0, new momentum 0).

Everything here talks to the backend protocol only (``backend.xp`` plus its methods), so it
runs unchanged on any backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .base import GrowthMethod

SCOPES = ("layer", "global")
ANNEALS = ("cosine", "constant")


def cosine_drop_fraction(alpha: float, t: float, t_end: float) -> float:
    """``α_t = (α/2)(1 + cos(π t / T_end))`` for ``t <= T_end``, else 0 (RigL, GSE)."""
    if t_end <= 0 or t > t_end:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * t / t_end))


class UpdateSchedule:
    """When the topology changes and by how much.

    Parameters
    ----------
    drop_fraction : float, default 0.3
        α, the largest fraction of a layer's connections replaced in one update.
    every_steps : int, optional
        Update after every this many optimizer steps; ``None`` updates once per epoch, after the
        epoch's last step (gradient methods need that step's batch).
    t_end : float, default 0.75
        Stop updating after this fraction of all training steps (RigL's ``T_end`` = 75 %).
    anneal : {"cosine", "constant"}
        ``cosine``: ``α_t = (α/2)(1 + cos(π t / T_end))`` with t the steps done; ``constant``: α.

    Notes
    -----
    ``t_end`` is relative because the methods are built before the data is seen; the trainer
    calls :meth:`setup` with the number of steps per epoch and of epochs before the first step.
    """

    def __init__(self, drop_fraction: float = 0.3, every_steps: int | None = None,
                 t_end: float = 0.75, anneal: str = "cosine") -> None:
        if not 0 <= drop_fraction <= 1:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
        if every_steps is not None and (int(every_steps) != every_steps or every_steps < 1):
            raise ValueError(f"every_steps must be a whole number >= 1, got {every_steps}")
        if not 0 < t_end <= 1:
            raise ValueError(f"t_end must lie in (0, 1] (a fraction of training), got {t_end}")
        if anneal not in ANNEALS:
            raise ValueError(f"anneal must be one of {ANNEALS}, got {anneal!r}")
        self.drop_fraction, self.t_end, self.anneal = float(drop_fraction), float(t_end), anneal
        self.every_steps = None if every_steps is None else int(every_steps)
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None

    def setup(self, steps_per_epoch: int, epochs: int) -> None:
        """Fix the run's length (called by the trainer, again on resume)."""
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, "
                             f"{epochs}")
        self.steps_per_epoch, self.total_steps = int(steps_per_epoch), int(steps_per_epoch * epochs)

    @property
    def t_end_steps(self) -> float:
        self.require_setup()
        return self.t_end * self.total_steps

    def require_setup(self) -> None:
        if self.total_steps is None:
            raise RuntimeError("the growth method has not been set up: call "
                               "method.setup(model, steps_per_epoch, epochs, rng) first "
                               "(train() does)")

    def due(self, step: int) -> bool:
        """Whether to update after optimizer step ``step`` (counted from 0 over the run)."""
        self.require_setup()
        done = step + 1
        period = self.every_steps or self.steps_per_epoch
        # Never after the final step: weights grown then would never be trained.
        return (done % period == 0 and done <= self.t_end_steps and done < self.total_steps
                and self.fraction(step) > 0)

    def fraction(self, step: int) -> float:
        """The drop fraction α_t of an update after step ``step``."""
        t = step + 1
        if t > self.t_end_steps:
            return 0.0
        if self.anneal == "constant":
            return self.drop_fraction
        return cosine_drop_fraction(self.drop_fraction, t, self.t_end_steps)

    def params(self) -> dict:
        return {"drop_fraction": self.drop_fraction, "every_steps": self.every_steps,
                "t_end": self.t_end, "anneal": self.anneal}


def evolving_layers(model, evolve_output: bool, layers: Sequence[int] | None = None) -> list[int]:
    """Indices of the layers a method changes.

    ``layers`` lists them explicitly (negative indices allowed); otherwise every hidden layer,
    plus the output layer when ``evolve_output`` is true.
    """
    n = len(model.layers)
    if layers is None:
        return list(range(n if evolve_output else n - 1))
    out = []
    for i in layers:
        if int(i) != i or not -n <= i < n:
            raise ValueError(f"layers must hold indices in [{-n}, {n}), got {i!r}")
        out.append(int(i) % n)
    return sorted(set(out))


def output_grads(model, cache) -> list:
    """``dz[l]``, the loss gradient w.r.t. layer l's pre-activation, for the step in ``cache``.

    ``cache = (acts, derivs, dlogits)`` as the trainer passes it.  When the model kept the
    gradients of that very step (``model.keep_dz``), they are returned as they are; otherwise
    they are recomputed from the cache with the layers' current (forward) weights.
    """
    acts, derivs, dlogits = cache
    kept = getattr(model, "last_dz", None)
    if kept is not None and len(kept) == len(model.layers) and kept[-1] is dlogits:
        return list(kept)
    be = model.backend
    dzs = [dlogits]
    for i in range(len(model.layers) - 1, 0, -1):
        layer = model.layers[i]
        w = layer.w if getattr(layer, "w_forward", None) is None else layer.w_forward
        dzs.append(be.matmul_t(dzs[-1], w) * derivs[i - 1])
    return dzs[::-1]


def select_counts(be, scores: list, k: list[int] | int, largest: bool) -> list:
    """Indices chosen in each of ``scores`` (one array per layer).

    ``k`` a list: per-layer selection of ``k[i]`` from ``scores[i]``; ``k`` an int: one global
    selection of ``k`` over all arrays together, split back per layer.
    """
    xp = be.xp
    if isinstance(k, list):
        return [be.select(s, min(int(n), s.shape[0]), largest=largest) for s, n in zip(scores, k)]
    sizes = [s.shape[0] for s in scores]
    total = sum(sizes)
    if total == 0:
        return [xp.empty(0, dtype=xp.int64) for _ in scores]
    picked = be.select(xp.concatenate(scores), min(int(k), total), largest=largest)
    out, start = [], 0
    for n in sizes:
        lo, hi = (int(v) for v in xp.searchsorted(picked, xp.asarray([start, start + n])))
        out.append(picked[lo:hi] - start)
        start += n
    return out


def replace_connections(layer, prune_idx, grow_rows, grow_cols) -> None:
    """Drop the entries ``prune_idx`` of ``layer.w`` and add ``(grow_rows, grow_cols)`` with
    weight 0 and momentum 0; the other entries keep their values and momentum."""
    be = layer.backend
    xp = be.xp
    w = layer.w
    keep = xp.ones(w.nnz, dtype=bool)
    keep[prune_idx] = False
    vals = xp.zeros(grow_rows.shape[0], dtype=w.dtype)
    layer.rebuild(keep, grow_rows, grow_cols, vals)


def free_positions(w) -> int:
    """How many positions of W's ``n_out x n_in`` grid are empty (a count, never a grid)."""
    return w.shape[0] * w.shape[1] - w.nnz


class GradientGrowth(GrowthMethod):
    """Base of the methods that grow by gradient and prune by magnitude (GSE, RigL).

    At every due update (see :class:`UpdateSchedule`), each evolving layer — or all of them
    together with ``scope="global"`` — gets ``k = floor(α_t · nnz)`` (capped by the free
    positions) new connections, the absent candidates with the largest ``|∂L/∂w|`` on that
    step's batch, and loses as many of its smallest ``|w|``.  New weights and their momentum
    start at 0.  Candidates are absent *before* the update, so a connection pruned by an update
    is never regrown by the same update, and one grown cannot be pruned by it.

    Subclasses implement :meth:`candidates`.

    Parameters
    ----------
    drop_fraction, every_steps, t_end, anneal
        See :class:`UpdateSchedule`.
    scope : {"layer", "global"}
        ``layer`` keeps every layer's connection count; ``global`` selects the grown and the
        pruned connections over all evolving layers at once (total count kept).
    evolve_output : bool, default False
        Also evolve the output layer.
    layers : sequence of int, optional
        Evolve exactly these layers instead.
    """

    def __init__(self, drop_fraction: float = 0.3, every_steps: int | None = None,
                 t_end: float = 0.75, anneal: str = "cosine", scope: str = "layer",
                 evolve_output: bool = False, layers: Sequence[int] | None = None) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.schedule = UpdateSchedule(drop_fraction, every_steps, t_end, anneal)
        self.scope, self.evolve_output = scope, bool(evolve_output)
        self.layers = None if layers is None else [int(i) for i in layers]

    def params(self) -> dict:
        return {**self.schedule.params(), "scope": self.scope,
                "evolve_output": self.evolve_output, "layers": self.layers}

    def setup(self, model, steps_per_epoch: int, epochs: int, rng=None) -> None:
        self.schedule.setup(steps_per_epoch, epochs)
        evolving_layers(model, self.evolve_output, self.layers)  # validates the indices
        model.keep_dz = True  # score candidates with the step's own output gradients

    def after_step(self, model, step, epoch, rng, cache=None):
        if not self.schedule.due(step):
            return None
        return self.update(model, self.schedule.fraction(step), rng, cache)

    def candidates(self, layer, x_ib, dz_ob, k: int, rng):
        """``(rows, cols, scores)``: absent positions of ``layer.w`` and their ``|gradient|``,
        including at least the ``k`` best the method can find."""
        raise NotImplementedError

    def update(self, model, fraction: float, rng, cache) -> dict:
        """One topology update with drop fraction ``fraction``; returns per-layer counts."""
        if cache is None:
            raise ValueError(f"method {self.name!r} needs the step's (acts, derivs, dlogits) "
                             "cache to score candidates")
        be = model.backend
        xp = be.xp
        acts = cache[0]
        dzs = output_grads(model, cache)
        idx = evolving_layers(model, self.evolve_output, self.layers)
        layers = [model.layers[i] for i in idx]
        free = [free_positions(layer.w) for layer in layers]
        if self.scope == "layer":
            budget: list[int] | int = [min(int(fraction * layer.nnz), f)
                                       for layer, f in zip(layers, free)]
            wanted = budget
        else:
            budget = min(int(fraction * sum(layer.nnz for layer in layers)), sum(free))
            wanted = [min(budget, f) for f in free]
        cands = [self.candidates(layer, acts[i], dzs[i], k, rng) if k else
                 (xp.empty(0, xp.int64), xp.empty(0, xp.int64), xp.empty(0, layer.w.dtype))
                 for i, layer, k in zip(idx, layers, wanted)]
        grow = select_counts(be, [c[2] for c in cands], budget, largest=True)
        mags = [xp.abs(layer.w.data) for layer in layers]
        n_grow = [int(g.shape[0]) for g in grow]
        prune = select_counts(be, mags, n_grow if self.scope == "layer" else sum(n_grow),
                              largest=False)
        replaced = [0] * len(model.layers)
        for i, layer, (rows, cols, _), g, p in zip(idx, layers, cands, grow, prune):
            if g.shape[0] or p.shape[0]:
                replace_connections(layer, p, rows[g], cols[g])
            replaced[i] = int(g.shape[0])
        return {"replaced": replaced, "drop_fraction": fraction}
