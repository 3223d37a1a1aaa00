"""GSE — Guided Stochastic Exploration (Heddes et al., 2024).

RigL with the dense gradient replaced by the gradient of a random subset of the absent
connections: each update samples ``⌈γ·nnz⌉`` absent positions, scores them with the sampled
SDDMM (``backend.sampled_grad``), grows the top k by ``|gradient|`` and prunes the k smallest
``|w|``.  Everything is O(nnz) per layer: nothing of size ``n_in x n_out`` is formed.
"""

from __future__ import annotations

import math

import numpy as np

from .base import register_method
from .schedule import GradientGrowth, free_positions

SAMPLERS = ("uniform", "grabo", "graest")


def activity_marginals(be, x_ib, dz_ob, sampler: str, rng: np.random.Generator):
    """Host arrays ``(row_weights, col_weights)`` for sampling a layer's candidates.

    Rows of W are output neurons, so row weights come from the output gradients ``dz_ob`` and
    column weights from the inputs ``x_ib`` (both feature-major, one column per sample):

    * ``grabo`` — ``Σ_b |dz[r, b]|`` and ``Σ_b |x[c, b]|``: their product bounds
      ``|Σ_b dz[r, b] x[c, b]|``, the candidate's gradient magnitude.
    * ``graest`` — ``|Σ_b s_b dz[r, b]|`` and ``|Σ_b s_b x[c, b]|`` with random signs s (one
      draw for both): their product equals ``|gradient|`` in expectation (an AMS sketch).

    ``uniform`` returns ``(None, None)``.  Each marginal gets a floor of 1e-3 of its mean, so
    that neurons with no activity in this batch (e.g. always-black pixels) stay reachable and the
    rejection sampler cannot run out of admissible positions; all-zero marginals fall back to
    uniform.
    """
    if sampler == "uniform":
        return None, None
    xp = be.xp
    if sampler == "grabo":
        row, col = xp.abs(dz_ob).sum(axis=1), xp.abs(x_ib).sum(axis=1)
    else:
        signs = be.asarray(rng.choice(np.array([-1.0, 1.0]), size=x_ib.shape[1])
                           .astype(x_ib.dtype))
        row, col = xp.abs(dz_ob @ signs), xp.abs(x_ib @ signs)
    return _floored(be.to_numpy(row)), _floored(be.to_numpy(col))


def _floored(p: np.ndarray):
    p = np.asarray(p, dtype=np.float64)
    mean = float(p.mean()) if p.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return None
    return p + 1e-3 * mean


def sample_candidates(be, w, m: int, rng: np.random.Generator, row_weights=None,
                      col_weights=None):
    """``min(m, free)`` distinct absent positions of W, sorted by (row, col).

    When ``m`` reaches half the free positions every free position is returned instead (the
    GSE reference does the same for layers at most 50 % sparse): sampling that many without
    replacement would be no cheaper, and the result is then exact.
    """
    free = free_positions(w)
    m = min(int(m), free)
    if 2 * m >= free:
        return be.sample_absent(w, free, rng)
    return be.sample_absent(w, m, rng, row_weights, col_weights)


class GSE(GradientGrowth):
    """Guided Stochastic Exploration: gradient growth scored on a sampled candidate subset.

    Parameters
    ----------
    gamma : float, default 1
        Subset factor γ: an update scores ``⌈γ·nnz⌉`` absent candidates per layer (all of them
        when that reaches half the free positions).  γ → ∞ gives RigL; the paper finds γ ≈ 1
        enough.
    sampler : {"uniform", "grabo", "graest"}, default "uniform"
        How candidates are drawn: uniformly, or from the product of row/column activity
        marginals of the update step's batch (see :func:`activity_marginals`).
    drop_fraction : float, default 0.3
        α: at most this fraction of a layer's connections changes per update, cosine-annealed.
    every_steps, t_end, anneal, scope, evolve_output, layers
        See :class:`~sparsekit.growth.schedule.GradientGrowth`.  By default GSE updates once per
        epoch (after its last step) until 75 % of training.

    Notes
    -----
    New connections start at weight 0 with zero momentum (as in the paper); the count of
    connections per layer is unchanged with ``scope="layer"``.
    """

    name = "gse"

    def __init__(self, gamma: float = 1.0, sampler: str = "uniform", **schedule) -> None:
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a positive number, got {gamma}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        super().__init__(**schedule)
        self.gamma, self.sampler = float(gamma), sampler

    def params(self) -> dict:
        return {"gamma": self.gamma, "sampler": self.sampler, **super().params()}

    def candidates(self, layer, x_ib, dz_ob, k, rng):
        be = layer.backend
        w = layer.w
        row_w, col_w = activity_marginals(be, x_ib, dz_ob, self.sampler, rng)
        rows, cols = sample_candidates(be, w, math.ceil(self.gamma * w.nnz), rng, row_w, col_w)
        scores = be.xp.abs(be.sampled_grad(x_ib, dz_ob, rows, cols))
        return rows, cols, scores


register_method("gse", GSE)
