"""An incremental epoch loop for the scikit-learn estimators (``partial_fit``, sparse input, MSE).

:func:`sparsekit.train` runs a whole training job (run folder, checkpoints, history, test set).
The estimators need something smaller that it does not offer: state that survives between
``partial_fit`` calls, mini-batches cut from a ``scipy.sparse`` matrix, and a regression head.
:class:`EpochRunner` is that loop.  It reuses the same pieces as ``train()`` — the model's
``forward_train``/``backward`` passes, :class:`~sparsekit.training.optim.MomentumSGD`, the learning-rate
schedule and the growth methods' hooks — and differs only in the loss at the output.

Sparse inputs are densified **one mini-batch at a time** (``batch_size x n_features``), never as
a whole matrix: the first layer's kernels take a dense feature-major batch, and a batch of a few
hundred rows is small even with tens of thousands of features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._align import feature_major_batch
from ..growth import get_method
from ..nn.activations import softmax_cross_entropy
from ..nn.model import SparseMLP
from .optim import LRSchedule, MomentumSGD

LOSSES = ("cross_entropy", "mse")


def mse(xp, out_ob, target_ob, as_float: bool = True):
    """Mean over the batch of ``0.5 * sum_k (out_k - target_k)**2`` and its gradient.

    Returns ``(loss, out_ob, dout_ob)`` (the same shape as :func:`softmax_cross_entropy`'s
    result); the gradient is already divided by the batch size.
    """
    diff = out_ob - target_ob
    n = out_ob.shape[1]
    loss = 0.5 * (diff * diff).sum() / n
    return (float(loss) if as_float else loss), out_ob, diff / out_ob.dtype.type(n)


def clip_global_norm(xp, grads, max_norm: float) -> None:
    """Scale every ``(grad_w, grad_b)`` in place so that their joint L2 norm is <= ``max_norm``.

    The factor stays on the device (no synchronisation).  Plain SGD on a squared error has no
    bound on the gradient, so unscaled inputs can otherwise drive it to inf.
    """
    sq = sum((g * g).sum() for pair in grads for g in pair)
    factor = xp.minimum(1.0, max_norm / (xp.sqrt(sq) + 1e-12))
    for pair in grads:
        for g in pair:
            g *= factor.astype(g.dtype)


class EpochRunner:
    """Optimizer, growth method, RNG and step counter of one model, advanced an epoch at a time.

    Parameters
    ----------
    model : SparseMLP
    loss : {"cross_entropy", "mse"}
        Softmax + cross-entropy on integer targets (a classifier), or the squared error of a
        linear output layer on float targets of shape ``(n, n_outputs)`` (a regressor).
    seed : int
        Seeds the data order, dropout and regrowth.
    max_grad_norm : float, optional
        Rescale a step's gradients when their global L2 norm exceeds this.
    max_epochs : int
        The horizon given to learning-rate schedules and growth methods (SET does not evolve
        after the last epoch of that horizon).
    method, method_params, lr, momentum, weight_decay, decay, lr_schedule, warmup_epochs, zeta :
        As in :func:`sparsekit.train`.
    """

    def __init__(self, model: SparseMLP, *, loss: str, seed: int, max_epochs: int,
                 method: str = "set", method_params: dict | None = None, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 2e-4, decay: str = "coupled",
                 lr_schedule: str = "constant", warmup_epochs: float = 0.0,
                 zeta: float = 0.3, max_grad_norm: float | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        if max_epochs < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_epochs}")
        self.model, self.loss, self.max_epochs = model, loss, int(max_epochs)
        params = dict(method_params or {})
        if method == "set":  # the same defaults train() gives SET
            # Regrowth at the dense fan-in scale whatever the initial one (see training.train).
            params = {"zeta": zeta, "init": model.init, "fan_in": "dense", **params}
        self.growth = get_method(method, **params)
        self.opt = MomentumSGD(lr, momentum, weight_decay, decay)
        self.schedule = LRSchedule(lr_schedule, epochs=self.max_epochs,
                                   warmup_epochs=warmup_epochs)
        self.base_lr = float(lr)
        self.max_grad_norm = max_grad_norm
        self.rng = np.random.default_rng(seed)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self._set_up = False

    def _loss(self, xp, out, target):
        if self.loss == "mse":
            return mse(xp, out, target, as_float=False)
        return softmax_cross_entropy(xp, out, target, as_float=False)

    def run_epoch(self, x, target: np.ndarray, batch_size: int,
                  log: Callable[[str], Any] | None = None) -> float:
        """One pass over ``(x, target)`` in shuffled mini-batches; returns the mean loss.

        ``x`` is a dense ``(n, n_features)`` array or a ``scipy.sparse`` CSR matrix; ``target``
        holds int64 class indices (``cross_entropy``) or ``(n, n_outputs)`` floats (``mse``).
        A last partial batch is trained on too, so no sample is ever left out of an epoch.
        """
        model = self.model
        be, xp = model.backend, model.backend.xp
        n = x.shape[0]
        batch_size = max(1, min(int(batch_size), n))
        n_hidden = len(model.layers) - 1
        steps = -(-n // batch_size)
        if not self._set_up:
            # Methods that schedule by fraction of training (GSE, Top-KAST, RigL) learn the run's
            # length here: the first epoch's step count over max_epochs epochs.
            self.growth.setup(model, steps, self.max_epochs, self.rng)
            self._set_up = True
        perm = self.rng.permutation(n)
        total = 0.0
        for s in range(steps):
            idx = np.sort(perm[s * batch_size:(s + 1) * batch_size])
            xb = be.asarray(feature_major_batch(x, idx, model.dtype))
            tb = target[idx]
            tb = be.asarray(np.ascontiguousarray(tb.T, dtype=model.dtype) if tb.ndim == 2
                            else tb)
            seeds = self.rng.integers(0, 2**63, size=n_hidden)
            out, acts, derivs = model.forward_train(xb, seeds)
            loss, _, dout = self._loss(xp, out, tb)
            grads = model.backward(acts, derivs, dout)
            if self.max_grad_norm is not None:
                clip_global_norm(xp, grads, self.max_grad_norm)
            lr = self.schedule(self.base_lr, self.epoch + s / steps)
            for layer, (gw, gb) in zip(model.layers, grads):
                self.opt.update(layer.w.data, gw, layer.vel_w, lr)
                self.opt.update(layer.b, gb, layer.vel_b, lr)
            total += float(loss) * len(idx)
            self.growth.after_step(model, self.step, self.epoch, self.rng,
                                   (acts, derivs, dout))
            self.step += 1
        mean = total / n
        if not np.isfinite(mean):
            raise FloatingPointError(f"training loss became {mean} in epoch {self.epoch + 1}; "
                                     f"lower the learning rate (now {self.base_lr})")
        self.growth.end_of_epoch(model, self.epoch, self.max_epochs, self.rng)
        self.epoch += 1
        if log is not None:
            log(f"epoch {self.epoch:>3}  {self.loss} loss {mean:.4f}  "
                f"connections {sum(model.n_connections)}")
        return mean
