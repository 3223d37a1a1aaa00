"""The training engine: the one training step and epoch that every front end runs.

:class:`Engine` holds what a run advances — the model, its optimizer (per-connection state kept
by the layers), the growth method, the learning-rate schedule, the generator and the step and
epoch counters — and does one thing in one place: a step is batch → forward → loss → backward
→ (optional gradient hook) → optimizer update → growth ``after_step``; an epoch is a shuffled
pass of such steps; :meth:`Engine.end_epoch` does importance pruning and the growth method's
end-of-epoch update.  ``train()`` (:mod:`sparsekit.training.loop`), the scikit-learn estimators
(:mod:`sparsekit.training.runner`) and every WASAP rank (:mod:`sparsekit.parallel`) build an
:class:`Engine` from a :class:`~sparsekit.training.config.TrainConfig` and call it; none of
them has a step of its own.  WASAP's gradient allreduce is a ``grad_hook``.

The draws from the generator happen in one fixed order (data permutation per epoch, dropout
seeds per step, then whatever the growth method draws), so a seed fixes the run and a resumed
run continues the same stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._streams import GOLDEN
from ..growth import GrowthMethod, get_method
from ..nn.activations import CrossEntropyLoss
from .config import TrainConfig
from .flops import FlopCounter
from .optim import OPTIMIZERS, LRSchedule, MomentumSGD, Optimizer
from .pruning import PruningSchedule, prune_neurons

LOSSES = ("cross_entropy", "mse")


def mse(xp, out_ob, target_ob, as_float: bool = True):
    """Mean over the batch of ``0.5 * sum_k (out_k - target_k)**2`` and its gradient.

    Returns ``(loss, out_ob, dout_ob)`` (the same shape as
    :func:`~sparsekit.nn.activations.softmax_cross_entropy`'s result); the gradient is already
    divided by the batch size.
    """
    diff = out_ob - target_ob
    n = out_ob.shape[1]
    loss = 0.5 * (diff * diff).sum() / n
    return (float(loss) if as_float else loss), out_ob, diff / out_ob.dtype.type(n)


def sample_losses(xp, out_ob, target, loss: str):
    """Each sample's loss, from the outputs a loss function returned (probabilities for
    ``cross_entropy``, as :func:`~sparsekit.nn.activations.cross_entropy_of` clips them;
    the linear outputs for ``mse``): a vector of the batch's length, on the device."""
    if loss == "cross_entropy":
        picked = out_ob[target, xp.arange(out_ob.shape[1])]
        return -xp.log(xp.maximum(picked, 1e-12))
    diff = out_ob - target
    return 0.5 * (diff * diff).sum(axis=0)


def weighted_loss(loss_fn, xp, weights_b, target, loss: str):
    """``loss_fn`` (mean over the batch and its gradient) turned into the weighted mean
    ``sum_i w_i * loss_i / sum_i w_i`` and its gradient, as scikit-learn's MLPs weight samples.

    The gradient is scaled in place, column by column, by ``w_i * n / sum(w)`` (it was divided
    by ``n``), so the CPU step's reused buffer stays the one its backward reads.  A batch whose
    weights are all zero has loss 0 and a zero gradient.
    """
    def fn(logits):
        _, out, dout = loss_fn(logits)
        total = weights_b.sum()
        safe = xp.where(total > 0, total, 1.0)
        scale = weights_b * (weights_b.shape[0] / safe)
        dout *= scale.astype(dout.dtype)[None, :]
        value = (weights_b * sample_losses(xp, out, target, loss).astype(weights_b.dtype)).sum()
        return value / safe, out, dout
    return fn


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


def make_growth(config: TrainConfig, model) -> GrowthMethod:
    """The growth method of ``config`` for ``model`` — the only place one is set up.

    SET regrows at the initial distribution of the model but always at the paper's dense
    fan-in scale, even when the initial weights use the actual one: scaled by a neuron's
    ~epsilon inputs, regrown values are ~5x a trained weight, and replacing 30 % of the links
    with such values each epoch made Fashion-MNIST training diverge
    (benchmarks/results/train-cpu.md).
    """
    if isinstance(config.method, GrowthMethod):
        return config.method
    return get_method(config.method, **config.growth_params(model.init))


def make_optimizer(config: TrainConfig) -> Optimizer:
    """The optimizer of ``config`` (its scalar state starts at step 0)."""
    if config.optimizer == "sgd":
        return MomentumSGD(config.momentum, config.weight_decay, config.decay, config.nesterov)
    return OPTIMIZERS[config.optimizer](config.betas, config.adam_eps, config.weight_decay)


def rank_seeds(seeds, rank: int) -> list[int]:
    """Dropout seeds of WASAP rank ``rank``: the shared draw offset by the rank (rank 0:
    unchanged), so ranks drawing from one generator do not share dropout masks."""
    return [(int(s) + rank * int(GOLDEN)) % 2**63 for s in seeds]


class Engine:
    """One model's training state, advanced a step, an epoch and an end of epoch at a time.

    Parameters
    ----------
    model : SparseMLP
    config : TrainConfig
    rng : numpy.random.Generator
        Data order, dropout and topology draws.
    loss : {"cross_entropy", "mse"}
        Softmax + cross-entropy on integer labels, or the squared error of a linear output on
        float targets of shape ``(n, n_outputs)``.
    epochs : int, optional
        The horizon of the learning-rate schedule and the growth method (default
        ``config.epochs``); the estimators pass ``max_iter``.
    """

    def __init__(self, model, config: TrainConfig, rng: np.random.Generator, *,
                 loss: str = "cross_entropy", epochs: int | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.model, self.config, self.rng, self.loss = model, config, rng, loss
        self.growth = make_growth(config, model)
        self.optimizer = make_optimizer(config)
        self.optimizer.attach(model)
        # the horizon, the learning-rate schedule and the counters (steps and epochs completed)
        self.restart(config.epochs if epochs is None else epochs)
        self.pruning = (PruningSchedule(config.prune_start, config.prune_every,
                                        config.prune_percentile)
                        if config.prune_start is not None else None)
        self.flops = FlopCounter(config.batch_size, self.optimizer.ops_per_value)
        # Activations, gradients and their derivatives reused from step to step (the backend
        # decides what to keep): no page faults from fresh arrays in the step.
        self._buffers: dict = {}

    #: The learning rate's name in the front end's errors (the estimators say
    #: ``learning_rate_init``).
    lr_name = "lr"

    def __getstate__(self) -> dict:
        # The reused arrays are scratch: a pickled engine (inside a fitted estimator) leaves
        # them out, and one unpickled onto read-only memory must not write into them.
        return {**self.__dict__, "_buffers": {}}

    # --- the pieces of a step -----------------------------------------------------------------
    def lr_at(self, epoch: float) -> float:
        """The scheduled learning rate at a (fractional) epoch."""
        return self.schedule(self.config.lr, epoch)

    def restart(self, epochs: int) -> None:
        """Start a horizon of ``epochs`` epochs on the current network (the first one at
        construction; later ones are warm restarts): the step and epoch counters, the
        learning-rate schedule and the growth method's schedule begin again; the weights, the
        optimizer's state and the generator go on.  The estimators' warm ``fit`` restarts, and
        ``partial_fit`` once a horizon is spent, so that neither trains on at a learning rate
        annealed to 0 with a frozen topology."""
        self.epochs = int(epochs)
        self.schedule = LRSchedule(self.config.lr_schedule, epochs=self.epochs,
                                   step_size=self.config.lr_step_size,
                                   gamma=self.config.lr_gamma,
                                   warmup_epochs=self.config.warmup_epochs)
        self.step = 0   # optimizer steps completed over the horizon
        self.epoch = 0  # epochs completed
        self._planned = False

    def plan(self, steps_per_epoch: int) -> None:
        """Tell the growth method the run's length (once; again after a resume)."""
        if not self._planned:
            self.growth.setup(self.model, max(int(steps_per_epoch), 1), self.epochs, self.rng)
            self._planned = True

    def batch(self, x, target, idx):
        """``(x_ib, target)`` of rows ``idx`` on the model's device (one host copy each)."""
        model = self.model
        xb = model.backend.feature_major(x, idx, model.dtype, self._buffers)
        return xb, self.targets(target, idx)

    def targets(self, target, idx):
        """The targets of rows ``idx`` on the model's device (regression targets
        feature-major, like the outputs)."""
        tb = target[idx]
        if tb.ndim == 2:
            tb = np.ascontiguousarray(tb.T, dtype=self.model.dtype)
        return self.model.backend.asarray(tb)

    def gradients(self, xb, tb, seeds, rule=None, idx=None, weights=None):
        """Forward, loss and backward: ``(loss, out, grads, cache)``; ``loss`` stays on the
        device and ``cache`` is what gradient-guided growth methods read (valid until the next
        step: the arrays are reused).

        ``rule`` (the optimizer's :meth:`~sparsekit.training.optim.Optimizer.backend_rule`)
        lets the backend apply the update inside its backward pass; ``grads`` is then None.
        ``idx``: ``xb`` is the whole batch-major input and the batch its rows ``idx``, which
        the backend gathers itself, and the three run as one pass
        (:meth:`~sparsekit.nn.model.SparseMLP.train_pass`).  ``weights``: the batch's sample
        weights (float64, on the device), for the weighted mean loss (:func:`weighted_loss`).
        """
        model = self.model
        xp = model.backend.xp
        if self.loss == "cross_entropy":
            loss_fn = CrossEntropyLoss(model.backend, tb)
        else:
            def loss_fn(logits):
                return mse(xp, logits, tb, as_float=False)
        if weights is not None:
            loss_fn = weighted_loss(loss_fn, xp, weights, tb, self.loss)
        if idx is None:
            out, acts, derivs = model.forward_train(xb, seeds, buffers=self._buffers)
            loss, out, dout = loss_fn(out)
            grads = model.backward(acts, derivs, dout, update=rule, buffers=self._buffers)
            cache = (acts, derivs, dout)
        else:
            loss, out, grads, cache = model.train_pass(xb, idx, seeds, loss_fn, update=rule,
                                                       buffers=self._buffers)
        if grads is not None and self.config.max_grad_norm is not None:
            clip_global_norm(xp, grads, self.config.max_grad_norm)
        return loss, out, grads, cache

    def apply(self, grads, lr: float) -> None:
        """The optimizer update (and its FLOPs) for ``grads`` at rate ``lr``; ``grads`` None:
        the backend already applied it (see :meth:`gradients`)."""
        if grads is None:
            self.optimizer.applied_by_backend()
        else:
            self.optimizer.step(self.model, grads, lr)
        self.flops.step(self.model)

    def train_step(self, x, target, idx, lr: float, *, rank: int = 0,
                   grad_hook: Callable[[list], list] | None = None, batch_weight=None):
        """The training step on rows ``idx`` of ``(x, target)`` at rate ``lr``: batch, dropout
        seeds, forward, loss, backward, ``grad_hook``, optimizer update, growth ``after_step``.

        ``batch_weight`` (float64, one per row of ``idx``): the step minimises the weighted
        mean loss of the batch instead of the mean.  Returns ``(loss, correct, stats)``: the
        batch's (weighted) mean loss and (classification) count of right answers, both still
        on the device, and the growth method's statistics.
        """
        tb = self.targets(target, idx)
        weights = None if batch_weight is None else self.model.backend.asarray(batch_weight)
        seeds = self.rng.integers(0, 2**63, size=len(self.model.layers) - 1)
        if rank:
            seeds = rank_seeds(seeds, rank)
        # Without a hook or clipping between gradient and update, the backend may fuse them.
        rule = (self.optimizer.backend_rule(lr)
                if grad_hook is None and self.config.max_grad_norm is None else None)
        loss, out, grads, cache = self.gradients(x, tb, seeds, rule, idx=idx, weights=weights)
        if grad_hook is not None:
            grads = grad_hook(grads)
        self.apply(grads, lr)
        del grads  # free before a topology update, and before the next step's forward
        correct = (out.argmax(axis=0) == tb).sum() if self.loss == "cross_entropy" else None
        del out
        try:
            stats = self.after_step(cache)
        except ValueError:
            # A growth method scoring a diverged network meets NaN first; say what happened
            # (the loss is read only here: no device synchronisation on the normal path).
            if np.isfinite(float(loss)):
                raise
            raise self.diverged(float(loss)) from None
        return loss, correct, stats

    def diverged(self, loss: float) -> FloatingPointError:
        """The error for a training loss that became ``loss`` (inf or NaN)."""
        return FloatingPointError(
            f"training loss became {loss} in epoch {self.epoch + 1}; lower the learning rate "
            f"({self.lr_name}, now {self.config.lr})")

    def after_step(self, cache=None) -> dict | None:
        """The growth method's per-step hook; advances the step counter."""
        stats = self.growth.after_step(self.model, self.step, self.epoch, self.rng, cache)
        if stats:
            self.flops.update(self.model, self.growth, stats)
        self.step += 1
        return stats

    # --- an epoch -------------------------------------------------------------------------
    def train_epoch(self, x, target, rows=None, *, drop_last: bool = True,
                    sort_batches: bool = False, rank: int = 0,
                    grad_hook: Callable[[list], list] | None = None,
                    lr_scale: Callable[[float], float] | None = None,
                    progress: bool = False, batch_size: int | None = None,
                    shuffle: bool = True, sample_weight=None) -> dict[str, Any]:
        """One shuffled pass over ``x`` (or its rows ``rows``) in mini-batches.

        Parameters
        ----------
        x : ndarray or scipy.sparse CSR of shape (n, n_features)
            Batch-major inputs; a sparse ``x`` is densified one batch at a time.
        target : ndarray
            Class indices (cross-entropy) or ``(n, n_outputs)`` floats (mse).
        rows : int array, optional
            Train on these rows only (a WASAP shard).
        drop_last : bool
            Leave out a last partial batch (``train()``), or train on it too (estimators).
        sort_batches : bool
            Visit each batch's rows in increasing order (faster row gathers from sparse input).
        rank : int
            WASAP rank: offsets the dropout seeds (see :func:`rank_seeds`).
        grad_hook : callable, optional
            ``grads -> grads`` between backward and update (WASAP's allreduce).
        lr_scale : callable, optional
            ``epoch -> factor`` multiplying the scheduled rate (WASAP's linear scaling).
        progress : bool
            A tqdm bar over the steps.
        batch_size : int, optional
            This epoch's batch size instead of ``config.batch_size`` (the estimators cap it at
            the number of samples of a small ``partial_fit`` call).
        shuffle : bool
            Visit the samples in a new random order (True, one ``permutation`` draw from the
            generator) or in their stored order, drawing nothing (the estimators'
            ``shuffle=False``).
        sample_weight : float64 array of shape (n_samples,), optional
            Each sample's weight (indexed like ``x``): every step minimises its batch's
            weighted mean loss (:meth:`train_step`), and the epoch's ``loss`` is the mean of
            the batches' losses weighted by their total weight.

        Returns
        -------
        dict
            ``loss`` (mean per sample), ``loss_sum`` (sum of the full batches' means),
            ``correct`` (classification), ``samples``, ``steps``, ``time_train`` and ``grow``
            (the last growth statistics of the epoch).
        """
        model, bs = self.model, int(batch_size or self.config.batch_size)
        self.flops.batch_size = bs
        be = model.backend
        xp = be.xp
        n = x.shape[0] if rows is None else rows.shape[0]
        steps = n // bs if drop_last else -(-n // bs)
        if steps < 1:
            raise ValueError(f"batch_size {bs} exceeds the {n} training samples")
        self.plan(steps)
        classify = self.loss == "cross_entropy"
        bar = _progress_bar(steps, f"epoch {self.epoch + 1}/{self.epochs}") if progress else None
        self.flops.reset()
        t0 = time.perf_counter()
        perm = self.rng.permutation(n) if shuffle else np.arange(n)
        loss_sum, last, correct, grow = 0.0, None, xp.zeros((), dtype=xp.int64), {}
        weighted, weight_sum = 0.0, 0.0  # sum over batches of loss x total weight, and weight
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            if sort_batches:
                idx = np.sort(idx)
            if rows is not None:
                idx = rows[idx]
            frac = self.epoch + s / steps
            lr = self.lr_at(frac) * (lr_scale(frac) if lr_scale is not None else 1.0)
            weights = None if sample_weight is None else sample_weight[idx]
            loss, right, stats = self.train_step(x, target, idx, lr, rank=rank,
                                                 grad_hook=grad_hook, batch_weight=weights)
            if weights is not None:
                total = float(weights.sum())
                weighted, weight_sum = weighted + loss * total, weight_sum + total
            if len(idx) == bs:
                loss_sum += loss
            else:
                last = (loss, len(idx))
            if classify:
                correct += right
            if stats:
                grow = stats
            if bar is not None:
                bar.update()
        be.synchronize()
        if bar is not None:
            bar.close()
        full = (steps - (last is not None)) * bs
        mean = ((float(loss_sum) * bs + (float(last[0]) * last[1] if last else 0.0)) / n
                if not drop_last else float(loss_sum) / steps)
        if sample_weight is not None:
            mean = float(weighted) / weight_sum if weight_sum > 0 else 0.0
        if not np.isfinite(mean):
            raise self.diverged(mean)
        return {"loss": mean, "loss_sum": float(loss_sum), "correct": float(correct),
                "samples": full + (last[1] if last else 0), "steps": steps,
                "time_train": time.perf_counter() - t0, "grow": grow}

    def end_epoch(self, *, prune: bool = True) -> dict[str, Any]:
        """Importance pruning when due (``prune``), then the growth method's end-of-epoch
        update; advances the epoch counter.  Returns ``pruned``, ``grow``, ``time_evolve``."""
        model = self.model
        t0 = time.perf_counter()
        pruned = None
        if (prune and self.pruning is not None and self.pruning.due(self.epoch + 1)
                and self.epoch < self.epochs - 1):
            pruned = prune_neurons(model, self.pruning.percentile, self.pruning.min_neurons)
        stats = self.growth.end_of_epoch(model, self.epoch, self.epochs, self.rng)
        if stats:
            self.flops.update(model, self.growth, stats)
        model.backend.synchronize()
        self.epoch += 1
        return {"pruned": pruned, "grow": stats or {}, "time_evolve": time.perf_counter() - t0}

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, generator and optimizer scalars (JSON); the arrays live in the model."""
        return {"epoch": self.epoch, "step": self.step, "rng": self.rng.bit_generator.state,
                "optimizer": self.optimizer.state_dict(), "method": self.growth.name,
                "method_params": self.growth.params(), "method_state": self.growth.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the model already holds the saved arrays)."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.rng.bit_generator.state = state["rng"]
        if "optimizer" in state:  # checkpoints before the optimizer protocol: momentum SGD
            self.optimizer.load_state_dict(state["optimizer"])
        elif self.optimizer.name != "sgd":
            raise ValueError(f"the checkpoint was trained with momentum SGD, not "
                             f"{self.optimizer.name!r}")
        self.optimizer.attach(self.model)
        method_state = state.get("method_state", {})  # checkpoints before it: nothing to take
        if not isinstance(method_state, dict):
            raise ValueError(f"method_state must be a mapping, got {method_state!r}")
        self.growth.load_state_dict(method_state)
        self._planned = False  # the method sets up again, with what it just took


def _progress_bar(total: int, desc: str):
    from .._compat import tqdm

    if tqdm is None:
        return None
    return tqdm.tqdm(total=total, desc=desc, leave=False)
