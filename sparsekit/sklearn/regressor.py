"""The sparse MLP regressor."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin

from .base import _SparseMLPBase


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
