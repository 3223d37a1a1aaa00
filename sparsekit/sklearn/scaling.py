"""The estimators' input standardisation: statistics of the first call's ``X``, and the map.

The map is the same for dense and sparse ``X``.  Fitted on a sparse ``X``, it has no mean (only
divisors), so sparse input keeps its pattern; fitted on a dense one it centres every later
``X``, sparse included.  Values are computed in the network's precision unless ``X`` or the
statistics lie beyond its range, and a value that still does not fit is refused with its
position, never trained on or predicted from as inf.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from ..io.dataset import first_bad_entry

#: Smallest divisor of a standardised feature, as a share of the median standard deviation of
#: the non-constant features (``benchmarks/results/tabular.md``: +1.7 points on Fashion-MNIST,
#: +1.1 on seattle-weather, +0.5 on digits against plain standardisation, no set worse).
STD_FLOOR = 0.3
#: ``standardize="auto"``: when the 90th percentile of the non-constant features' standard
#: deviations is at most this many times the 10th, the features are taken to share one scale
#: (pixels, counts of one kind, make_classification's columns) and are all divided by the
#: median standard deviation, so that their relative spread -- often the signal: informative
#: columns spread wider than noise ones -- survives; otherwise (mixed units: wine's spread is
#: 51, breast_cancer's 5 000, digits' 30 with its blank border pixels) each is standardised.
#: Measured with ``benchmarks/tabular.py`` (7 seeds, GSE): make_classification with 1 000
#: features 0.80 -> 0.85, with 100 features 0.87 -> 0.89; the spread of the bundled and Vega
#: sets puts iris (2.8), redundant_noise (3.9), Fashion-MNIST (4.5) and the pre-scaled
#: regression sets (1.0) below it, seattle-weather (9.9) above it.
COMMON_SCALE_SPREAD = 5.0


def weighted_mean_var(X, sample_weight):
    """Per-column mean and (biased) variance of dense ``X`` under ``sample_weight``."""
    mean = np.average(X, axis=0, weights=sample_weight)
    var = np.average((X - mean) ** 2, axis=0, weights=sample_weight)
    return mean, var


def mean_std(X, sample_weight=None):
    """Per-column ``(mean, std)`` of ``X`` (dense, or CSR: mean None) under ``sample_weight``.

    Values beyond about 1e154 overflow the variance's squares, and values below about 1e-154
    underflow them to a variance of 0: then the statistics are those of each column divided
    by its largest magnitude, scaled back.
    """
    if sp.issparse(X) and not X.has_canonical_format:
        # mean_variance_axis counts each stored entry as a value: duplicates (which SciPy sums)
        # would shrink the divisors
        X = X.copy()
        X.sum_duplicates()

    def plain(X):
        if sp.issparse(X):
            weights = None if sample_weight is None else sample_weight.astype(X.dtype)
            _, var = mean_variance_axis(X, axis=0, weights=weights)
            return None, np.sqrt(np.asarray(var, dtype=np.float64))
        with np.errstate(over="ignore", invalid="ignore"):
            mean, var = (weighted_mean_var(X, sample_weight) if sample_weight is not None
                         else (X.mean(axis=0), X.var(axis=0)))
        return mean, np.sqrt(np.asarray(var, dtype=np.float64))

    mean, std = plain(X)
    if np.isfinite(std).all() and (mean is None or np.isfinite(mean).all()) and not (
            _varies(X, std == 0)):
        return mean, std
    big = (abs(X).max(axis=0).toarray().ravel() if sp.issparse(X)
           else np.abs(X).max(axis=0)).astype(np.float64)
    big[~(big > 0)] = 1.0
    shrunk = (X.astype(np.float64) @ sp.diags(1.0 / big)).tocsr() if sp.issparse(X) \
        else X / big
    mean, std = plain(shrunk)
    return (None if mean is None else mean * big), std * big


def _varies(X, columns) -> bool:
    """Whether any of ``columns`` (a mask) of ``X`` holds two different values."""
    if not columns.any():
        return False
    high, low = X.max(axis=0), X.min(axis=0)
    if sp.issparse(X):
        high, low = high.toarray().ravel(), low.toarray().ravel()
    return bool((np.asarray(high)[columns] > np.asarray(low)[columns]).any())


def input_scaling(X, standardize, sample_weight=None):
    """``(mean, scale)`` per feature of ``X`` for ``standardize`` (True, False or "auto"):
    ``(None, None)`` when not standardising, no mean when ``X`` is sparse; weighted by
    ``sample_weight`` when given.

    Standardising divides a feature by its standard deviation, but by at least
    :data:`STD_FLOOR` times the median standard deviation of the non-constant features, so
    nearly constant ones (the border pixels of an image) are not blown up into noise as large
    as the informative ones.  ``"auto"`` divides every feature by that median instead when the
    features share a scale (:data:`COMMON_SCALE_SPREAD`).
    """
    if not standardize:
        return None, None
    mean, std = mean_std(X, sample_weight)
    if not np.isfinite(std).all():  # a column spanning float64's whole range
        col = int(np.flatnonzero(~np.isfinite(std))[0])
        raise ValueError(f"X: the standard deviation of column {col} overflows float64; scale "
                         "it down")
    varying = std[std > 0]
    median = float(np.median(varying)) if varying.size else 1.0
    if standardize == "auto" and varying.size:
        p10, p90 = np.percentile(varying, [10, 90])
        if p90 <= COMMON_SCALE_SPREAD * p10:
            return mean, np.full_like(std, median)
    return mean, np.maximum(std, STD_FLOOR * median)


def scale_inputs(X, mean, scale, dtype, row_offset: int = 0):
    """``(X - mean) / scale`` in ``dtype`` (one copy; ``scale`` None: ``X`` as given, checked).

    A sparse ``X`` stays sparse when there is no mean and becomes dense otherwise.
    ``row_offset``: ``X`` is a block of rows starting there (for the error's row number).
    """
    dtype = np.dtype(dtype)
    if scale is None:
        check_range(X, X, dtype, standardised=False, row_offset=row_offset)
        return X
    given = X
    # In the network's precision, unless X or the statistics lie beyond its range: then in
    # float64, so that what standardising brings back into range trains as it should.
    work = dtype if fits(X, mean, scale, dtype) else np.dtype(np.float64)
    inv = (1.0 / scale).astype(work)
    if sp.issparse(X):
        if mean is None:
            out = X.astype(work, copy=True).tocsr()
            out.data *= inv[out.indices]
            out = out.astype(dtype, copy=False)
            check_range(out, given, dtype, row_offset=row_offset)
            return out
        X = X.toarray()
    if mean is None:
        out = np.array(X, dtype=work, copy=True)
    else:
        out = np.asarray(X, dtype=work) - mean.astype(work)
    out *= inv
    with np.errstate(over="ignore"):
        out = out.astype(dtype, copy=False)
    check_range(out, given, dtype, row_offset=row_offset)
    return out


def fits(X, mean, scale, dtype) -> bool:
    """Whether ``X`` (dense or CSR), ``mean`` and ``1 / scale`` all lie within ``dtype``'s
    range."""
    limit = np.finfo(dtype).max
    data = X.data if sp.issparse(X) else np.asarray(X)
    stats = [1.0 / scale] + ([] if mean is None else [mean])
    if data.size:
        biggest = max(abs(float(data.max())), abs(float(data.min())))
        stats.append(biggest)
        if mean is not None:  # X - mean too: 3e38 - (-3e38) is beyond float32
            stats.append(biggest + float(np.abs(mean).max()))
    return all(bool(np.all(np.abs(s) <= limit)) for s in stats)


def check_range(X, original, dtype, standardised: bool = True, row_offset: int = 0) -> None:
    """Refuse an ``X`` (dense or CSR, standardised or as given) that holds a value beyond
    ``dtype``'s range: finite in float64, it would train on or predict from inf.
    ``original`` is the ``X`` the caller gave, whose value the message quotes."""
    bad = first_bad_entry(X, dtype)
    if bad is None:
        return
    row, col = bad
    when = " once standardised" if standardised else ""
    raise ValueError(f"X holds a value beyond {dtype.name}'s range{when} (row "
                     f"{row_offset + row}, column {col}: {float(original[row, col]):.3g}); "
                     "scale it down, or use dtype='float64'")
