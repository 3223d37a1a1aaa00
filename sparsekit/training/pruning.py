"""Hidden-neuron importance and importance pruning (Curci, Mocanu, Pechenizkiy 2021).

The importance of hidden neuron j is the sum of the magnitudes of its incoming weights — row j
of the layer that produces it, an O(nnz) pass.  Pruned neurons are removed physically: the row
leaves the producing layer, the column leaves the consuming layer, so later steps cost less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def neuron_importance(layer):
    """``sum_i |W[j, i]|`` for every output neuron j of ``layer`` (on the layer's device)."""
    xp = layer.backend.xp
    w = layer.w
    return xp.bincount(w.row_ids(), weights=xp.abs(w.data).astype(xp.float64),
                       minlength=w.shape[0])


def prune_neurons(model, percentile: float, min_neurons: int = 1) -> list[int]:
    """Remove, in every hidden layer, the neurons whose importance is at or below the
    ``percentile``-th percentile of that layer; returns how many each hidden layer lost."""
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must lie in [0, 100), got {percentile}")
    be = model.backend
    # Score every layer before removing anything, so no decision depends on another layer's.
    scores = [be.to_numpy(neuron_importance(layer)) for layer in model.layers[:-1]]
    removed = []
    for i, imp in enumerate(scores):
        producer, consumer = model.layers[i], model.layers[i + 1]
        keep = imp > np.percentile(imp, percentile)
        if keep.sum() < min_neurons:  # never empty a layer: keep the most important
            keep[np.argsort(-imp, kind="stable")[:min_neurons]] = True
        removed.append(int((~keep).sum()))
        if removed[-1]:
            producer.compact(row_mask=keep)
            consumer.compact(col_mask=keep)
    return removed


@dataclass(frozen=True)
class PruningSchedule:
    """Prune at ``epoch >= start`` every ``every`` epochs (epochs count from 1 here, as in the
    paper's "epoch > 200, every 20"), at the given ``percentile``."""

    start: int
    every: int = 10
    percentile: float = 10.0
    min_neurons: int = 1

    def __post_init__(self) -> None:
        if self.start < 1 or self.every < 1:
            raise ValueError("pruning start and every must be >= 1")
        if not 0 <= self.percentile < 100:
            raise ValueError(f"pruning percentile must lie in [0, 100), got {self.percentile}")

    def due(self, epoch_1based: int) -> bool:
        return epoch_1based >= self.start and (epoch_1based - self.start) % self.every == 0
