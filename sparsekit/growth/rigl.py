"""RigL — Rigged Lottery (Evci et al., 2020), as an exact reference for GSE.

RigL grows the absent connections with the largest ``|∂L/∂w|`` over *all* positions, so it
needs the dense gradient ``dZ Xᵀ`` of the update step.  It is computed here in row tiles of at
most ``tile_elems`` entries, each merged into a running top-k, so memory stays
O(tile + k) — but the work is ``2·batch·n_in·n_out`` per update, quadratic in width.  Layers
with more than ``max_positions`` positions are refused; ``gse`` is the always-sparse method.
"""

from __future__ import annotations

from .base import register_method
from .schedule import GradientGrowth, evolving_layers

#: Largest ``n_in * n_out`` RigL accepts by default (2^26: e.g. 8192 x 8192).
MAX_POSITIONS = 2**26
#: Entries of one dense gradient tile (2^22 float32 = 16 MiB).
TILE_ELEMS = 2**22


def dense_topk_absent(be, w, x_ib, dz_ob, k: int, tile_elems: int = TILE_ELEMS):
    """The ``k`` absent positions of W with the largest ``|Σ_b dz[r, b] x[c, b]|``.

    Returns ``(rows, cols, scores)`` sorted by (row, col); ties go to the lowest position, the
    same rule as :meth:`Backend.select` on a (row, col)-sorted candidate list.  ``k`` must not
    exceed the number of absent positions.
    """
    xp = be.xp
    n_out, n_in = w.shape
    per_tile = max(1, int(tile_elems) // max(n_in, 1))
    indptr = be.to_numpy(w.indptr)  # n_out + 1 offsets on the host, to slice tiles
    row_ids = w.row_ids()
    best_scores = xp.empty(0, dtype=x_ib.dtype)
    best_keys = xp.empty(0, dtype=xp.int64)
    x_bi = x_ib.T
    for r0 in range(0, n_out, per_tile):
        r1 = min(n_out, r0 + per_tile)
        tile = xp.abs(dz_ob[r0:r1] @ x_bi)
        lo, hi = int(indptr[r0]), int(indptr[r1])
        if hi > lo:  # existing connections can never be grown: below every |gradient|
            tile[row_ids[lo:hi] - r0, w.indices[lo:hi]] = -1
        flat = tile.ravel()
        pick = be.select(flat, min(k, flat.shape[0]), largest=True)
        scores = xp.concatenate([best_scores, flat[pick]])
        keys = xp.concatenate([best_keys, pick + r0 * n_in])
        keep = be.select(scores, min(k, scores.shape[0]), largest=True)
        best_scores, best_keys = scores[keep], keys[keep]
    return best_keys // n_in, best_keys % n_in, best_scores


class RigL(GradientGrowth):
    """RigL with the exact dense gradient, for small layers (a reference for GSE).

    Parameters
    ----------
    drop_fraction : float, default 0.3
        α, cosine-annealed to 0 at ``t_end``.
    max_positions : int, default 2**26
        Refuse layers with more than this many ``n_in * n_out`` positions (suggesting ``gse``).
    tile_elems : int, default 2**22
        Size of one dense gradient tile.
    every_steps, t_end, anneal, scope, evolve_output, layers
        See :class:`~sparsekit.growth.schedule.GradientGrowth`.

    Notes
    -----
    Google's RigL lets a connection pruned by an update be regrown by it (keeping its old
    value); here, as in GSE, candidates are the positions absent before the update, so
    ``GSE`` with a huge γ selects exactly what this class selects.
    """

    name = "rigl"

    def __init__(self, max_positions: int = MAX_POSITIONS, tile_elems: int = TILE_ELEMS,
                 **schedule) -> None:
        if int(max_positions) != max_positions or max_positions < 1:
            raise ValueError(f"max_positions must be a whole number >= 1, got {max_positions}")
        if int(tile_elems) != tile_elems or tile_elems < 1:
            raise ValueError(f"tile_elems must be a whole number >= 1, got {tile_elems}")
        super().__init__(**schedule)
        self.max_positions, self.tile_elems = int(max_positions), int(tile_elems)

    def params(self) -> dict:
        return {"max_positions": self.max_positions, "tile_elems": self.tile_elems,
                **super().params()}

    def setup(self, model, steps_per_epoch, epochs, rng=None) -> None:
        super().setup(model, steps_per_epoch, epochs, rng)
        for i in evolving_layers(model, self.evolve_output, self.layers):
            self._check_size(model.layers[i].w.shape, f"layer {i}")

    def _check_size(self, shape, where: str = "a layer") -> None:
        n_out, n_in = shape
        if n_out * n_in > self.max_positions:
            raise ValueError(
                f"rigl needs the dense gradient of {where} ({n_out} x {n_in} = "
                f"{n_out * n_in} positions > max_positions={self.max_positions}); use "
                "method='gse', whose sampled gradient costs O(nnz), or raise max_positions")

    def candidates(self, layer, x_ib, dz_ob, k, rng):
        self._check_size(layer.w.shape)
        return dense_topk_absent(layer.backend, layer.w, x_ib, dz_ob, k, self.tile_elems)


register_method("rigl", RigL)
