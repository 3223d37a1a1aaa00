"""Datasets, offline first: Fashion-MNIST (IDX files), digits, Madelon-like synthetic data, user arrays.

Every loader returns a :class:`Dataset` with float32 C-contiguous features and int64 labels
``0..n_classes-1``; features are z-scored per feature with *training* statistics unless
``standardize=False``. :func:`check_xy` is the validation everything goes through.
"""

from __future__ import annotations

import gzip
import inspect
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsekit import _compat

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "Dataset", "check_xy", "from_arrays",
           "iterate_minibatches", "load_dataset", "make_synthetic", "read_idx"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# IDX type byte -> big-endian dtype, the format's own table.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


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
                            names=("x_train", "y_train"))
        if xtr.shape[0] == 0:
            raise ValueError("x_train has no rows")
        xte, yte = check_xy(self.x_test, self.y_test, n_features=xtr.shape[1],
                            n_classes=self.n_classes, names=("x_test", "y_test"))
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


def check_xy(x: Any, y: Any = None, n_features: int | None = None, n_classes: int | None = None,
             *, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray | None]:
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

    Returns
    -------
    (x, y) : (np.ndarray, np.ndarray or None)
        ``x`` as an array (floating dtypes kept, integers become float32); ``y`` as int64.
    """
    xn, yn = names
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{xn} must be 2-D (n_samples, n_features), got shape {x.shape}")
    if x.dtype.kind in "biu":
        x = x.astype(np.float32)
    elif x.dtype.kind != "f":
        raise ValueError(f"{xn} must hold real numbers, got dtype {x.dtype}")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{xn} has {x.shape[1]} features, expected {n_features}")
    step = _block(x.shape[1])
    for s in range(0, x.shape[0], step):
        bad = ~np.isfinite(x[s:s + step])
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{xn} contains NaN or inf (first at row {s + r}, column {c})")
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{yn} must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{yn} has {y.shape[0]} labels but {xn} has {x.shape[0]} rows")
    if y.dtype.kind not in "biuf" or (
            y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all())):
        raise ValueError(f"{yn} must hold integer class labels, got {y.dtype} values "
                         "(from_arrays maps labels of any type)")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        bad_label = y.min() if y.min() < 0 else y.max()
        upper = "" if n_classes is None else f"..{n_classes - 1}"
        raise ValueError(f"{yn} has label {bad_label} outside 0{upper}")
    return x, y


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed, checking its header against its size.

    Raises
    ------
    ValueError
        The file is corrupt or truncated; the message names it.
    """
    path = Path(path)
    with open(path, "rb") as raw:  # outside the try: a missing file stays FileNotFoundError
        is_gz = raw.read(2) == b"\x1f\x8b"
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(size - 4, 0))
        isize = int.from_bytes(raw.read(4), "little")  # gzip trailer: uncompressed size % 2**32
    try:
        with gzip.open(path, "rb") if is_gz else open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or not head[3]:
                raise ValueError(f"{path}: not an IDX file (magic number {head.hex()!r})")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            dbytes = f.read(4 * ndim)
            if len(dbytes) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dbytes, ">u4"))
            expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            # Checked before allocating, so a corrupt header cannot ask for terabytes.
            actual, want = (isize, expected % 2**32) if is_gz else (size, expected)
            if actual != want:
                raise ValueError(f"{path}: truncated or corrupt IDX file (header {dims} needs "
                                 f"{expected} bytes, file holds {actual % 2**32 if is_gz else actual})")
            out = np.empty(dims, dtype=dtype)
            view, got = memoryview(out).cast("B"), 0
            while got < out.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{path}: truncated IDX file ({got} of {out.nbytes} bytes)")
                got += n
            if f.read(1):
                raise ValueError(f"{path}: IDX file is longer than its header says")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated file ({exc})") from exc
    return out.astype(dtype.newbyteorder("="), copy=False)


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
    if standardize:
        _standardize(x_train, x_test)
    return Dataset(x_train, y_train, x_test, y_test, **meta)


def _find_fashion_mnist(data_dir: str | os.PathLike | None) -> dict[str, Path]:
    env = os.environ.get("SPARSEKIT_DATA")
    if data_dir is not None:  # an explicit folder is strict: never silently use another copy
        places, looked = [Path(data_dir), Path(data_dir) / "fashion-mnist"], []
    else:
        places = [Path(env), Path(env) / "fashion-mnist"] if env else []
        places.append(Path(DEBIAN_FASHION_MNIST_DIR))
        looked = [] if env else ["$SPARSEKIT_DATA (not set)"]
    for place in places:
        found = {stem: place / (stem + ext) for stem in _FMNIST_FILES for ext in (".gz", "")
                 if (place / (stem + ext)).is_file()}
        if len(found) == len(_FMNIST_FILES):
            return found
        missing = ", ".join(s for s in _FMNIST_FILES if s not in found)
        looked.append(f"{place} ({'missing ' + missing if place.is_dir() else 'no such folder'})")
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in: " + "; ".join(looked) + ". To get it: run "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four IDX files "
        f"({', '.join(s + '.gz' for s in _FMNIST_FILES)}) from the Zalando repository "
        "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into a folder "
        "and pass it as --data-dir / data_dir=, or set SPARSEKIT_DATA to it.")


def _load_fashion_mnist(data_dir=None, standardize: bool = True) -> Dataset:
    files = _find_fashion_mnist(data_dir)
    xtr, ytr, xte, yte = (read_idx(files[s]) for s in _FMNIST_FILES)
    for xi, yi, part in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi) or xi.dtype != np.uint8:
            raise ValueError(f"Fashion-MNIST {part} files do not match: images {xi.shape} "
                             f"{xi.dtype}, labels {yi.shape} (in {files[_FMNIST_FILES[0]].parent})")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"Fashion-MNIST train images are {xtr.shape[1:]}, test {xte.shape[1:]}")
    x_train, x_test = (a.reshape(len(a), -1).astype(np.float32) for a in (xtr, xte))
    x_train /= 255.0
    x_test /= 255.0
    n_classes = int(max(ytr.max(), yte.max())) + 1
    return _finish(x_train, ytr, x_test, yte, standardize, n_classes=n_classes,
                   name="fashion-mnist", image_shape=xtr.shape[1:],
                   class_names=_FMNIST_NAMES if n_classes == 10 else None)


def _load_digits(standardize: bool = True, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    if not _compat.has_sklearn:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, test_fraction, np.random.default_rng(seed))
    return _finish(x[tr], y[tr], x[te], y[te], standardize, n_classes=10, name="digits",
                   image_shape=(8, 8), class_names=tuple("0123456789"))


def make_synthetic(n_samples: int = 4400, n_features: int = 500, n_informative: int = 5,
                   n_redundant: int | None = None, n_classes: int = 2,
                   n_clusters_per_class: int = 16, class_sep: float = 1.0, flip_y: float = 0.01,
                   seed: int = 0, test_fraction: float = 0.25, standardize: bool = True,
                   name: str = "synthetic") -> Dataset:
    """Madelon-like classification data of any size, generated in float32 row blocks.

    Each class owns ``n_clusters_per_class`` Gaussian clusters, each with its own random
    covariance, centred on distinct vertices of the hypercube ``{-class_sep, +class_sep}`` in the
    ``n_informative``-dimensional subspace. ``n_redundant`` features (default ``3 *
    n_informative``) are random linear combinations of the informative ones, the rest are N(0, 1)
    noise; columns are shuffled, then a fraction ``flip_y`` of labels is redrawn at random.
    Defaults mirror MADELON (2 classes x 16 clusters, 5 informative, 15 redundant, 480 noise
    features). Memory is O(n_samples x n_features); the split is stratified by class.
    """
    if n_redundant is None:
        n_redundant = min(3 * n_informative, max(n_features - n_informative, 0))
    n_clusters = n_classes * n_clusters_per_class
    for ok, msg in [
        (n_classes >= 2, f"n_classes must be >= 2, got {n_classes}"),
        (n_informative >= 1, f"n_informative must be >= 1, got {n_informative}"),
        (n_clusters_per_class >= 1, f"n_clusters_per_class must be >= 1, got {n_clusters_per_class}"),
        (0 <= n_redundant <= n_features - n_informative, f"n_features ({n_features}) must be >= "
         f"n_informative + n_redundant ({n_informative} + {n_redundant})"),
        (n_clusters <= 2 ** n_informative, f"n_classes * n_clusters_per_class ({n_clusters}) "
         f"exceeds the 2**n_informative = {2 ** n_informative} hypercube vertices"),
        (n_samples >= 2 * n_classes, f"n_samples must be >= 2 * n_classes, got {n_samples}"),
        (0.0 <= flip_y <= 1.0, f"flip_y must be in [0, 1], got {flip_y}"),
        (class_sep >= 0.0, f"class_sep must be >= 0, got {class_sep}"),
    ]:
        if not ok:
            raise ValueError(msg)
    rng = np.random.default_rng(seed)
    ni, nr = n_informative, n_redundant
    if ni <= 62:  # distinct vertices: distinct integers, read as bit patterns
        bits = (rng.choice(2**ni, size=n_clusters, replace=False)[:, None] >> np.arange(ni)) & 1
    else:  # 2**ni dwarfs n_clusters: random bit rows, redrawn in the rare case of a clash
        while len(np.unique(bits := rng.integers(0, 2, (n_clusters, ni)), axis=0)) < n_clusters:
            pass
    centroids = ((2 * bits - 1) * class_sep).astype(np.float32)
    covs = rng.uniform(-1, 1, (n_clusters, ni, ni)).astype(np.float32)
    mix = rng.uniform(-1, 1, (ni, nr)).astype(np.float32)
    col_perm = rng.permutation(n_features)
    # Balanced classes, each split evenly over its clusters; cluster k belongs to class k % C.
    per_class = n_samples // n_classes + (np.arange(n_classes) < n_samples % n_classes)
    k = np.arange(n_clusters)
    sizes = (per_class[k % n_classes] // n_clusters_per_class
             + (k // n_classes < per_class[k % n_classes] % n_clusters_per_class))
    labels = np.repeat(k % n_classes, sizes)
    # Rows are generated cluster by cluster and scattered to shuffled destinations in the
    # train/test arrays, so nothing of full size is ever allocated twice.
    tr, te = _stratified_split(labels, test_fraction, rng)
    dest, is_test = np.empty(n_samples, np.int64), np.zeros(n_samples, bool)
    dest[tr], dest[te], is_test[te] = rng.permutation(len(tr)), rng.permutation(len(te)), True
    x_train = np.empty((len(tr), n_features), np.float32)
    x_test = np.empty((len(te), n_features), np.float32)
    y_train, y_test = np.empty(len(tr), np.int64), np.empty(len(te), np.int64)
    y_train[dest[tr]], y_test[dest[te]] = labels[tr], labels[te]
    step, row = _block(n_features), 0
    feats = np.empty((step, n_features), np.float32)
    for c in range(n_clusters):
        for start in range(0, sizes[c], step):
            m = min(step, sizes[c] - start)
            info = rng.standard_normal((m, ni), dtype=np.float32) @ covs[c] + centroids[c]
            feats[:m, :ni] = info
            feats[:m, ni:ni + nr] = info @ mix
            feats[:m, ni + nr:] = rng.standard_normal((m, n_features - ni - nr), dtype=np.float32)
            sel, d = is_test[row:row + m], dest[row:row + m]
            block = feats[:m, col_perm]
            x_test[d[sel]], x_train[d[~sel]] = block[sel], block[~sel]
            row += m
    for y in (y_train, y_test):
        flip = rng.random(len(y)) < flip_y
        y[flip] = rng.integers(0, n_classes, int(flip.sum()))
    return _finish(x_train, y_train, x_test, y_test, standardize, n_classes=n_classes, name=name)


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
    x_train = check_xy(x_train, names=("x_train", "y_train"))[0]
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
                                  n_classes=n_classes, names=("x_test", "y_test"))
    if standardize:  # _standardize works in place: never on the caller's arrays
        x_train, x_test = (np.array(a, dtype=np.float32, order="C") for a in (x_train, x_test))
    return _finish(x_train, y_train, x_test, y_test, standardize, n_classes=n_classes, name=name,
                   image_shape=image_shape, classes=classes)


def _load_npz(path: Path, standardize: bool, **kwargs: Any) -> Dataset:
    bad = (OSError, EOFError, ValueError, zipfile.BadZipFile)
    try:
        npz = np.load(path, allow_pickle=False)
    except bad as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    if not hasattr(npz, "files"):
        raise ValueError(f"{path}: holds a single array, not an .npz archive of named arrays")
    with npz:
        if not {"x_train", "y_train"} <= set(npz.files):
            raise ValueError(f"{path}: needs arrays x_train, y_train (optionally x_test, y_test); "
                             f"found {sorted(npz.files)}")
        arrays = {}
        for key in ("x_train", "y_train", "x_test", "y_test"):
            try:
                if key in npz.files:
                    arrays[key] = npz[key]
            except bad as exc:  # object arrays refuse to load without pickle, by design
                why = "holds Python objects, which sparsekit does not unpickle" \
                    if "allow_pickle" in str(exc) else f"is unreadable ({exc})"
                raise ValueError(f"{path}: array {key} {why}") from exc
    kwargs.setdefault("name", path.stem)
    return from_arrays(**arrays, standardize=standardize, **kwargs)


_LOADERS = {"fashion-mnist": _load_fashion_mnist, "digits": _load_digits,
            "synthetic": make_synthetic, "madelon": make_synthetic}


def load_dataset(name: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 standardize: bool = True, **kwargs: Any) -> Dataset:
    """Load a dataset by name, or from an ``.npz`` file.

    Parameters
    ----------
    name : str or path
        ``"fashion-mnist"``: the four IDX files (plain or ``.gz``) from ``data_dir`` if given,
        else ``$SPARSEKIT_DATA`` or ``$SPARSEKIT_DATA/fashion-mnist``, else Debian's
        ``/usr/share/datasets/fashion-mnist``; pixels scaled to [0, 1].
        ``"digits"``: scikit-learn's 8x8 digits scaled to [0, 1], stratified split (kwargs
        ``seed=0``, ``test_fraction=0.25``). ``"synthetic"`` / ``"madelon"``: kwargs of
        :func:`make_synthetic`. A path to an ``.npz`` file with ``x_train, y_train`` and
        optionally ``x_test, y_test``, loaded without pickle (kwargs of :func:`from_arrays`).
    data_dir : path, optional
        Folder with the Fashion-MNIST files (then the only place looked); ignored otherwise.
    standardize : bool
        z-score each feature with the training split's mean and std (constant features keep
        scale 1), applied to both splits; False keeps the features as scaled above.

    Raises
    ------
    FileNotFoundError
        Data missing: the message names every place looked and how to get the data.
    ValueError
        Unknown name, corrupt file or invalid argument values.
    """
    key = str(name).lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(key, key)
    if key not in _LOADERS:
        path = Path(name)
        if path.is_file():
            return _load_npz(path, standardize, **kwargs)
        if path.suffix == ".npz":
            raise FileNotFoundError(f"dataset file {path} does not exist")
        raise ValueError(f"unknown dataset {name!r}: use one of {sorted(_LOADERS)} or a .npz path")
    loader = _LOADERS[key]
    accepted = sorted(set(inspect.signature(loader).parameters) - {"data_dir", "standardize", "name"})
    if set(kwargs) - set(accepted):
        raise TypeError(f"dataset {key!r} got unexpected options {sorted(set(kwargs) - set(accepted))}"
                        f" (it accepts {accepted})")
    if key == "fashion-mnist":
        return loader(data_dir, standardize)
    return loader(standardize=standardize, **kwargs,
                  **({"name": "madelon-like"} if key == "madelon" else {}))


def iterate_minibatches(x: np.ndarray, y: np.ndarray | None, batch_size: int,
                        rng: np.random.Generator | None, drop_last: bool = True, *,
                        indices: bool = False) -> Iterator[Any]:
    """Yield one epoch of ``(x_batch, y_batch)`` pairs, or index arrays when ``indices=True``.

    Parameters
    ----------
    x, y : np.ndarray
        Samples along axis 0; ``y`` may be None (then ``y_batch`` is None).
    batch_size : int
    rng : np.random.Generator or None
        Shuffles the order (one permutation per call); None keeps the data order.
    drop_last : bool
        Skip the final incomplete batch; then at least one full batch must exist.
    indices : bool
        Yield the index arrays instead of the batches.
    """
    n = len(x)
    if y is not None and len(y) != n:
        raise ValueError(f"y has {len(y)} labels but x has {n} rows")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if drop_last and n < batch_size:
        raise ValueError(f"batch_size ({batch_size}) exceeds the {n} samples with drop_last=True")
    order = np.arange(n) if rng is None else rng.permutation(n)
    stop = n - n % batch_size if drop_last else n

    def batches() -> Iterator[Any]:
        for s in range(0, stop, batch_size):
            idx = order[s:s + batch_size]
            yield idx if indices else (x[idx], None if y is None else y[idx])

    return batches()
