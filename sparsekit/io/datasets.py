"""Datasets by name, offline first: Fashion-MNIST (IDX files), digits, Madelon-like synthetic
data, ``.npz`` files of user arrays (:func:`load_dataset`), and mini-batches.

Every loader returns a :class:`~sparsekit.io.dataset.Dataset` with float32 C-contiguous
features and int64 labels ``0..n_classes-1``; features are z-scored per feature with *training*
statistics unless ``standardize=False``.
"""

from __future__ import annotations

import inspect
import os
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import _compat
from .dataset import Dataset, _finish, _stratified_split, from_arrays
from .idx import read_idx
from .synthetic import make_synthetic

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "iterate_minibatches", "load_dataset"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


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


def _is_npy(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) == b"\x93NUMPY"


def _load_npz(path: Path, standardize: bool, **kwargs: Any) -> Dataset:
    # (NumPy parses an array header it does not recognise with tokenize)
    bad = (OSError, EOFError, ValueError, zipfile.BadZipFile, tokenize.TokenError)
    if path.is_file() and not zipfile.is_zipfile(path) and not _is_npy(path):
        raise ValueError(f"{path}: not an .npz archive (a zip file of named arrays)")
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


def is_dataset_name(name) -> bool:
    """Whether ``name`` names a built-in dataset (rather than a file)."""
    return isinstance(name, str) and _key(name) in _LOADERS


def _key(name) -> str:
    key = str(name).lower().replace("_", "-")
    return {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist"}.get(key, key)


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
        :func:`~sparsekit.io.synthetic.make_synthetic`. A path to an ``.npz`` file with ``x_train, y_train`` and
        optionally ``x_test, y_test``, loaded without pickle (kwargs of :func:`~sparsekit.io.dataset.from_arrays`).
    data_dir : path, optional
        Folder with the Fashion-MNIST files (then the only place looked).  For an ``.npz``
        file that is not where ``name`` says (a run's data, moved since), the folder where a
        file of that name is looked for.  Ignored otherwise.
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
    key = _key(name)
    if key not in _LOADERS:
        path = Path(name)
        if not path.is_file() and data_dir is not None and (Path(data_dir) / path.name).is_file():
            path = Path(data_dir) / path.name  # the file moved: found by name in data_dir
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
