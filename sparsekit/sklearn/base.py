"""What the classifier and the regressor share: parameters, fitting, prediction."""

from __future__ import annotations

import logging
import numbers

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..nn.model import SparseMLP
from ..training.config import TrainConfig
from ..training.runner import EpochRunner

logger = logging.getLogger("sparsekit")

_DTYPES = [np.float64, np.float32]


def _writable(a) -> bool:
    return bool(getattr(a.flags, "writeable", True))


class _SparseMLPBase(BaseEstimator):
    """Parameters, fitting and prediction shared by the classifier and the regressor."""

    _loss = "cross_entropy"

    def __init__(self, hidden_layer_sizes=(100,), *, epsilon: float = 20.0,
                 activation: str = "allrelu", alpha: float = 0.6, dropout: float = 0.3,
                 method: str = "set", zeta: float = 0.3, method_params: dict | None = None,
                 max_iter: int = 200, batch_size: int = 128, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 2e-4, decay: str = "coupled",
                 lr_schedule: str = "constant", warmup_epochs: float = 0.0,
                 init: str = "he_uniform", fan_in: str = "dense", backend: str = "cpu",
                 dtype: str = "float32", max_grad_norm: float | None = 10.0,
                 warm_start: bool = False, verbose: bool = False, random_state=None) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.epsilon = epsilon
        self.activation = activation
        self.alpha = alpha
        self.dropout = dropout
        self.method = method
        self.zeta = zeta
        self.method_params = method_params
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.decay = decay
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.init = init
        self.fan_in = fan_in
        self.backend = backend
        self.dtype = dtype
        self.max_grad_norm = max_grad_norm
        self.warm_start = warm_start
        self.verbose = verbose
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def __setstate__(self, state):
        super().__setstate__(state)
        # Training updates the weights in place and the CPU kernels take writable buffers, so a
        # network unpickled onto read-only memory (joblib's memmaps) gets private copies.
        for layer in getattr(getattr(self, "model_", None), "layers", ()):
            w = layer.w
            if not all(_writable(a) for a in (w.indptr, w.indices, w.data)):
                layer.w = w.copy()
            if not _writable(layer.b):
                layer.b = layer.b.copy()
            for state in (layer.state_w, layer.state_b):
                for name, arr in state.items():
                    if not _writable(arr):
                        state[name] = arr.copy()

    # --- hooks for the subclasses ----------------------------------------------------------
    def _encode_targets(self, y, first: bool, classes=None) -> np.ndarray:
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    # --- fitting ---------------------------------------------------------------------------
    def _check_hyperparameters(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                   for s in sizes):
            raise ValueError("hidden_layer_sizes must be a positive int or a sequence of "
                             f"positive ints, got {self.hidden_layer_sizes!r}")
        for name in ("max_iter", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return [int(s) for s in sizes]

    def _initialize(self, n_features: int) -> None:
        hidden = self._check_hyperparameters()
        rs = check_random_state(self.random_state)
        init_seed, train_seed = (int(s) for s in rs.randint(0, 2**31 - 1, size=2))
        self.model_ = SparseMLP([n_features, *hidden, self._n_outputs()], epsilon=self.epsilon,
                                activation=self.activation, alpha=self.alpha,
                                dropout=self.dropout, init=self.init, fan_in=self.fan_in,
                                backend=self.backend, dtype=self.dtype, seed=init_seed)
        config = TrainConfig(
            epsilon=self.epsilon, activation=self.activation, alpha=self.alpha,
            dropout=self.dropout, init=self.init, fan_in=self.fan_in, dtype=self.dtype,
            method=self.method, method_params=self.method_params or {}, zeta=self.zeta,
            batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, decay=self.decay, lr_schedule=self.lr_schedule,
            warmup_epochs=self.warmup_epochs, max_grad_norm=self.max_grad_norm,
            backend=self.backend)
        self._runner = EpochRunner(self.model_, config, loss=self._loss, seed=train_seed,
                                   max_epochs=self.max_iter)
        self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []

    def _run(self, X, target: np.ndarray, epochs: int) -> None:
        level = logging.INFO if self.verbose else logging.DEBUG
        name = type(self).__name__

        def log(line: str) -> None:
            logger.log(level, "%s: %s", name, line)

        for _ in range(epochs):
            self.loss_curve_.append(self._runner.run_epoch(X, target, log))
        self.n_iter_ = self._runner.epoch
        self.t_ = self._runner.step
        self.loss_ = self.loss_curve_[-1]

    def _validate(self, X, y, reset: bool):
        return validate_data(self, X, y, reset=reset, accept_sparse="csr", dtype=_DTYPES,
                             multi_output=self._loss == "mse", y_numeric=self._loss == "mse")

    def fit(self, X, y):
        """Train for ``max_iter`` epochs (continuing the current model if ``warm_start``).

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data; sparse matrices are densified one mini-batch at a time only.
        y : array-like of shape (n_samples,) (or (n_samples, n_outputs) for the regressor)
            Target values.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        warm = self.warm_start and hasattr(self, "model_")
        X, y = self._validate(X, y, reset=not warm)
        target = self._encode_targets(y, first=not warm)
        if not warm:
            self._initialize(X.shape[1])
        self._run(X, target, self.max_iter)
        return self

    def _partial_fit(self, X, y, classes=None):
        first = not hasattr(self, "model_")
        X, y = self._validate(X, y, reset=first)
        target = self._encode_targets(y, first=first, classes=classes)
        if first:
            self._initialize(X.shape[1])
        self._run(X, target, 1)
        return self

    # --- prediction ------------------------------------------------------------------------
    def _forward(self, X) -> np.ndarray:
        """Network outputs (n_samples, n_outputs) in float64 for validated ``X``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, accept_sparse="csr", dtype=_DTYPES)
        return self.model_.logits(X).astype(np.float64)
