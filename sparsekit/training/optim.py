"""Heavy-ball momentum SGD on value arrays, and learning-rate schedules.

The optimizer never sees a matrix: it updates a layer's CSR ``data`` and bias in place, with
velocity arrays aligned to them that every topology change permutes (``Backend.rebuild``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DECAY_MODES = ("coupled", "decoupled")


@dataclass
class MomentumSGD:
    """``v <- momentum * v - lr * (g + wd * w);  w <- w + v`` (``decay="coupled"``, as PyTorch).

    With ``decay="decoupled"`` the reference code's rule is used instead:
    ``v <- momentum * v - lr * g;  w <- w + v - wd * w`` — an lr-independent shrink, about 10x
    stronger than the coupled form at lr 0.01 and momentum 0.9.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    decay: str = "coupled"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.decay not in DECAY_MODES:
            raise ValueError(f"decay must be one of {DECAY_MODES}, got {self.decay!r}")

    def update(self, param, grad, velocity, lr: float, decay_param: bool = True) -> None:
        """Update ``param`` and ``velocity`` in place."""
        mu = param.dtype.type(self.momentum)
        wd = param.dtype.type(self.weight_decay if decay_param else 0.0)
        lr_t = param.dtype.type(lr)
        if isinstance(param, np.ndarray) and param.ndim == 1 and param.shape[0] > CHUNK:
            self._update_chunked(param, grad, velocity, lr_t, mu, wd)
            return
        velocity *= mu
        if self.decay == "coupled":
            velocity -= lr_t * (grad + wd * param) if wd else lr_t * grad
            param += velocity
        else:
            velocity -= lr_t * grad
            if wd:
                param *= 1 - wd
            param += velocity

    def _update_chunked(self, param, grad, velocity, lr_t, mu, wd) -> None:
        """The same arithmetic, in the same order, on slices of :data:`CHUNK` values with one
        reused scratch buffer: no temporaries the size of the layer, and the slices stay in
        cache between the passes."""
        scratch = np.empty(CHUNK, dtype=param.dtype)
        for s in range(0, param.shape[0], CHUNK):
            p, g, v = param[s:s + CHUNK], grad[s:s + CHUNK], velocity[s:s + CHUNK]
            t = scratch[:p.shape[0]]
            v *= mu
            if self.decay == "coupled" and wd:
                np.multiply(wd, p, out=t)
                t += g
                t *= lr_t
            else:
                np.multiply(lr_t, g, out=t)
            v -= t
            if self.decay != "coupled" and wd:
                p *= 1 - wd
            p += v


#: Values per slice of the host optimizer's update (a 256 KiB float32 scratch buffer).
CHUNK = 1 << 16

SCHEDULES = ("constant", "step", "cosine", "linear")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a function of the epoch (fractional epochs allowed).

    ``constant``; ``step`` (times ``gamma`` every ``step_size`` epochs); ``cosine`` (to
    ``min_lr`` at ``epochs``); ``linear`` (to ``min_lr`` at ``epochs``).  ``warmup_epochs``
    ramps linearly from ``lr / 10`` first.
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
        frac = min(max(epoch / max(self.epochs, 1), 0.0), 1.0)
        if self.kind == "cosine":
            return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))
        if self.kind == "linear":
            return base_lr + (self.min_lr - base_lr) * frac
        return base_lr
