"""scikit-learn estimators: :class:`SparseMLPClassifier` and :class:`SparseMLPRegressor`.

Both follow scikit-learn's conventions (the constructor only stores its arguments; fitted
state ends in ``_``; input is validated with :func:`sklearn.utils.validation.validate_data`), so
they work in ``Pipeline``, ``GridSearchCV`` and ``cross_val_score`` and pass
:func:`sklearn.utils.estimator_checks.check_estimator`.  Under the hood each trains a
:class:`~sparsekit.SparseMLP` — truly sparse from the first step, SET (or another growth
method) evolving its topology — with the loop of :mod:`sparsekit.training.runner`.

``fit`` and ``predict`` accept ``scipy.sparse`` matrices without densifying them: a sparse ``X``
is kept in CSR and only one mini-batch (``batch_size x n_features``) at a time is made dense for
the first layer's kernels.  That suits high-dimensional, few-sample data such as microarrays.

This module imports scikit-learn; ``import sparsekit`` does not (the estimators are loaded on
first access to ``sparsekit.SparseMLPClassifier``).
"""

from __future__ import annotations

import logging
import numbers

import numpy as np

from ._compat import missing_extra

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # missing, or older than validate_data (1.6)
    raise missing_extra("scikit-learn >= 1.6", "sklearn",
                        "sparsekit's scikit-learn estimators") from exc

from .nn.model import SparseMLP
from .training.runner import EpochRunner

__all__ = ["SparseMLPClassifier", "SparseMLPRegressor"]

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
            for name in ("b", "vel_w", "vel_b"):
                if not _writable(getattr(layer, name)):
                    setattr(layer, name, getattr(layer, name).copy())

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
        self._runner = EpochRunner(
            self.model_, loss=self._loss, seed=train_seed, max_epochs=self.max_iter,
            method=self.method, method_params=self.method_params, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, decay=self.decay,
            lr_schedule=self.lr_schedule, warmup_epochs=self.warmup_epochs, zeta=self.zeta,
            max_grad_norm=self.max_grad_norm)
        self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []

    def _run(self, X, target: np.ndarray, epochs: int) -> None:
        level = logging.INFO if self.verbose else logging.DEBUG
        name = type(self).__name__

        def log(line: str) -> None:
            logger.log(level, "%s: %s", name, line)

        for _ in range(epochs):
            self.loss_curve_.append(self._runner.run_epoch(X, target, self.batch_size, log))
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


class SparseMLPClassifier(ClassifierMixin, _SparseMLPBase):
    """A truly sparse multilayer perceptron classifier (softmax output, cross-entropy).

    The network's weights are CSR matrices from initialisation on (Erdős–Rényi topology with
    ``epsilon``); every epoch SET (``method="set"``) replaces the fraction ``zeta`` of the
    smallest weights with random new connections.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Sizes of the hidden layers.
    epsilon : float, default 20.0
        Erdős–Rényi sparsity: a layer gets ``min(n_in * n_out, epsilon * (n_in + n_out))``
        connections.
    activation : {"allrelu", "relu", "leaky_relu", "linear", "tanh", "sigmoid"}, default "allrelu"
        Hidden-layer activation.
    alpha : float, default 0.6
        All-ReLU slope magnitude.
    dropout : float, default 0.3
        Dropout rate on hidden activations during training.
    method : str, default "set"
        Topology evolution (see :func:`sparsekit.available_methods`); ``"static"`` keeps the
        initial topology.
    zeta : float, default 0.3
        SET's fraction of each sign's weights replaced per epoch.
    method_params : dict, optional
        Extra keyword arguments for the growth method.
    max_iter : int, default 200
        Number of epochs ``fit`` trains for (there is no early stopping).
    batch_size : int, default 128
        Mini-batch size, clipped to the number of samples.
    lr : float, default 0.01
        Learning rate.
    momentum : float, default 0.9
        Heavy-ball momentum.
    weight_decay : float, default 2e-4
        L2 penalty.
    decay : {"coupled", "decoupled"}, default "coupled"
        PyTorch-style L2 through the gradient, or a per-step shrink of the weights.
    lr_schedule : {"constant", "step", "cosine", "linear"}, default "constant"
        Learning-rate schedule over ``max_iter`` epochs.
    warmup_epochs : float, default 0.0
        Linear learning-rate warm-up.
    init : {"he_uniform", "xavier_uniform", "normal"}, default "he_uniform"
        Distribution of initial and regrown weights.
    fan_in : {"dense", "actual"}, default "dense"
        Fan-in that scales the initial weights; regrown weights use the dense fan-in.
    backend : {"cpu", "gpu", "auto"}, default "cpu"
        Kernel backend.
    dtype : {"float32", "float64"}, default "float32"
        Precision of weights and activations.
    max_grad_norm : float or None, default 10.0
        Rescale a step's gradients when their global L2 norm exceeds this (None: never); keeps
        plain SGD from diverging on unscaled inputs.
    warm_start : bool, default False
        Let ``fit`` continue training the current network instead of starting anew.
    verbose : bool, default False
        Log a line per epoch at INFO level on the ``"sparsekit"`` logger (DEBUG otherwise).
    random_state : int, RandomState instance or None, default None
        Seeds the topology, the initial weights, the data order, dropout and regrowth.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Feature names, when ``X`` had string column names.
    model_ : SparseMLP
        The trained network.
    n_iter_ : int
        Epochs trained so far.
    t_ : int
        Optimizer steps taken so far.
    loss_ : float
        Mean training loss of the last epoch.
    loss_curve_ : list of float
        Mean training loss of every epoch.

    See Also
    --------
    SparseMLPRegressor : The same network with a linear output and squared error.
    sparsekit.train : The full training loop (run folders, checkpoints, test history).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sparsekit import SparseMLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = SparseMLPClassifier((64,), max_iter=5, random_state=0).fit(X / 16, y)
    >>> clf.predict(X[:3] / 16).shape
    (3,)
    """

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _encode_targets(self, y, first: bool, classes=None) -> np.ndarray:
        check_classification_targets(y)
        if first:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if labels.shape[0] < 2:
                raise ValueError("a classifier needs samples of at least 2 classes, but y "
                                 f"contains only one class: {labels[0]!r}")
            self.classes_ = labels
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the classes_ of the first "
                             f"call, {self.classes_!r}")
        pos = np.searchsorted(self.classes_, y)
        pos = np.minimum(pos, len(self.classes_) - 1)
        unseen = self.classes_[pos] != y
        if unseen.any():
            raise ValueError(f"y contains labels not in classes_ {self.classes_!r}: "
                             f"{np.unique(np.asarray(y)[unseen])!r}")
        return pos.astype(np.int64)

    def partial_fit(self, X, y, classes=None):
        """Train one epoch on ``(X, y)``, creating the network on the first call.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.
        classes : array-like of shape (n_classes,), optional
            Every class that will ever appear; required on the first call, as the output layer
            is sized from it.

        Returns
        -------
        self : object
            The updated estimator.
        """
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._partial_fit(X, y, classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Softmax of the network's outputs, columns in the order of ``classes_``.
        """
        z = self._forward(X)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict(self, X) -> np.ndarray:
        """Most probable class of each sample.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        scores = self._forward(X)  # first: it raises NotFittedError before classes_ is read
        return self.classes_[scores.argmax(axis=1)]


class SparseMLPRegressor(RegressorMixin, _SparseMLPBase):
    """A truly sparse multilayer perceptron regressor (linear output, squared error).

    The hidden layers are those of :class:`SparseMLPClassifier`; the output layer is linear and
    trained on the mean squared error.  Targets are standardised internally (mean and standard
    deviation of the data of the first ``fit``/``partial_fit`` call) and predictions mapped back,
    so the learning rate does not depend on the targets' scale.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Sizes of the hidden layers.
    epsilon : float, default 20.0
        Erdős–Rényi sparsity: a layer gets ``min(n_in * n_out, epsilon * (n_in + n_out))``
        connections.
    activation : {"allrelu", "relu", "leaky_relu", "linear", "tanh", "sigmoid"}, default "allrelu"
        Hidden-layer activation.
    alpha : float, default 0.6
        All-ReLU slope magnitude.
    dropout : float, default 0.3
        Dropout rate on hidden activations during training.
    method : str, default "set"
        Topology evolution (see :func:`sparsekit.available_methods`).
    zeta : float, default 0.3
        SET's fraction of each sign's weights replaced per epoch.
    method_params : dict, optional
        Extra keyword arguments for the growth method.
    max_iter : int, default 200
        Number of epochs ``fit`` trains for (there is no early stopping).
    batch_size : int, default 128
        Mini-batch size, clipped to the number of samples.
    lr : float, default 0.01
        Learning rate.
    momentum : float, default 0.9
        Heavy-ball momentum.
    weight_decay : float, default 2e-4
        L2 penalty.
    decay : {"coupled", "decoupled"}, default "coupled"
        PyTorch-style L2 through the gradient, or a per-step shrink of the weights.
    lr_schedule : {"constant", "step", "cosine", "linear"}, default "constant"
        Learning-rate schedule over ``max_iter`` epochs.
    warmup_epochs : float, default 0.0
        Linear learning-rate warm-up.
    init : {"he_uniform", "xavier_uniform", "normal"}, default "he_uniform"
        Distribution of initial and regrown weights.
    fan_in : {"dense", "actual"}, default "dense"
        Fan-in that scales the initial weights; regrown weights use the dense fan-in.
    backend : {"cpu", "gpu", "auto"}, default "cpu"
        Kernel backend.
    dtype : {"float32", "float64"}, default "float32"
        Precision of weights and activations.
    max_grad_norm : float or None, default 10.0
        Rescale a step's gradients when their global L2 norm exceeds this (None: never); keeps
        plain SGD from diverging on unscaled inputs.
    warm_start : bool, default False
        Let ``fit`` continue training the current network instead of starting anew.
    verbose : bool, default False
        Log a line per epoch at INFO level on the ``"sparsekit"`` logger (DEBUG otherwise).
    random_state : int, RandomState instance or None, default None
        Seeds the topology, the initial weights, the data order, dropout and regrowth.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Feature names, when ``X`` had string column names.
    model_ : SparseMLP
        The trained network (its outputs are standardised targets).
    n_outputs_ : int
        Number of targets.
    n_iter_ : int
        Epochs trained so far.
    t_ : int
        Optimizer steps taken so far.
    loss_ : float
        Mean training loss (``0.5 * squared error`` of standardised targets) of the last epoch.
    loss_curve_ : list of float
        Mean training loss of every epoch.

    See Also
    --------
    SparseMLPClassifier : The same network with a softmax output.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsekit import SparseMLPRegressor
    >>> X = np.random.default_rng(0).standard_normal((200, 5))
    >>> reg = SparseMLPRegressor((32,), max_iter=20, random_state=0).fit(X, X[:, 0])
    >>> reg.predict(X[:2]).shape
    (2,)
    """

    _loss = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _encode_targets(self, y, first: bool, classes=None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self.n_outputs_ = y2.shape[1]
            self._y_1d = y.ndim == 1
            self._y_mean = y2.mean(axis=0)
            scale = y2.std(axis=0)
            self._y_scale = np.where(scale > 0, scale, 1.0)
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} outputs, expected {self.n_outputs_}")
        return (y2 - self._y_mean) / self._y_scale

    def partial_fit(self, X, y):
        """Train one epoch on ``(X, y)``, creating the network on the first call.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets; the first call fixes their number and standardisation.

        Returns
        -------
        self : object
            The updated estimator.
        """
        return self._partial_fit(X, y)

    def predict(self, X) -> np.ndarray:
        """Predicted targets.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            1-D when ``fit`` was given a 1-D ``y``.
        """
        out = self._forward(X) * self._y_scale + self._y_mean
        return out.ravel() if self._y_1d else out
