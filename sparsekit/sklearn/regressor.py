"""The sparse MLP regressor."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score

from ._doc import ATTRIBUTES, PARAMETERS
from .base import _SparseMLPBase
from .scaling import mean_std


class SparseMLPRegressor(RegressorMixin, _SparseMLPBase):
    __doc__ = f"""A truly sparse multilayer perceptron regressor (linear output, squared error).

    The hidden layers are those of :class:`SparseMLPClassifier`; the output layer is linear and
    trained on the mean squared error.  Targets are standardised internally (mean and standard
    deviation of the data of the first ``fit``/``partial_fit`` call) and predictions mapped back,
    so the learning rate does not depend on the targets' scale.  Parameters and fitted
    attributes follow :class:`sklearn.neural_network.MLPRegressor` wherever the meaning is the
    same.

    Parameters
    ----------
{PARAMETERS}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.
{ATTRIBUTES}

    The loss is ``0.5 * squared error`` summed over the outputs of the standardised targets,
    averaged over samples; the validation score is R² (``score``).

    See Also
    --------
    SparseMLPClassifier : The same network with a softmax output.
    sklearn.neural_network.MLPRegressor : The dense multilayer perceptron.

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

    def _encode_targets(self, y, first: bool, classes=None, sample_weight=None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self.n_outputs_ = y2.shape[1]
            self._y_1d = y.ndim == 1
            mean, scale = mean_std(y2, sample_weight)
            if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
                raise ValueError("y: its mean or standard deviation overflows float64; scale "
                                 "it down")
            self._y_mean = mean
            self._y_scale = np.where(scale > 0, scale, 1.0)
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} outputs, expected {self.n_outputs_}")
        return (y2 - self._y_mean) / self._y_scale

    def _validation_score(self, X, target, sample_weight=None) -> float:
        # R² does not change when targets and predictions share an affine map per output.
        return float(r2_score(target, self._logits(X), sample_weight=sample_weight))

    def partial_fit(self, X, y, sample_weight=None):
        """Train one epoch on ``(X, y)``, creating the network on the first call.

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets; the first call fixes their number and standardisation.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each sample's loss (None: all equal), as in :meth:`fit`.

        Returns
        -------
        self : object
            The updated estimator.
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

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
