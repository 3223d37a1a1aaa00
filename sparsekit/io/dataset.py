"""The :class:`Dataset` container and the validation and preprocessing every loader shares.

A :class:`Dataset` holds float32 C-contiguous features and int64 labels ``0..n_classes-1``,
checked on construction by :func:`check_xy`, the validation every input to sparsekit goes
through (one-line ``ValueError`` naming the argument).  :func:`from_arrays` builds one from user
arrays of any label type; the loaders of :mod:`sparsekit.io.datasets` and
:mod:`sparsekit.io.synthetic` z-score features with *training* statistics and hold out a
stratified test split with the helpers here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Dataset", "check_labels", "check_xy", "from_arrays", "is_sparse"]


def _block(n_features: int) -> int:
    # Rows per block for streamed passes: ~1 MiB float64 temporaries, reused by the allocator
    # (first-touch page faults on big fresh temporaries cost more than the arithmetic here).
    return max(64, 2**17 // max(n_features, 1))


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test classification dataset, validated and normalised on construction.

    Attributes
    ----------
    x_train, x_test : np.ndarray
        float32, C-contiguous, ``(n, n_features)``; ``x_test`` may have 0 rows.
    y_train, y_test : np.ndarray
        int64 labels in ``0..n_classes-1`` (``n_classes >= 2``).
    image_shape : tuple of int or None
        ``(28, 28)`` for Fashion-MNIST, ``(8, 8)`` for digits, None for non-image data.
    classes, class_names : np.ndarray or None, tuple of str or None
        Original label of each class index (set by :func:`from_arrays`); readable names.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    image_shape: tuple[int, ...] | None = None
    classes: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_classes, int | np.integer) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        set_ = object.__setattr__  # frozen: normalise fields once, here
        set_(self, "n_classes", int(self.n_classes))
        xtr, ytr = check_xy(self.x_train, self.y_train, n_classes=self.n_classes,
                            names=("x_train", "y_train"), dtype=np.float32)
        if xtr.shape[0] == 0:
            raise ValueError("x_train has no rows")
        xte, yte = check_xy(self.x_test, self.y_test, n_features=xtr.shape[1],
                            n_classes=self.n_classes, names=("x_test", "y_test"),
                            dtype=np.float32)
        for key, val, dtype in (("x_train", xtr, np.float32), ("y_train", ytr, np.int64),
                                ("x_test", xte, np.float32), ("y_test", yte, np.int64)):
            set_(self, key, np.ascontiguousarray(val, dtype=dtype))
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if int(np.prod(shape)) != xtr.shape[1]:
                raise ValueError(f"image_shape {shape} does not match {xtr.shape[1]} features")
            set_(self, "image_shape", shape)

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
                f"test={self.x_test.shape}, n_classes={self.n_classes}, "
                f"image_shape={self.image_shape})")


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a ``scipy.sparse`` matrix or array (without importing SciPy)."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def check_xy(x: Any, y: Any = None, n_features: int | None = None, n_classes: int | None = None,
             *, names: tuple[str, str] = ("x", "y"), sparse: bool = False,
             dtype=None) -> tuple[Any, np.ndarray | None]:
    """Validate features and integer labels, raising a one-line ``ValueError`` naming the argument.

    Parameters
    ----------
    x, y : array_like
        Features ``(n_samples, n_features)``, real and finite; integer labels, 1-D, one per
        row of ``x`` (``y`` may be None).
    n_features, n_classes : int, optional
        Expected number of columns of ``x``; labels must lie in ``0..n_classes-1``.
    names : (str, str)
        Argument names used in the messages.
    sparse : bool
        Accept a ``scipy.sparse`` ``x`` and return it as CSR (its stored values checked);
        otherwise such an ``x`` is refused with a message saying so.
    dtype : numpy dtype, optional
        The precision ``x`` will be computed in: values beyond its range (finite in float64,
        inf once cast) are refused too.

    Returns
    -------
    (x, y) : (np.ndarray or scipy.sparse CSR, np.ndarray or None)
        ``x`` as an array (floating dtypes kept, integers become float32); ``y`` as int64.
    """
    xn, yn = names
    if is_sparse(x):
        if not sparse:
            raise ValueError(f"{xn} is a scipy.sparse matrix where a dense array is needed "
                             "(train() and the estimators take sparse input)")
        return (_check_sparse_x(x, n_features, xn, dtype),
                check_labels(y, x.shape[0], n_classes, names))
    x = _check_matrix(np.asarray(x), n_features, xn)
    bad = first_bad_entry(x, dtype)
    if bad is not None:
        raise ValueError(bad_value_message(xn, x[bad], *bad, dtype))
    return x, check_labels(y, x.shape[0], n_classes, names)


def first_bad_entry(x, dtype=None) -> tuple[int, int] | None:
    """``(row, column)`` of the first entry of ``x`` (a dense array or a CSR matrix's stored
    values) that is NaN, inf, or -- with ``dtype`` narrower than ``x``'s -- beyond ``dtype``'s
    range; None when there is none.  Dense ``x`` is scanned a block of rows at a time."""
    limit = None
    if dtype is not None and np.dtype(dtype).itemsize < x.dtype.itemsize:
        limit = np.finfo(dtype).max

    def bad(values):
        with np.errstate(invalid="ignore"):
            return ~np.isfinite(values) if limit is None else ~(np.abs(values) <= limit)

    if is_sparse(x):
        where = np.flatnonzero(bad(x.data))
        if not where.size:
            return None
        k = int(where[0])
        return int(np.searchsorted(x.indptr, k, side="right")) - 1, int(x.indices[k])
    step = _block(x.shape[1])
    for s in range(0, x.shape[0], step):
        found = bad(x[s:s + step])
        if found.any():
            r, c = np.argwhere(found)[0]
            return s + int(r), int(c)
    return None


def bad_value_message(xn: str, value, row: int, col: int, dtype) -> str:
    """The message for ``xn``'s ``value`` at ``(row, col)``: NaN, inf, or beyond ``dtype``'s
    range."""
    if np.isfinite(value):
        return (f"{xn} contains values beyond {np.dtype(dtype).name}'s range ({float(value):.3g}, "
                f"first at row {row}, column {col}); scale them down")
    return f"{xn} contains NaN or inf (first at row {row}, column {col})"


def _check_matrix(x: Any, n_features: int | None, xn: str):
    """What dense and sparse ``x`` share: 2-D, real (integers become float32), ``n_features``
    columns."""
    if x.ndim != 2:
        raise ValueError(f"{xn} must be 2-D (n_samples, n_features), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{xn} has no feature columns (shape {x.shape})")
    if x.dtype.kind in "biu":
        x = x.astype(np.float32)
    elif x.dtype.kind != "f":
        raise ValueError(f"{xn} must hold real numbers, got dtype {x.dtype}")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{xn} has {x.shape[1]} features, expected {n_features}")
    return x


def _check_sparse_x(x: Any, n_features: int | None, xn: str, dtype=None):
    """A scipy.sparse ``x`` as CSR: 2-D, real, finite stored values (within ``dtype``'s
    range), ``n_features`` columns."""
    x = _check_matrix(x.tocsr(), n_features, xn)
    bad = first_bad_entry(x, dtype)
    if bad is not None:
        raise ValueError(bad_value_message(xn, x[bad], *bad, dtype))
    return x


def check_labels(y: Any, n_samples: int, n_classes: int | None = None,
                 names: tuple[str, str] = ("x", "y")) -> np.ndarray | None:
    """``y`` as int64 class labels, one per sample, in ``0..n_classes-1``; None stays None."""
    xn, yn = names
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{yn} must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{yn} has {y.shape[0]} labels but {xn} has {n_samples} rows")
    if y.dtype.kind not in "biuf" or (
            y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all())):
        raise ValueError(f"{yn} must hold integer class labels, got {y.dtype} values "
                         "(from_arrays maps labels of any type)")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad_label = y.min() if y.min() < 0 else y.max()
        upper = "" if n_classes is None else f"..{n_classes - 1}"
        raise ValueError(f"{yn} has label {bad_label} outside 0{upper}")
    return y


def _standardize(x_train: np.ndarray, *others: np.ndarray) -> None:
    """z-score float32 arrays in place with x_train's per-feature mean/std (float64, two-pass)."""
    n, step = x_train.shape[0], _block(x_train.shape[1])
    blocks = [x_train[s:s + step] for s in range(0, n, step)]
    mean = sum(b.sum(0, dtype=np.float64) for b in blocks) / n
    std = np.sqrt(sum(np.square(b - mean).sum(0) for b in blocks) / n)
    # Constant features (up to float32 rounding of their value) keep scale 1 instead of exploding.
    std[(std == 0) | (std <= np.finfo(np.float32).eps * np.abs(mean))] = 1.0
    mean32, inv32 = mean.astype(np.float32), (1.0 / std).astype(np.float32)
    for x in (x_train, *others):
        x -= mean32
        x *= inv32


def _stratified_split(y: np.ndarray, test_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices; round(test_fraction * count) of each class go to test."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    perm = rng.permutation(y.shape[0])
    order = perm[np.argsort(y[perm], kind="stable")]
    counts = np.bincount(y)
    n_test = np.minimum(np.floor(counts * test_fraction + 0.5), np.maximum(counts - 1, 0))
    rank = np.arange(y.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    in_test = rank < np.repeat(n_test, counts)
    return np.sort(order[~in_test]), np.sort(order[in_test])


def _finish(x_train, y_train, x_test, y_test, standardize: bool, **meta: Any) -> Dataset:
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    if x_train.ndim == 2 and x_train.shape[0] == 0:
        raise ValueError("x_train has no rows")  # before the statistics divide by its size
    if standardize:
        _standardize(x_train, x_test)
    return Dataset(x_train, y_train, x_test, y_test, **meta)


def _encode_labels(ys: list[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """Map labels of any hashable type to 0..C-1 consistently across arrays (sorted if orderable)."""
    ys = [np.asarray(y) for y in ys]
    for y, n in zip(ys, ("y_train", "y_test"), strict=False):
        if y.ndim != 1:
            raise ValueError(f"{n} must be 1-D (one label per sample), got shape {y.shape}")
    flat = np.concatenate(ys)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise ValueError("labels contain NaN or inf")
    try:
        classes, inverse = np.unique(flat, return_inverse=True)
    except TypeError:  # unorderable mix of types: classes in order of first appearance
        lookup: dict[Any, int] = {}
        inverse = np.array([lookup.setdefault(v, len(lookup)) for v in flat.tolist()], np.int64)
        classes = np.empty(len(lookup), dtype=object)
        classes[:] = list(lookup)
    return np.split(inverse.ravel(), [len(ys[0])])[: len(ys)], classes


def from_arrays(x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None, *,
                n_classes: int | None = None, name: str = "arrays", standardize: bool = False,
                test_fraction: float = 0.25, seed: int = 0,
                image_shape: tuple[int, ...] | None = None) -> Dataset:
    """Build a :class:`Dataset` from user arrays.

    Parameters
    ----------
    x_train, y_train : array_like
        Features ``(n, n_features)`` and labels of any hashable type (ints, strings, ...).
    x_test, y_test : array_like, optional
        Test set; without it a stratified ``test_fraction`` of the training data (seeded by
        ``seed``) is held out (``test_fraction=0`` gives an empty test set).
    n_classes : int, optional
        If given, labels must already be integers ``0..n_classes-1`` and are kept as they are.
        Otherwise the distinct labels (sorted) become ``0..C-1`` and are kept as ``classes``.
    standardize : bool
        z-score with training statistics. Off by default: user arrays are used as given.
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together")
    x_train = check_xy(x_train, names=("x_train", "y_train"), dtype=np.float32)[0]
    ys, classes = [y_train, y_test][: 1 if y_test is None else 2], None
    if n_classes is None:
        ys, classes = _encode_labels(ys)
        n_classes = len(classes)
    y_train = check_xy(x_train, ys[0], n_classes=n_classes, names=("x_train", "y_train"))[1]
    if x_test is None:
        tr, te = _stratified_split(y_train, test_fraction, np.random.default_rng(seed))
        x_train, x_test, y_train, y_test = x_train[tr], x_train[te], y_train[tr], y_train[te]
    else:
        x_test, y_test = check_xy(x_test, ys[1], n_features=x_train.shape[1],
                                  n_classes=n_classes, names=("x_test", "y_test"),
                                  dtype=np.float32)
    if standardize:  # _standardize works in place: never on the caller's arrays
        x_train, x_test = (np.array(a, dtype=np.float32, order="C") for a in (x_train, x_test))
    return _finish(x_train, y_train, x_test, y_test, standardize, n_classes=n_classes, name=name,
                   image_shape=image_shape, classes=classes)
