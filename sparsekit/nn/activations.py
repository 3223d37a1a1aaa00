"""Hidden-layer activations.

Piecewise-linear activations (``x`` for x > 0, ``slope * x`` otherwise) run through the backend's
fused bias + activation + dropout kernel.  All-ReLU (Curci et al. 2021) is that family with fixed
slopes alternating by hidden layer: ``-alpha, +alpha, -alpha, ...``.  Smooth activations use
``xp`` and take their dropout mask from the same counter-based hash.
"""

from __future__ import annotations

from dataclasses import dataclass

PIECEWISE = {"relu": 0.0, "linear": 1.0}
SMOOTH = ("tanh", "sigmoid")
NAMES = ("allrelu", "relu", "leaky_relu", "linear", *SMOOTH)


@dataclass(frozen=True)
class Activation:
    """One hidden layer's activation: a name and, for piecewise-linear ones, the left slope."""

    name: str
    slope: float = 0.0

    @property
    def piecewise(self) -> bool:
        """True for ``x if x > 0 else slope * x`` (the fused kernels' activations)."""
        return self.name not in SMOOTH

    def forward(self, backend, z_ob, bias, rate: float, seed: int):
        """Return ``(a_ob, d_ob)``: activation of ``z_ob + bias`` and d(a)/d(z), dropout applied."""
        if self.name not in SMOOTH:
            return backend.bias_act_dropout(z_ob, bias, self.slope, rate, seed)
        xp = backend.xp
        z = z_ob + bias[:, None]
        if self.name == "tanh":
            a = xp.tanh(z)
            d = 1 - a * a
        else:
            a = 1 / (1 + xp.exp(-z))
            d = a * (1 - a)
        if rate > 0:
            mask, _ = backend.bias_act_dropout(xp.ones_like(z), xp.zeros_like(bias), 1.0, rate,
                                               seed)
            a, d = a * mask, d * mask
        return a.astype(z.dtype, copy=False), d.astype(z.dtype, copy=False)


def hidden_activations(name: str, n_hidden: int, alpha: float = 0.6,
                       negative_slope: float = 0.01) -> list[Activation]:
    """The activation of each hidden layer.

    Parameters
    ----------
    name : {"allrelu", "relu", "leaky_relu", "linear", "tanh", "sigmoid"}
    alpha : float
        All-ReLU slope magnitude; the first hidden layer gets ``-alpha`` (the paper's layer 2,
        even), the next ``+alpha``, and so on.  0.6 for Fashion-MNIST, 0.75 for CIFAR-10.
    negative_slope : float
        Slope of ``leaky_relu``.
    """
    if name not in NAMES:
        raise ValueError(f"activation must be one of {NAMES}, got {name!r}")
    if name == "allrelu":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 for allrelu, got {alpha}")
        return [Activation("allrelu", -alpha if i % 2 == 0 else alpha) for i in range(n_hidden)]
    if name == "leaky_relu":
        return [Activation(name, float(negative_slope))] * n_hidden
    return [Activation(name, PIECEWISE.get(name, 0.0))] * n_hidden


def softmax_cross_entropy(xp, logits_cb, labels_b, as_float: bool = True):
    """Mean cross-entropy and its gradient w.r.t. the logits (already divided by the batch).

    ``logits_cb`` is feature-major (classes x batch); ``labels_b`` int class indices.
    Returns ``(loss, probs_cb, dlogits_cb)``; ``loss`` is a device scalar unless ``as_float``.
    """
    n = logits_cb.shape[1]
    shifted = logits_cb - logits_cb.max(axis=0, keepdims=True)
    expz = xp.exp(shifted)
    probs = expz / expz.sum(axis=0, keepdims=True)
    cols = xp.arange(n)
    loss = cross_entropy_of(xp, probs[labels_b, cols], as_float)
    grad = probs.copy()
    grad[labels_b, cols] -= 1
    grad /= max(n, 1)
    return loss, probs, grad


class CrossEntropyLoss:
    """A training step's loss against fixed labels: ``loss(logits_cb)`` is
    ``backend.softmax_cross_entropy(logits_cb, labels_b)``, ``(value, probs_cb, dlogits_cb)``.

    Passed as the ``loss`` of :meth:`~sparsekit.backends.Backend.mlp_step`, it also tells the
    backend what the loss is, so a backend may compute it inside its step (the CPU backend
    does, between its passes and without Python), with the same bits.
    """

    __slots__ = ("backend", "labels_b")

    def __init__(self, backend, labels_b) -> None:
        self.backend, self.labels_b = backend, labels_b

    def __call__(self, logits_cb):
        return self.backend.softmax_cross_entropy(logits_cb, self.labels_b)


def cross_entropy_of(xp, picked_b, as_float: bool = True):
    """Mean of ``-log(p)`` over each sample's probability of its label (at least 1e-12):
    :func:`softmax_cross_entropy`'s value, which the CPU backend's loss kernel leaves to NumPy
    (its training step computes the same bits in C: epilogue.hh's sk_cross_entropy_value)."""
    # On a GPU, float() would synchronise every step: the trainer keeps the device scalar.
    loss = -xp.log(xp.maximum(picked_b, 1e-12)).sum() / max(picked_b.shape[0], 1)
    return float(loss) if as_float else loss
