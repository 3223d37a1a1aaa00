"""A microarray-style problem: thousands of features, a few hundred samples, with scikit-learn.

Gene-expression data has far more features (genes) than samples (patients).  This example
generates such data — a few informative genes among 20 000 (``--fast``: 2 000) — and
cross-validates ``SparseMLPClassifier`` inside a scikit-learn ``Pipeline``.  The first layer has
``ε·(n_in + n_out)`` connections instead of ``n_in·n_out``.  With ``--sparse`` the expression
matrix is thresholded into a ``scipy.sparse`` CSR matrix, which the estimator trains on without
ever densifying it (one mini-batch at a time).

    python examples/microarray.py --fast
    python examples/microarray.py --sparse
"""

import numpy as np
import scipy.sparse as sp
from _common import parser
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler

from sparsekit import SparseMLPClassifier
from sparsekit.io.synthetic import make_synthetic


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sparse", action="store_true",
                   help="keep only strong expression values, as a scipy.sparse matrix")
    args = p.parse_args()
    n_features = 2_000 if args.fast else 20_000
    data = make_synthetic(n_samples=240, n_features=n_features, n_informative=5,
                          n_clusters_per_class=1, class_sep=3.0, test_fraction=0.0, seed=0,
                          name="microarray-like")
    x, y = data.x_train, data.y_train
    if args.sparse:
        # "Present" calls only: values beyond one standard deviation; the rest become zeros.
        x = sp.csr_matrix(np.where(np.abs(x) > 1.0, x, 0.0).astype(np.float32))
        print(f"sparse input: {x.nnz} stored values ({100 * x.nnz / np.prod(x.shape):.1f}%)")
    clf = SparseMLPClassifier(hidden_layer_sizes=(128,), epsilon=10, dropout=0.3,
                              max_iter=15 if args.fast else 60, batch_size=32, random_state=0)
    # MaxAbsScaler keeps sparse input sparse (no centring).
    pipe = make_pipeline(MaxAbsScaler(), clf)
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, x, y, cv=cv)
    model = pipe.fit(x, y)[-1].model_
    dense = n_features * 128 + 128 * 2
    print(f"{x.shape[0]} samples x {n_features} features: cross-validated accuracy "
          f"{100 * scores.mean():.1f}% ± {100 * scores.std():.1f}")
    print(f"connections {sum(model.n_connections)} vs {dense} in a dense network "
          f"({100 * sum(model.n_connections) / dense:.1f}%)")


if __name__ == "__main__":
    main()
