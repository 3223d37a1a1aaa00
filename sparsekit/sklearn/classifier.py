"""The sparse MLP classifier."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets

from ._doc import ATTRIBUTES, PARAMETERS
from .base import _SparseMLPBase


class SparseMLPClassifier(ClassifierMixin, _SparseMLPBase):
    __doc__ = f"""A truly sparse multilayer perceptron classifier (softmax output, cross-entropy).

    The network's weights are CSR matrices from initialisation on (Erdős–Rényi topology with
    ``epsilon``); every epoch SET (``method="set"``) replaces the fraction ``zeta`` of the
    smallest weights with random new connections.  Parameters and fitted attributes follow
    :class:`sklearn.neural_network.MLPClassifier` wherever the meaning is the same; the
    defaults were chosen by the sweep of ``benchmarks/tabular.py``.

    Parameters
    ----------
{PARAMETERS}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
{ATTRIBUTES}

    See Also
    --------
    SparseMLPRegressor : The same network with a linear output and squared error.
    sklearn.neural_network.MLPClassifier : The dense multilayer perceptron.
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

    def _encode_targets(self, y, first: bool, classes=None, sample_weight=None) -> np.ndarray:
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

    def _validation_score(self, X, target, sample_weight=None) -> float:
        right = self._logits(X).argmax(axis=1) == target
        return float(np.average(right, weights=sample_weight))

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Train one epoch on ``(X, y)``, creating the network on the first call.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each sample's loss (None: all equal), as in :meth:`fit`.
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
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

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
