"""An incremental epoch loop for the scikit-learn estimators (``partial_fit``, sparse input, MSE).

:func:`sparsekit.train` runs a whole training job (run folder, checkpoints, history, test set).
The estimators need less and something else: state that survives between ``partial_fit``
calls, mini-batches cut from a ``scipy.sparse`` matrix, every sample used each epoch (a last
partial batch included), a batch size and an L2 penalty resolved per call (scikit-learn's
``batch_size="auto"`` and ``alpha``), ``shuffle=False``, copies of the best epoch's weights
for early stopping, and a regression head.  :class:`EpochRunner` is that loop; the step,
the optimizer and the growth method are the :class:`~sparsekit.training.step.Engine`'s, as in
``train()`` and every WASAP rank.

Sparse inputs are densified **one mini-batch at a time** (``batch_size x n_features``), never as
a whole matrix: the first layer's kernels take a dense feature-major batch, and a batch of a few
hundred rows is small even with tens of thousands of features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .config import TrainConfig
from .step import LOSSES, Engine


class EpochRunner:
    """An :class:`Engine` advanced an epoch at a time over whatever data each call brings.

    Parameters
    ----------
    model : SparseMLP
    config : TrainConfig
        The optimizer, growth method, schedule and batch size (``config.epochs`` is ignored:
        ``max_epochs`` is the horizon).
    loss : {"cross_entropy", "mse"}
        Softmax + cross-entropy on integer targets (a classifier), or the squared error of a
        linear output layer on float targets of shape ``(n, n_outputs)`` (a regressor).
    seed : int
        Seeds the data order, dropout and regrowth.
    max_epochs : int
        The horizon given to learning-rate schedules and growth methods (SET does not evolve
        after the last epoch of that horizon).
    """

    def __init__(self, model, config: TrainConfig, *, loss: str, seed: int,
                 max_epochs: int) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if max_epochs < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_epochs}")
        self.engine = Engine(model, config, np.random.default_rng(seed), loss=loss,
                             epochs=int(max_epochs))
        self.model, self.loss = model, loss

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.engine.epoch

    @property
    def step(self) -> int:
        """Optimizer steps completed."""
        return self.engine.step

    def restart(self, max_epochs: int) -> None:
        """A new horizon of ``max_epochs`` epochs on the current network
        (:meth:`Engine.restart <sparsekit.training.step.Engine.restart>`)."""
        if max_epochs < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_epochs}")
        self.engine.restart(max_epochs)

    @property
    def horizon(self) -> int:
        """Epochs in the current horizon (the schedules' length)."""
        return self.engine.epochs

    def set_weight_decay(self, weight_decay: float) -> None:
        """Change the optimizer's weight decay from the next step on (the estimators' ``alpha``
        is divided by the batch size, which each ``fit``/``partial_fit`` call resolves anew)."""
        engine = self.engine
        if float(weight_decay) != engine.optimizer.weight_decay:
            engine.config = engine.config.replace(weight_decay=float(weight_decay))
            engine.optimizer.weight_decay = engine.config.weight_decay

    def run_epoch(self, x, target: np.ndarray, log: Callable[[str], Any] | None = None, *,
                  batch_size: int | None = None, shuffle: bool = True,
                  sample_weight: np.ndarray | None = None) -> float:
        """One pass over ``(x, target)`` in mini-batches; returns the mean loss per sample.

        ``x`` is a dense ``(n, n_features)`` array or a ``scipy.sparse`` CSR matrix; ``target``
        holds int64 class indices (``cross_entropy``) or ``(n, n_outputs)`` floats (``mse``).
        ``batch_size`` (default the config's) is clipped to the number of samples; a last
        partial batch is trained on too.  ``shuffle=False`` visits the samples in order.
        ``sample_weight`` (float64, one per sample) weights each sample's loss
        (:meth:`Engine.train_epoch <sparsekit.training.step.Engine.train_epoch>`).
        """
        engine = self.engine
        bs = min(int(batch_size or engine.config.batch_size), x.shape[0])
        fit = engine.train_epoch(x, target, drop_last=False, sort_batches=True,
                                 batch_size=bs, shuffle=shuffle, sample_weight=sample_weight)
        engine.end_epoch(prune=False)
        if log is not None:
            log(f"epoch {engine.epoch:>3}  {self.loss} loss {fit['loss']:.4f}  "
                f"connections {sum(self.model.n_connections)}")
        return fit["loss"]

    def snapshot(self) -> list[dict[str, Any]]:
        """Copies of every layer's weights, bias, optimizer state and topology (the estimators'
        best epoch under ``early_stopping``)."""
        out = []
        for layer in self.model.layers:
            out.append({"w": layer.w.copy(), "b": layer.b.copy(),
                        "state_w": {k: v.copy() for k, v in layer.state_w.items()},
                        "state_b": {k: v.copy() for k, v in layer.state_b.items()},
                        "w_forward": None if layer.w_forward is None else layer.w_forward.copy()})
        return out

    def restore(self, snapshot: list[dict[str, Any]]) -> None:
        """Put a :meth:`snapshot` back into the model (the counters and generator go on)."""
        for layer, saved in zip(self.model.layers, snapshot):
            layer.w, layer.b = saved["w"], saved["b"]
            layer.state_w, layer.state_b = saved["state_w"], saved["state_b"]
            layer.w_forward = saved["w_forward"]
