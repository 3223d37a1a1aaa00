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

from .._compat import missing_extra

try:
    import sklearn.utils.validation as _validation
except ImportError as exc:
    raise missing_extra("scikit-learn >= 1.6", "sklearn",
                        "sparsekit's scikit-learn estimators") from exc
if not hasattr(_validation, "validate_data"):  # older than scikit-learn 1.6
    raise missing_extra("scikit-learn >= 1.6", "sklearn", "sparsekit's scikit-learn estimators")

from .classifier import SparseMLPClassifier  # noqa: E402
from .regressor import SparseMLPRegressor  # noqa: E402

__all__ = ["SparseMLPClassifier", "SparseMLPRegressor"]
