"""Madelon-like synthetic classification data of any size (:func:`make_synthetic`)."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, _block, _finish, _stratified_split

__all__ = ["make_synthetic"]


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
        # capped: the checks are all evaluated, and 2 ** (10 ** 12) would never finish
        (n_clusters <= 2 ** min(n_informative, 64), f"n_classes * n_clusters_per_class "
         f"({n_clusters}) exceeds the 2**{n_informative} hypercube vertices"),
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
