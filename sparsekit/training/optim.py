"""The optimizer protocol — momentum SGD (+ Nesterov), Adam, AdamW — and learning-rate schedules.

An optimizer never sees a matrix.  It updates a layer's CSR ``data`` and its bias in place, with
per-connection state kept *by the layer* in named slots (:attr:`Optimizer.slots`; see
:meth:`sparsekit.nn.layers.SparseLayer.ensure_state`).  Because the layer owns the state, every
topology change (SET/GSE regrowth through ``Backend.rebuild``, Top-KAST's forward set, neuron
pruning, WASAP averaging) permutes it together with the values, and a new connection starts
with zero state.  The optimizer itself holds only scalars (hyperparameters and the step count),
which :meth:`Optimizer.state_dict` turns into JSON for checkpoints.

On the host the updates run over slices of :data:`CHUNK` values with one scratch buffer, so no
temporary of the size of a layer is made; elsewhere (CuPy) they are whole-array expressions.
The CPU backend applies momentum SGD and Adam/AdamW inside its backward pass instead
(:meth:`Optimizer.backend_rule`; ``_cython/epilogue.hh``), in the same order of operations, so
with the same bits; a step that cannot fuse them (a gradient hook, clipping, WASAP's server)
still updates through the same kernel (:meth:`Optimizer.step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

DECAY_MODES = ("coupled", "decoupled")

#: Values per slice of a host update (a 256 KiB float32 scratch buffer).
CHUNK = 1 << 16


def _slices(n: int):
    return (slice(s, s + CHUNK) for s in range(0, n, CHUNK))


class Optimizer:
    """Base of the optimizers: what the training step asks of one.

    Subclasses set :attr:`name` and :attr:`slots` and implement :meth:`update`.

    Parameters
    ----------
    weight_decay : float
        L2 penalty (or decoupled shrink, see the subclass).
    """

    name: ClassVar[str] = "base"
    #: Names of the per-connection state arrays a layer must hold for this optimizer.
    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, weight_decay: float = 0.0) -> None:
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.t = 0  # optimizer steps taken (Adam's bias correction)

    @property
    def ops_per_value(self) -> int:
        """Floating-point operations of one update per parameter (the FLOP count's ``u``)."""
        return 6

    def attach(self, model) -> None:
        """Give every layer of ``model`` this optimizer's state slots (kept if present)."""
        for layer in model.layers:
            layer.ensure_state(self.slots)

    def step(self, model, grads, lr: float) -> None:
        """One update of every layer from ``grads = [(grad_w, grad_b), ...]`` at rate ``lr``:
        by the model's backend from :meth:`backend_rule` where it can
        (:meth:`Backend.apply_update <sparsekit.backends.base.Backend.apply_update>`, the same
        bits), else by :meth:`update`."""
        rule = self.backend_rule(lr)  # this step's: taken before the step is counted
        self.t += 1
        be = model.backend
        for layer, (gw, gb) in zip(model.layers, grads):
            for param, grad, state in ((layer.w.data, gw, layer.state_w),
                                       (layer.b, gb, layer.state_b)):
                if rule is None or not be.apply_update(rule, param, grad,
                                                       [state[s] for s in self.slots]):
                    self.update(param, grad, state, lr)

    def update(self, param, grad, state: dict, lr: float) -> None:
        """Update ``param`` and its ``state`` arrays in place."""
        raise NotImplementedError

    def backend_rule(self, lr: float) -> tuple | None:
        """This step's update as a rule a backend may apply inside its backward pass
        (:meth:`Backend.mlp_backward <sparsekit.backends.base.Backend.mlp_backward>`), or None
        when the optimizer has none: a tuple whose first item names it (``"sgd"``,
        ``"adam"``), its state slots (:attr:`slots`) then say which layer arrays it updates.
        The backend applies it with the same arithmetic as :meth:`update`;
        :meth:`applied_by_backend` then counts the step."""
        return None

    def applied_by_backend(self) -> None:
        """Count a step whose update the backend applied from :meth:`backend_rule`."""
        self.t += 1

    def rescale_lr(self, model, ratio: float) -> None:
        """The learning rate changes by ``ratio`` from the next step on (WASAP's return from the
        scaled phase-1 rate): state that has the rate folded in is rescaled to match."""

    def hyperparams(self) -> dict[str, Any]:
        """The constructor arguments (JSON-serialisable)."""
        return {"weight_decay": self.weight_decay}

    def state_dict(self) -> dict[str, Any]:
        """Scalar state for a checkpoint (the arrays live with the layers)."""
        return {"name": self.name, "t": self.t, **self.hyperparams()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s step count; refuses another optimizer's state."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        self.t = int(state["t"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


class MomentumSGD(Optimizer):
    """Heavy-ball momentum SGD, optionally Nesterov's.

    ``v <- momentum * v - lr * (g + wd * w);  w <- w + v`` (``decay="coupled"``, as PyTorch;
    with ``nesterov=True`` the step is ``w <- w + momentum * v - lr * (g + wd * w)``).

    With ``decay="decoupled"`` the reference code's rule is used instead:
    ``v <- momentum * v - lr * g;  w <- w + v - wd * w`` — an lr-independent shrink, about 10x
    stronger than the coupled form at lr 0.01 and momentum 0.9.

    The velocity ``v`` (slot ``"momentum"``) has the learning rate folded in, as in the reference
    code; :meth:`rescale_lr` rescales it when the rate jumps.
    """

    name = "sgd"
    slots = ("momentum",)

    def __init__(self, momentum: float = 0.9, weight_decay: float = 2e-4,
                 decay: str = "coupled", nesterov: bool = False) -> None:
        super().__init__(weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if decay not in DECAY_MODES:
            raise ValueError(f"decay must be one of {DECAY_MODES}, got {decay!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum, self.decay, self.nesterov = float(momentum), decay, bool(nesterov)

    def hyperparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "weight_decay": self.weight_decay,
                "decay": self.decay, "nesterov": self.nesterov}

    def backend_rule(self, lr: float) -> tuple:
        return ("sgd", float(lr), self.momentum, self.weight_decay, self.decay == "coupled",
                self.nesterov)

    def update(self, param, grad, state, lr):
        velocity = state["momentum"]
        mu = param.dtype.type(self.momentum)
        wd = param.dtype.type(self.weight_decay)
        lr_t = param.dtype.type(lr)
        if isinstance(param, np.ndarray) and param.shape[0] > CHUNK:
            scratch = np.empty(CHUNK, dtype=param.dtype)
            for s in _slices(param.shape[0]):
                self._apply(param[s], grad[s], velocity[s], lr_t, mu, wd,
                            scratch[:param[s].shape[0]])
            return
        self._apply(param, grad, velocity, lr_t, mu, wd, None)

    def _apply(self, p, g, v, lr_t, mu, wd, t) -> None:
        # ``t`` is a scratch slice on the host (no temporaries) or None (whole-array xp code).
        # Both orders of operations are those of the first sparsekit release, so results are
        # unchanged bit for bit.
        coupled = self.decay == "coupled"
        v *= mu
        if t is None:
            step = lr_t * (g + wd * p) if coupled and wd else lr_t * g
        else:
            if coupled and wd:
                np.multiply(wd, p, out=t)
                t += g
                t *= lr_t
            else:
                np.multiply(lr_t, g, out=t)
            step = t
        v -= step
        if not coupled and wd:
            p *= 1 - wd
        if self.nesterov:  # w += mu * v_new - step
            p -= step
            p += mu * v
        else:
            p += v

    def rescale_lr(self, model, ratio: float) -> None:
        for layer in model.layers:
            for state in (layer.state_w, layer.state_b):
                state["momentum"] *= state["momentum"].dtype.type(ratio)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's arithmetic.

    ``g <- g + wd * w`` (an L2 penalty through the gradient, as ``torch.optim.Adam``);
    ``m <- b1 m + (1 - b1) g``; ``v <- b2 v + (1 - b2) g^2``;
    ``w <- w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Slots ``"exp_avg"`` (m) and ``"exp_avg_sq"`` (v).  The step count ``t`` is global, so a
    connection grown late starts from zero moments under the run's bias correction, as in
    PyTorch dynamic-sparsity code that zeroes the state of new weights.
    """

    name = "adam"
    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
        if not eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {eps}")
        self.betas, self.eps = (b1, b2), float(eps)

    @property
    def ops_per_value(self) -> int:
        return 13 + (2 if self.weight_decay else 0)

    def hyperparams(self) -> dict[str, Any]:
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _constants(self, lr: float, t: int) -> tuple[float, ...]:
        """The scalars of step ``t``'s update, in double precision (each is rounded to the
        parameters' dtype where it is used, here and in a backend's fused update):
        ``b1, 1 - b1, b2, 1 - b2, lr / (1 - b1^t), sqrt(1 - b2^t), eps, wd, 1 - lr wd``."""
        b1, b2 = self.betas
        t = max(t, 1)
        return (b1, 1 - b1, b2, 1 - b2, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t), self.eps,
                self.weight_decay, 1 - lr * self.weight_decay)

    def backend_rule(self, lr: float) -> tuple:
        # the constants of the step applied_by_backend() then counts
        return ("adam", self.decoupled, *self._constants(float(lr), self.t + 1))

    def update(self, param, grad, state, lr):
        dt = param.dtype.type
        c = tuple(dt(k) for k in self._constants(lr, self.t))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if isinstance(param, np.ndarray) and param.shape[0] > CHUNK:
            scratch = np.empty((2, CHUNK), dtype=param.dtype)
            for s in _slices(param.shape[0]):
                k = param[s].shape[0]
                self._apply(param[s], grad[s], m[s], v[s], c, scratch[0, :k], scratch[1, :k])
            return
        if isinstance(param, np.ndarray):
            self._apply(param, grad, m, v, c, np.empty_like(param), np.empty_like(param))
        else:
            self._apply_xp(param, grad, m, v, c)

    def _apply(self, p, g, m, v, c, t, u) -> None:
        b1, nb1, b2, nb2, step, bc2, eps, wd, shrink = c
        if self.decoupled:
            if wd:
                p *= shrink
            gg = g
        elif wd:
            np.multiply(wd, p, out=t)
            t += g
            gg = t
        else:
            gg = g
        m *= b1
        np.multiply(nb1, gg, out=u)
        m += u
        v *= b2
        np.multiply(gg, gg, out=u)
        u *= nb2
        v += u
        np.sqrt(v, out=u)
        u /= bc2
        u += eps
        np.divide(m, u, out=u)
        u *= step
        p -= u

    def _apply_xp(self, p, g, m, v, c) -> None:
        b1, nb1, b2, nb2, step, bc2, eps, wd, shrink = c
        if self.decoupled:
            if wd:
                p *= shrink
        elif wd:
            g = g + wd * p
        m *= b1
        m += nb1 * g
        v *= b2
        v += nb2 * (g * g)
        p -= step * (m / (v ** 0.5 / bc2 + eps))


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with the weight decay decoupled from the
    gradient, ``w <- w * (1 - lr * wd)`` before the Adam step, as ``torch.optim.AdamW``."""

    name = "adamw"
    decoupled = True

    def __init__(self, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": MomentumSGD, "adam": Adam, "adamw": AdamW}


SCHEDULES = ("constant", "step", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a function of the epoch (fractional epochs allowed).

    ``constant``; ``step`` (times ``gamma`` every ``step_size`` epochs); ``cosine`` (to
    ``min_lr`` at ``epochs``); ``linear`` (to ``min_lr`` at ``epochs``).  ``warmup_epochs``
    ramps linearly from ``lr / 10`` to ``lr`` first; ``cosine`` and ``linear`` then anneal over
    the epochs left, so the rate is continuous where the warm-up ends.
    """

    kind: str = "constant"
    epochs: int = 1
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {self.kind!r}")

    def __call__(self, base_lr: float, epoch: float) -> float:
        if self.warmup_epochs and epoch < self.warmup_epochs:
            return base_lr * (0.1 + 0.9 * epoch / self.warmup_epochs)
        if self.kind == "step":
            return base_lr * self.gamma ** int(epoch // self.step_size)
        span = self.epochs - self.warmup_epochs
        frac = 1.0 if span <= 0 else min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        if self.kind == "cosine":
            return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        if self.kind == "linear":
            return base_lr + (self.min_lr - base_lr) * frac
        return base_lr
