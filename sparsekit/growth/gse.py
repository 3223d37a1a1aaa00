"""GSE — Guided Stochastic Exploration (Heddes et al., 2024).

RigL with the dense gradient replaced by the gradient of a random subset of the absent
connections: each update samples ``⌈γ·nnz⌉`` absent positions (see :func:`sample_candidates`),
scores them with the sampled SDDMM (``backend.sampled_grad``), grows the top k by ``|gradient|``
and prunes the k smallest ``|w|``.  Everything is O(nnz) per layer: nothing of size
``n_in x n_out`` is formed.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends import Backend
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
    """``min(m, free)`` distinct absent positions of W, sorted by (row, col), in W's index dtype:
    a uniform ``m``-subset of the absent positions (or drawn from the GraBo/GraEst marginals).

    A backend with its own ``sample_absent`` kernel (the CPU's per-row sampler) draws them;
    otherwise uniform draws use :func:`absent_by_rank`, which needs no rejection rounds and no
    membership tests, and weighted ones the generic ``Backend.sample_absent``.

    When ``m`` reaches half the free positions every free position is returned instead (the
    GSE reference does the same for layers at most 50 % sparse): the result is then exact.
    Draws come from ``rng`` on the host; memory is O(nnz + m), nothing of size ``n_in x n_out``.
    """
    xp = be.xp
    free = free_positions(w)
    m = min(int(m), free)
    if m <= 0:
        idt = w.indices.dtype
        return xp.empty(0, dtype=idt), xp.empty(0, dtype=idt)
    if 2 * m >= free:
        return be.sample_absent(w, free, rng)
    native = getattr(type(be), "sample_absent", None) is not Backend.sample_absent
    if native or row_weights is not None or col_weights is not None:
        return be.sample_absent(w, m, rng, row_weights, col_weights)
    return absent_by_rank(be, w, m, rng)


def absent_by_rank(be, w, m: int, rng: np.random.Generator):
    """A uniform ``m``-subset of W's absent positions (``m`` at most the free count), sorted by
    (row, col), in W's index dtype, with the backend's array module only.

    Drawn in *rank space*: ``m`` distinct ranks among the ``free`` empty positions (see
    :func:`distinct_ranks`), each mapped to its (row, col) through W's sorted keys with one
    ``searchsorted``.  No draw lands on an existing connection, so there is no membership test
    and no rejection round (the generic ``Backend.sample_absent`` needs both).  O(nnz + m).
    """
    xp = be.xp
    idt = w.indices.dtype
    ranks = be.asarray(distinct_ranks(rng, free_positions(w), m))
    # gaps[i]: the empty positions before the i-th stored key (row-major, non-decreasing), so
    # the empty position of rank u is u + #{i : gaps[i] <= u}.
    gaps = w.row_ids().astype(xp.int64)
    gaps *= w.shape[1]
    gaps += w.indices
    gaps -= xp.arange(w.nnz, dtype=xp.int64)
    keys = xp.searchsorted(gaps, ranks, side="right")
    del gaps
    keys += ranks
    del ranks
    rows = keys // w.shape[1]
    keys -= rows * w.shape[1]
    return rows.astype(idt), keys.astype(idt)


def distinct_ranks(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``m`` distinct integers drawn uniformly from ``[0, n)`` (a uniform ``m``-subset), sorted,
    as int64 on the host.  O(m) memory; meant for ``m <= n / 2``.

    Draws with replacement, a few more than ``m`` distinct values are expected to need, and
    keeps the distinct ones (sort, then drop repeats); a short round draws again and merges.
    Given its size, the set of distinct values of i.i.d. uniform draws is a uniform subset, so
    dropping a uniform random choice of the surplus leaves a uniform ``m``-subset.
    """
    m, n = int(m), int(n)
    if not 0 <= m <= n:
        raise ValueError(f"cannot draw {m} distinct values from {n}")
    have = np.empty(0, dtype=np.int64)
    while have.shape[0] < m:
        need = m - have.shape[0]
        # Draws that give `need` new values in expectation, plus 4 standard deviations.
        left = n - have.shape[0]
        draws = -left * math.log1p(-need / left) if need < left else 2.0 * need
        draws = int(draws * n / left) + 4 * math.isqrt(need) + 16
        keys = np.concatenate([have, rng.integers(0, n, size=draws, dtype=np.int64)])
        keys.sort()
        first = np.empty(keys.shape[0], dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        have = keys[first]
    surplus = have.shape[0] - m
    if surplus:
        keep = np.ones(have.shape[0], dtype=bool)
        keep[rng.choice(have.shape[0], size=surplus, replace=False)] = False
        have = have[keep]
    return have


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
        rows, cols = sample_candidates(be, w, math.ceil(min(self.gamma * w.nnz, 2.0**62)), rng,
                                       row_w, col_w)  # a huge gamma: every free position
        scores = be.xp.abs(be.sampled_grad(x_ib, dz_ob, rows, cols))
        return rows, cols, scores


register_method("gse", GSE)
