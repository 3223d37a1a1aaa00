"""The scikit-learn estimators: scikit-learn's own checks, meta-estimators, sparse input."""

import pickle
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
sp = pytest.importorskip("scipy.sparse")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_blobs, make_regression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit._cython.backend import CpuBackend  # noqa: E402
from sparsekit.sklearn import SparseMLPClassifier, SparseMLPRegressor  # noqa: E402


def one_thread():
    # Tiny networks: a one-thread backend avoids starting OpenMP teams on every small kernel.
    return CpuBackend(num_threads=1)


FAST = dict(hidden_layer_sizes=(32,), max_iter=20, learning_rate_init=0.01, batch_size=32)

# Checks that are expected to fail: none.  Every check runs; the only ones reported as skipped
# are skipped by scikit-learn itself: `check_array_api_input` (runs only with SCIPY_ARRAY_API=1;
# the estimators do not claim array-API support) and, where pandas is not installed, the
# pandas-input checks.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [SparseMLPClassifier(backend=one_thread(), **FAST),
     SparseMLPRegressor(backend=one_thread(), **FAST)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(n_samples=240, centers=3, n_features=6, random_state=0)
    return x, y


def test_import_sparsekit_does_not_import_sklearn_or_torch():
    code = ("import sys, sparsekit; "
            "print(sorted({'sklearn', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    assert sparsekit.SparseMLPClassifier is SparseMLPClassifier


def test_classifier_learns_and_reports_fitted_state(blobs):
    x, y = blobs
    labels = np.array(["ant", "bee", "cat"])[y]
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST).fit(x, labels)
    assert list(clf.classes_) == ["ant", "bee", "cat"]
    assert clf.n_features_in_ == 6 and 1 <= clf.n_iter_ <= 20
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.t_ == 240 * clf.n_iter_
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(x, labels) > 0.9
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(x))
    # the fitted network is a SparseMLP that evolved its topology (SET) during fit
    assert clf.model_.layer_sizes == [6, 32, 3]


def test_constructor_only_stores_and_fit_names_bad_parameters(blobs):
    x, y = blobs
    clf = SparseMLPClassifier(hidden_layer_sizes=(0,), max_iter=-3, dropout=7)
    assert clf.get_params()["max_iter"] == -3  # nothing validated before fit
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        clf.fit(x, y)
    with pytest.raises(ValueError, match="max_iter"):
        SparseMLPClassifier(max_iter=0).fit(x, y)
    with pytest.raises(ValueError, match="dropout"):
        SparseMLPClassifier(dropout=1.5).fit(x, y)
    with pytest.raises(ValueError, match="only one class"):
        SparseMLPClassifier().fit(x, np.zeros(len(x)))


def test_same_seed_same_model_and_set_params(blobs):
    x, y = blobs
    a = SparseMLPClassifier(backend=one_thread(), random_state=3, **FAST).fit(x, y)
    b = clone(a).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    c = clone(a).set_params(random_state=4).fit(x, y)
    assert not np.array_equal(a.predict_proba(x), c.predict_proba(x))


def test_partial_fit_and_warm_start(blobs):
    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, hidden_layer_sizes=(16,))
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(x, y)
    for _ in range(3):
        clf.partial_fit(x[:120], y[:120], classes=[0, 1, 2])
    # one epoch per call (n_iter_ 1, as scikit-learn); t_ counts the samples seen
    assert clf.n_iter_ == 1 and clf.t_ == 360 and len(clf.loss_curve_) == 3
    assert clf._runner.step == 3  # batch_size "auto": min(200, 120), one step per call
    clf.partial_fit(x[120:], y[120:])
    assert clf.n_iter_ == 1 and clf.t_ == 480
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(x[:5], np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(x[:, :4], y)
    warm = SparseMLPClassifier(backend=one_thread(), random_state=0, max_iter=2,
                               warm_start=True).fit(x, y)
    model = warm.model_
    warm.fit(x, y)
    assert warm.model_ is model and warm.n_iter_ == 2 and warm.t_ == 4 * 240
    assert len(warm.loss_curve_) == 4


def test_regressor_single_and_multi_output():
    x, y = make_regression(n_samples=200, n_features=8, n_informative=4, noise=1.0,
                           random_state=0)
    y = 1000 + 50 * y  # far from the unit scale: targets are standardised internally
    reg = SparseMLPRegressor(backend=one_thread(), random_state=0, hidden_layer_sizes=(64,),
                             max_iter=60, dropout=0.0).fit(x, y)
    assert reg.predict(x).shape == (200,)
    assert reg.score(x, y) > 0.9
    y2 = np.column_stack([y, -2 * y])
    reg2 = clone(reg).fit(x, y2)
    assert reg2.n_outputs_ == 2 and reg2.predict(x).shape == (200, 2)
    assert reg2.score(x, y2) > 0.9


def test_pipeline_gridsearch_and_cross_val_score(blobs):
    x, y = blobs
    pipe = make_pipeline(StandardScaler(), SparseMLPClassifier(backend=one_thread(),
                                                               random_state=0, **FAST))
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85
    grid = GridSearchCV(pipe, {"sparsemlpclassifier__hidden_layer_sizes": [(8,), (32,)],
                               "sparsemlpclassifier__epsilon": [2.0, 20.0]}, cv=2)
    grid.fit(x, y)
    assert set(grid.best_params_) == {"sparsemlpclassifier__hidden_layer_sizes",
                                      "sparsemlpclassifier__epsilon"}
    assert grid.score(x, y) > 0.85
    assert pickle.loads(pickle.dumps(grid)).predict(x[:5]).shape == (5,)


def test_sparse_input_gives_the_dense_result(blobs):
    x, y = blobs
    x = np.where(np.abs(x) > 3, x, 0.0)  # mostly zeros
    xs = sp.csr_matrix(x)
    # standardize=False: a dense X would be centred, a sparse one only scaled
    dense = SparseMLPClassifier(backend=one_thread(), random_state=1, standardize=False,
                                **FAST).fit(x, y)
    sparse = SparseMLPClassifier(backend=one_thread(), random_state=1, standardize=False,
                                 **FAST).fit(xs, y)
    np.testing.assert_array_equal(dense.predict_proba(x), sparse.predict_proba(xs))
    np.testing.assert_array_equal(dense.predict_proba(x), sparse.predict_proba(sp.csc_array(x)))


@pytest.mark.parametrize("standardize", ["auto", True])
def test_dense_and_sparse_input_are_transformed_alike(blobs, standardize):
    """One input map per fit, whatever the format of later inputs: after a dense fit a sparse
    X is centred too (densified a block of rows at a time); after a sparse fit nothing is."""
    x, y = blobs
    x = np.where(np.abs(x) > 2, x + 3, 0.0)
    xs = sp.csr_matrix(x)
    kw = dict(backend=one_thread(), random_state=1, standardize=standardize, **FAST)
    dense_fit = SparseMLPClassifier(**kw).fit(x, y)
    assert dense_fit._x_mean is not None
    np.testing.assert_allclose(dense_fit.predict_proba(xs), dense_fit.predict_proba(x),
                               rtol=1e-6, atol=1e-7)
    sparse_fit = SparseMLPClassifier(**kw).fit(xs, y)
    assert sparse_fit._x_mean is None
    np.testing.assert_allclose(sparse_fit.predict_proba(x), sparse_fit.predict_proba(xs),
                               rtol=1e-6, atol=1e-7)
    before = x.copy()
    sparse_fit.predict(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is not scaled in place


def test_blocks_of_a_centred_sparse_input_join_in_order(blobs, monkeypatch):
    from sparsekit.sklearn import base

    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST).fit(x, y)
    whole = clf.predict_proba(sp.csr_matrix(x))
    monkeypatch.setattr(base, "SPARSE_BLOCK_VALUES", 7 * x.shape[1])  # 7 rows a block
    np.testing.assert_array_equal(clf.predict_proba(sp.csr_matrix(x)), whole)


@pytest.mark.parametrize("ours,theirs", [("linear", "identity"), ("sigmoid", "logistic")])
def test_scikit_learns_activation_names_are_accepted(blobs, ours, theirs):
    x, y = blobs
    kw = dict(backend=one_thread(), random_state=0, **FAST)
    a = SparseMLPClassifier(activation=ours, **kw).fit(x, y)
    b = SparseMLPClassifier(activation=theirs, **kw).fit(x, y)
    assert b.get_params()["activation"] == theirs
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    with pytest.raises(ValueError, match="activation must be one of .*'logistic'.*got 'softmax'"):
        SparseMLPClassifier(activation="softmax", **kw).fit(x, y)


def test_microarray_sized_sparse_input_is_never_densified(monkeypatch):
    """200 samples x 20 000 features: fit and predict densify one mini-batch at a time."""
    n, d, batch = 200, 20_000, 32
    x = sp.random(n, d, density=0.01, format="csr", dtype=np.float32, random_state=0)
    signal = np.asarray(x[:, :200].sum(axis=1)).ravel()
    y = (signal > np.median(signal)).astype(int)
    densified = []
    original = type(x).toarray

    def recording_toarray(self, *args, **kwargs):
        densified.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(x), "toarray", recording_toarray)
    clf = SparseMLPClassifier(hidden_layer_sizes=(16,), epsilon=1.0, max_iter=3,
                              batch_size=batch, backend=one_thread(), random_state=0)
    tracemalloc.start()
    clf.fit(x, y)
    proba = clf.predict_proba(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert proba.shape == (n, 2)
    assert densified, "the batches should have gone through toarray"
    assert max(rows for rows, _ in densified) <= 32  # batches (32) and predict chunks (26)
    assert all(cols == d for _, cols in densified)
    dense_bytes = n * d * 4
    assert peak < 0.75 * dense_bytes, f"peak {peak / 1e6:.1f} MB vs dense X {dense_bytes / 1e6} MB"


def test_unpickled_onto_read_only_memory_can_keep_training(blobs, tmp_path):
    joblib = pytest.importorskip("joblib")
    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST).fit(x, y)
    joblib.dump(clf, tmp_path / "clf.joblib")
    back = joblib.load(tmp_path / "clf.joblib", mmap_mode="r")
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    back.partial_fit(x, y)
    assert back.n_iter_ == 1 and back.t_ == clf.t_ + len(x)


@pytest.mark.parametrize("method", sorted(set(sparsekit.available_methods()) - {"set"}))
def test_every_growth_method_trains_through_the_estimator(blobs, method):
    x, y = blobs
    x = StandardScaler().fit_transform(x)
    clf = SparseMLPClassifier(method=method, backend=one_thread(), random_state=0,
                              hidden_layer_sizes=(32, 32), epsilon=2.0, max_iter=20)
    clf.fit(x, y)
    assert clf.n_iter_ <= 20 and clf.score(x, y) > 0.85
    budget = [min(a * b, int(2.0 * (a + b))) for a, b in zip([6, 32, 32], [32, 32, 3])]
    assert sum(clf.model_.n_connections) <= sum(budget) * 2  # stays sparse (Top-KAST's B ≤ 2D)
