"""An incremental epoch loop for the scikit-learn estimators (``partial_fit``, sparse input, MSE).

:func:`sparsekit.train` runs a whole training job (run folder, checkpoints, history, test set).
The estimators need less and something else: state that survives between ``partial_fit``
calls, mini-batches cut from a ``scipy.sparse`` matrix, every sample used each epoch (a last
partial batch included), and a regression head.  :class:`EpochRunner` is that loop; the step,
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

    def run_epoch(self, x, target: np.ndarray, log: Callable[[str], Any] | None = None) -> float:
        """One pass over ``(x, target)`` in shuffled mini-batches; returns the mean loss.

        ``x`` is a dense ``(n, n_features)`` array or a ``scipy.sparse`` CSR matrix; ``target``
        holds int64 class indices (``cross_entropy``) or ``(n, n_outputs)`` floats (``mse``).
        A batch larger than the data becomes one batch of all of it.
        """
        engine = self.engine
        fit = engine.train_epoch(x, target, drop_last=False, sort_batches=True,
                                 batch_size=min(engine.config.batch_size, x.shape[0]))
        engine.end_epoch(prune=False)
        if log is not None:
            log(f"epoch {engine.epoch:>3}  {self.loss} loss {fit['loss']:.4f}  "
                f"connections {sum(self.model.n_connections)}")
        return fit["loss"]
