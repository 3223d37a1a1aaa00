"""SparseMLP: a multilayer perceptron whose every layer is a truly sparse CSR matrix."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._align import feature_major_batch
from ..backends import get_backend
from .activations import hidden_activations, softmax_cross_entropy
from .layers import SparseLayer


class SparseMLP:
    """A sparse MLP classifier: hidden layers with All-ReLU (or another activation) and dropout,
    a softmax output trained with cross-entropy.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_features, hidden..., n_classes]``, e.g. ``[784, 1000, 1000, 1000, 10]``.
    epsilon : float, default 20
        Erdős–Rényi sparsity: a layer gets ``min(n_in * n_out, epsilon * (n_in + n_out))``
        connections.
    activation : str, default "allrelu"
        See :func:`sparsekit.nn.activations.hidden_activations`.
    alpha : float, default 0.6
        All-ReLU slope magnitude.
    dropout : float, default 0.3
        Dropout rate on hidden activations during training.
    init : {"he_uniform", "xavier_uniform", "normal"}
    fan_in : {"dense", "actual"}
        Fan-in used by the initialiser: the paper's dense ``n_in`` or each neuron's real number of
        inputs.
    backend : str or Backend, optional
        ``"cpu"``, ``"gpu"`` or ``"auto"``; default as :func:`sparsekit.get_backend`.
    dtype : float32 or float64
    seed : int or numpy Generator, optional
        Seeds the initial topology and values.

    Raises
    ------
    ValueError
        Before anything is allocated, when the layers cannot fit in the memory available
        (:func:`sparsekit.training.memory.check_memory`, the message ``train()`` gives).
    """

    #: When true, :meth:`backward` keeps each layer's output gradient in ``last_dz``.
    keep_dz: bool = False
    last_dz: list | None = None

    def __init__(self, layer_sizes: Sequence[int], *, epsilon: float = 20.0,
                 activation: str = "allrelu", alpha: float = 0.6, dropout: float = 0.3,
                 init: str = "he_uniform", fan_in: str = "dense", backend=None,
                 dtype="float32", seed=None) -> None:
        from ..training.config import check_layer_sizes
        from ..training.memory import check_memory

        sizes = check_layer_sizes(layer_sizes)
        self._configure(sizes, epsilon, activation, alpha, dropout, init, fan_in, backend, dtype)
        # Refused before any layer is allocated, with train()'s message: the connections, their
        # optimizer state and one training step of a single sample must fit.
        check_memory(sizes, self.backend, epsilon=self.epsilon, batch_size=1, eval_batch_size=1,
                     method="static", dtype=self.dtype.name, n_test=0)
        rng = np.random.default_rng(seed)
        self.layers = [SparseLayer.random(n_in, n_out, epsilon, rng=rng, backend=self.backend,
                                          dtype=self.dtype, init=init, fan_in=fan_in)
                       for n_in, n_out in zip(sizes[:-1], sizes[1:])]

    def _configure(self, sizes, epsilon, activation, alpha, dropout, init, fan_in, backend,
                   dtype) -> None:
        from .init import check_init_options

        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        # Checked for a model built from layers (or a checkpoint's header) too: regrowth and
        # the growth methods' budgets read them later.
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
                0 < epsilon < math.inf):
            raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        check_init_options(init, fan_in)
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.epsilon, self.alpha, self.dropout = float(epsilon), float(alpha), float(dropout)
        self.activation_name, self.init, self.fan_in = activation, init, fan_in
        self.activations = hidden_activations(activation, len(sizes) - 2, alpha)

    @classmethod
    def from_layers(cls, layers: Sequence[SparseLayer], *, epsilon: float = 20.0,
                    activation: str = "allrelu", alpha: float = 0.6, dropout: float = 0.3,
                    init: str = "he_uniform", fan_in: str = "dense") -> SparseMLP:
        """A model made of existing layers (no copy), e.g. loaded or assembled by hand.

        The layers must chain (each one's inputs are the previous one's outputs) and share one
        backend and dtype.  ``epsilon``, ``init`` and ``fan_in`` describe how the layers were
        made (regrowth draws from ``init``); the others are as in the constructor.
        """
        layers = list(layers)
        if not layers:
            raise ValueError("layers must hold at least one SparseLayer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, SparseLayer):
                raise TypeError(f"layers[{i}] must be a SparseLayer, got {type(layer).__name__}")
        be, dtype = layers[0].backend, layers[0].w.dtype
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].out_features:
                raise ValueError(f"layers {i - 1} and {i} do not chain: "
                                 f"{layers[i - 1].out_features} outputs, "
                                 f"{layers[i].in_features} inputs")
            if layers[i].backend is not be or layers[i].w.dtype != dtype:
                raise ValueError("layers must share one backend and dtype")
        sizes = [layers[0].in_features] + [layer.out_features for layer in layers]
        model = cls.__new__(cls)
        model._configure(sizes, epsilon, activation, alpha, dropout, init, fan_in, be, dtype)
        model.layers = layers
        return model

    # --- shape ----------------------------------------------------------------------------
    @property
    def layer_sizes(self) -> list[int]:
        """Current neurons per layer, inputs first (hidden layers shrink under pruning)."""
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    @property
    def n_connections(self) -> list[int]:
        """Connections per layer."""
        return [layer.nnz for layer in self.layers]

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (JSON-serialisable)."""
        return {"layer_sizes": self.layer_sizes, "epsilon": self.epsilon,
                "activation": self.activation_name, "alpha": self.alpha,
                "dropout": self.dropout, "init": self.init, "fan_in": self.fan_in,
                "dtype": self.dtype.name}

    # --- training-time passes ----------------------------------------------------------------
    def forward_train(self, x_ib, seeds: Sequence[int], dropout: float | None = None, *,
                      buffers: dict | None = None):
        """Forward pass keeping what the backward pass needs.

        Returns ``(logits_cb, acts, derivs)``: ``acts[l]`` is the input of layer l and
        ``derivs[l]`` the activation derivative (dropout included) of hidden layer l.  With
        ``buffers`` (a dict the caller keeps from step to step, as the training engine does)
        the backend may write them into arrays it reuses: they are then valid until the next
        call with the same dict.
        """
        rate = self.dropout if dropout is None else dropout
        return self.backend.mlp_forward(self.layers, self.activations, x_ib, rate, seeds,
                                        buffers)

    def train_pass(self, x, idx, seeds: Sequence[int], loss, *, update=None,
                   buffers: dict | None = None):
        """The training forward of rows ``idx`` of the batch-major host array ``x`` (dense or
        ``scipy.sparse`` CSR), ``loss(logits) -> (value, out, dlogits)`` and :meth:`backward`
        in one call (:meth:`Backend.mlp_step
        <sparsekit.backends.base.Backend.mlp_step>`: the CPU backend runs them in one OpenMP
        team).  Returns ``(value, out, grads, (acts, derivs, dlogits))``; ``grads`` is None when
        the backend applied ``update`` (an optimizer's ``backend_rule``) itself."""
        (value, out, dlogits), acts, derivs, (grads, dzs, applied) = self.backend.mlp_step(
            self.layers, self.activations, x, idx, self.dtype, self.dropout, seeds, loss,
            self.keep_dz, update, buffers)
        if self.keep_dz:
            self.last_dz = dzs
        return value, out, (None if applied else grads), (acts, derivs, dlogits)

    def forward_infer(self, x_ib, buffers: dict | None = None):
        """Logits (classes x batch) without dropout (:meth:`Backend.mlp_infer
        <sparsekit.backends.base.Backend.mlp_infer>`); with ``buffers`` the result may live in
        an array reused by the next call with the same dict."""
        return self.backend.mlp_infer(self.layers, self.activations, x_ib, buffers)

    def backward(self, acts, derivs, dlogits_cb, *, update=None, buffers: dict | None = None):
        """Gradients ``[(grad_w, grad_b), ...]`` per layer for the logits' gradient.

        With ``keep_dz`` true (growth methods that score candidates set it), each layer's output
        gradient is also kept in ``last_dz``.  ``update`` and ``buffers`` are passed to
        :meth:`Backend.mlp_backward <sparsekit.backends.base.Backend.mlp_backward>`: when the
        backend applied the optimizer update itself, the result is None instead of the
        gradients.
        """
        grads, dzs, applied = self.backend.mlp_backward(self.layers, acts, derivs, dlogits_cb,
                                                        self.keep_dz, update, buffers)
        if self.keep_dz:
            self.last_dz = dzs
        return None if applied else grads

    # --- inference ------------------------------------------------------------------------
    def logits(self, x, batch_size: int = 2048):
        """Logits (n_samples x n_classes, on the host) of batch-major inputs, streamed."""
        from ..io.dataset import bad_value_message, first_bad_entry

        # A scipy.sparse x is densified one chunk of at most 2**19 values at a time, never whole.
        sparse = hasattr(x, "tocsr") and hasattr(x, "nnz")
        x = x.tocsr() if sparse else np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.layer_sizes[0]:
            raise ValueError(f"x must have shape (n, {self.layer_sizes[0]}), got {x.shape}")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if sparse:
            batch_size = max(1, min(batch_size, 2**19 // max(x.shape[1], 1)))
        be = self.backend
        # The backend may run fewer samples per pass (the CPU's fused pass keeps every layer's
        # output of a few hundred samples in cache), within the memory batch_size allows.
        step = be.infer_batch(self.layers, batch_size, self.activations)
        buffers: dict = {}
        out = np.empty((x.shape[0], self.layer_sizes[-1]), dtype=self.dtype)
        for start in range(0, x.shape[0], step):
            host = feature_major_batch(x, slice(start, start + step), self.dtype)
            bad = first_bad_entry(host)  # one pass over a chunk already in cache
            if bad is not None:
                col, row = bad
                raise ValueError(bad_value_message("x", x[start + row, col], start + row, col,
                                                   self.dtype))
            chunk = be.asarray(host)
            logits = self.forward_infer(chunk, buffers)
            out[start:start + step] = be.to_numpy(logits).T
            _check_finite_outputs(out[start:start + step], host, start)
        return out

    def predict_proba(self, x, batch_size: int = 2048) -> np.ndarray:
        """Class probabilities (n_samples x n_classes), computed in batches of ``batch_size``."""
        z = self.logits(x, batch_size)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict(self, x, batch_size: int = 2048) -> np.ndarray:
        """Predicted class index of each row of ``x`` (n_samples x n_features)."""
        return self.logits(x, batch_size).argmax(axis=1)

    def evaluate(self, x, y, batch_size: int = 2048) -> tuple[float, float]:
        """``(mean cross-entropy, accuracy)`` on ``(x, y)``; ``y`` holds class indices.

        Raises ``ValueError`` for no samples, or labels outside ``0..n_classes-1``.
        """
        from ..io.dataset import check_labels

        n = x.shape[0] if hasattr(x, "shape") and len(x.shape) else len(x)
        if y is None:
            raise ValueError("y is None: evaluate needs the labels of x")
        y = check_labels(y, n, self.layer_sizes[-1])
        if n == 0:
            raise ValueError("x has no rows: there is nothing to evaluate")
        z = self.logits(x, batch_size)
        loss, _, _ = softmax_cross_entropy(np, z.T.astype(np.float64), y)
        return float(loss), float((z.argmax(axis=1) == y).mean())

    # --- persistence ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write a pickle-free checkpoint (see :mod:`sparsekit.io.checkpoint`)."""
        from ..io.checkpoint import save_checkpoint

        save_checkpoint(path, self)

    @classmethod
    def load(cls, path, backend=None) -> SparseMLP:
        """Load a model saved with :meth:`save` onto ``backend``."""
        from ..io.checkpoint import load_checkpoint

        return load_checkpoint(path, backend=backend).model

    def __repr__(self) -> str:
        return (f"SparseMLP({self.layer_sizes}, connections={self.n_connections}, "
                f"activation={self.activation_name}, backend={self.backend.name})")


def _check_finite_outputs(out_bo, host_ib, start: int) -> None:
    """Refuse outputs that overflowed to inf or NaN from finite inputs (values near the
    precision's limit, or diverged weights): predicting the first class and a NaN loss for
    them would be a silent wrong answer."""
    bad = ~np.isfinite(out_bo)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        largest = float(np.abs(host_ib[:, row]).max()) if host_ib.shape[0] else 0.0
        raise ValueError(f"x: the network's outputs overflow to inf or NaN from row "
                         f"{start + row} (largest |value| in that row {largest:.3g}); scale "
                         f"the inputs down, or the weights diverged")

