"""SET (Mocanu et al. 2018): magnitude pruning by sign, uniform random regrowth."""

from __future__ import annotations

import math

import numpy as np

from ..nn.init import check_init_options, init_values
from .base import GrowthMethod, register_method


def magnitude_keep_mask(backend, data, zeta: float):
    """Keep mask that removes the fraction ``zeta`` of the negative and of the positive weights
    closest to zero (exact zeros are removed too), as SET does: the backend's
    :meth:`~sparsekit.backends.Backend.sign_prune_keep` (one fused kernel on the CPU)."""
    return backend.sign_prune_keep(data, zeta)


class SET(GrowthMethod):
    """Sparse Evolutionary Training.

    At the end of every epoch (or every ``every_steps`` steps), each evolving layer loses the
    fraction ``zeta`` of its negative and of its positive weights closest to zero and regrows as
    many connections at uniformly random positions, with values from the initial distribution
    and zero optimizer state.

    Parameters
    ----------
    zeta : float, default 0.3
    every_steps : int, optional
        Evolve every this many optimizer steps instead of once per epoch.
    evolve_output : bool, default False
        The reference code never evolves the layer feeding the output; set True to evolve it.
    last_epoch : bool, default False
        Also evolve after the final epoch, or with ``every_steps`` after the final step (the
        reference does not: connections regrown then are never trained).
    init, fan_in : str
        Distribution of regrown values (see :func:`sparsekit.nn.init.init_values`).

    Notes
    -----
    Regrowth samples positions absent *before* the removal, so a link removed in one update is
    never re-added by the same update (it would only reset its value); the reference code allows
    that coincidence.  The count of connections per layer is unchanged.
    """

    name = "set"

    def __init__(self, zeta: float = 0.3, every_steps: int | None = None,
                 evolve_output: bool = False, last_epoch: bool = False,
                 init: str = "he_uniform", fan_in: str = "dense") -> None:
        if not 0 <= zeta < 1:
            raise ValueError(f"zeta must lie in [0, 1), got {zeta}")
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        check_init_options(init, fan_in)
        self.zeta, self.every_steps = float(zeta), every_steps
        self.evolve_output, self.last_epoch = bool(evolve_output), bool(last_epoch)
        self.init, self.fan_in = init, fan_in

    def params(self) -> dict:
        return {"zeta": self.zeta, "every_steps": self.every_steps,
                "evolve_output": self.evolve_output, "last_epoch": self.last_epoch,
                "init": self.init, "fan_in": self.fan_in}

    _total_steps = None

    def setup(self, model, steps_per_epoch, epochs, rng=None) -> None:
        # epochs may be math.inf: an open-ended run (DynamicSparsity without total_steps)
        self._total_steps = steps_per_epoch * epochs if math.isfinite(epochs) else None

    def after_step(self, model, step, epoch, rng, cache=None):
        # As after the last epoch (last_epoch): not after the final step, whose regrown
        # connections would never be trained.
        final = self._total_steps is not None and step + 1 >= self._total_steps
        if self.every_steps and (step + 1) % self.every_steps == 0 and (
                not final or self.last_epoch):
            return self.evolve(model, rng)
        return None

    def end_of_epoch(self, model, epoch, epochs, rng):
        if self.every_steps is None and (epoch < epochs - 1 or self.last_epoch):
            return self.evolve(model, rng)
        return None

    def evolve(self, model, rng: np.random.Generator) -> dict:
        """One SET update of every evolving layer; returns the number of links replaced."""
        be = model.backend
        layers = model.layers if self.evolve_output else model.layers[:-1]
        replaced = []
        for layer in layers:
            w = layer.w
            keep = magnitude_keep_mask(be, w.data, self.zeta)
            n_new = w.nnz - int(be.xp.count_nonzero(keep))
            free = w.shape[0] * w.shape[1] - w.nnz
            if n_new > free:  # a (nearly) full layer: regrow what fits, keep the rest
                drop = be.xp.flatnonzero(~keep)[free:]
                keep[drop] = True
                n_new = free
            rows, cols = be.sample_absent(w, n_new, rng)
            rows_h = be.to_numpy(rows)
            counts = be.to_numpy(be.xp.diff(w.indptr))
            vals = init_values(rows_h, w.shape, rng, w.dtype, self.init, self.fan_in, counts,
                               be.host_threads(rows_h.shape[0]))
            layer.rebuild(keep, rows, cols, be.asarray(vals))
            replaced.append(n_new)
            # Free this layer's old arrays now, not while the next layer is rebuilt.
            del w, keep, rows, cols, rows_h, counts, vals
        return {"replaced": replaced}


class Static(GrowthMethod):
    """Static sparse training: the initial Erdős–Rényi topology never changes."""

    name = "static"


register_method("set", SET)
register_method("static", lambda **_: Static())
