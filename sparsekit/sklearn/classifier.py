"""The sparse MLP classifier."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets

from .base import _SparseMLPBase


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
