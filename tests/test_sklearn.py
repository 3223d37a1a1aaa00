"""The scikit-learn estimators: scikit-learn's own checks, meta-estimators, sparse input."""

import pickle
import subprocess
import sys
import tracemalloc
import warnings

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

# Checks that are expected to fail: the two sample-weight equivalence checks, at these
# parameters only.  With dropout, a weight of k is k repetitions in expectation, not exactly (a
# repeated sample gets k dropout masks); scikit-learn runs them on its own MLPClassifier with
# lbfgs for the same reason.  test_sample_weight_equals_repetition_without_dropout runs them
# at dropout=0, where they pass.  Every other check runs; the only ones reported as skipped
# are skipped by scikit-learn itself: `check_array_api_input` (runs only with SCIPY_ARRAY_API=1;
# the estimators do not claim array-API support) and, where pandas is not installed, the
# pandas-input checks.
_DROPOUT = "with dropout a weight k equals k repetitions only in expectation"
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": _DROPOUT,
    "check_sample_weight_equivalence_on_sparse_data": _DROPOUT,
}


@parametrize_with_checks(
    [SparseMLPClassifier(backend=one_thread(), **FAST),
     SparseMLPRegressor(backend=one_thread(), **FAST)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("est", [SparseMLPClassifier, SparseMLPRegressor])
@pytest.mark.parametrize("sparse", [False, True])
def test_sample_weight_equals_repetition_without_dropout(est, sparse):
    # scikit-learn's own equivalence check (weights 0-4 against removed/repeated samples, to
    # 1e-7): exact up to rounding when nothing else is random per sample.
    from sklearn.utils.estimator_checks import (
        check_sample_weight_equivalence_on_dense_data,
        check_sample_weight_equivalence_on_sparse_data,
    )
    check = (check_sample_weight_equivalence_on_sparse_data if sparse
             else check_sample_weight_equivalence_on_dense_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch_size clipped to the 15 samples
        check(est.__name__, est(backend=one_thread(), dropout=0.0, dtype="float64", **FAST))


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


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_warm_fits_and_partial_fits_past_max_iter_start_a_new_horizon(schedule):
    # A horizon spent used to leave the learning rate annealed to 0 and the topology frozen:
    # later warm fits and partial_fit calls changed nothing.
    x, y = make_blobs(n_samples=300, centers=2, n_features=60, random_state=0)
    params = dict(backend=one_thread(), random_state=0, dropout=0.0, max_iter=3,
                  lr_schedule=schedule, hidden_layer_sizes=(48,), method="set")
    warm = SparseMLPClassifier(warm_start=True, **params).fit(x, y)
    before = [(layer.w.indices.copy(), layer.w.data.copy()) for layer in warm.model_.layers]
    warm.fit(x, y)
    after = warm.model_.layers[0].w
    assert not np.array_equal(after.data, before[0][1])
    assert not np.array_equal(after.indices, before[0][0])  # SET evolved again
    assert warm._runner.horizon == 3 and warm._runner.epoch == 3
    part = SparseMLPClassifier(**params)
    for call in range(7):
        old = None if call == 0 else part.model_.layers[0].w.data.copy()
        part.partial_fit(x, y, classes=[0, 1])
        if old is not None:
            assert not np.array_equal(old, part.model_.layers[0].w.data), call


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


@pytest.mark.parametrize("bad, message", [
    (-np.ones(240), "Negative values"), (np.full(240, np.nan), "NaN"),
    (np.ones(239), r"sample_weight.shape == \(239,\)"), (np.zeros(240), "non-zero"),
    (np.r_[1e308, 1e308, np.ones(238)], "sample_weight sums to inf"),
    (np.r_[1e-300, np.full(239, 2e-300)], "weights this small .* overflow float32"),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # the error, not an overflow warning first
def test_bad_sample_weight_is_refused_before_training(blobs, bad, message):
    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), **FAST)
    with pytest.raises(ValueError, match=message):
        clf.fit(x, y, sample_weight=bad)
    assert not hasattr(clf, "model_")


@pytest.mark.parametrize("early_stopping", [False, True])
def test_equal_sample_weights_train_as_none_but_scale_the_penalty(blobs, early_stopping):
    x, y = blobs
    params = dict(backend=one_thread(), random_state=0, early_stopping=early_stopping, **FAST)
    plain = SparseMLPClassifier(**params).fit(x, y)
    ones = SparseMLPClassifier(**params).fit(x, y, sample_weight=np.ones(240))
    np.testing.assert_array_equal(ones.predict_proba(x), plain.predict_proba(x))
    assert ones.loss_curve_ == plain.loss_curve_
    # scikit-learn divides alpha by the batch's weight: weights of 4 make the penalty 4x weaker
    decay = SparseMLPClassifier(**params).fit(x, y, sample_weight=np.full(240, 4.0))
    assert (decay._runner.engine.optimizer.weight_decay
            == pytest.approx(plain._runner.engine.optimizer.weight_decay / 4))


def test_sample_weight_steers_the_fit_through_every_entry_point(blobs):
    x, y = blobs
    weights = (y != 2).astype(np.float64)  # class 2 weighs nothing
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST)
    clf.fit(x, y, sample_weight=weights)
    assert clf.score(x[y != 2], y[y != 2]) > 0.9 and not (clf.predict(x) == 2).any()
    # the loss curve is the weighted mean: the zero-weight samples do not count
    assert clf.loss_curve_[-1] < 0.2
    # partial_fit and a pipeline's routed fit parameter reach the same training
    part = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST)
    for _ in range(3):
        part.partial_fit(x, y, sample_weight=weights, classes=[0, 1, 2])
    assert not (part.predict(x) == 2).any()
    pipe = make_pipeline(StandardScaler(), SparseMLPRegressor(backend=one_thread(),
                                                              random_state=0, **FAST))
    target = x[:, 0] + np.where(y == 2, 100.0, 0.0)  # class 2's targets are outliers
    pipe.fit(x, target, sparsemlpregressor__sample_weight=weights)
    keep = y != 2
    assert np.abs(pipe.predict(x[keep]) - target[keep]).mean() < 1.0


def test_early_stopping_refuses_a_split_whose_weights_are_all_zero(blobs):
    x, y = blobs
    weights = np.zeros(240)
    weights[0] = 1.0  # one sample weighs: the training or the validation part weighs nothing
    clf = SparseMLPClassifier(backend=one_thread(), early_stopping=True, **FAST)
    with pytest.raises(ValueError, match="sample_weight is zero for every"):
        clf.fit(x, y, sample_weight=weights)


def test_weighted_validation_score_is_scikit_learns(blobs):
    from sklearn.metrics import accuracy_score, r2_score

    x, y = blobs  # the score is taken on standardised inputs and targets
    weights = np.random.default_rng(0).uniform(0, 2, 240)
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, max_iter=2).fit(x, y)
    assert clf._validation_score(clf._scale_inputs(x), y, weights) == pytest.approx(
        accuracy_score(y, clf.predict(x), sample_weight=weights))
    reg = SparseMLPRegressor(backend=one_thread(), random_state=0, max_iter=2).fit(x, x[:, 0])
    scaled = (x[:, 0] - reg._y_mean[0]) / reg._y_scale[0]
    assert reg._validation_score(reg._scale_inputs(x), scaled[:, None], weights) == pytest.approx(
        r2_score(x[:, 0], reg.predict(x), sample_weight=weights))


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


@pytest.mark.parametrize("sparse", [False, True])
def test_values_beyond_float32_are_standardised_in_float64_or_refused(blobs, sparse):
    x, y = blobs
    wide = x.copy()
    wide[:, 2] *= 1e45  # one column in units beyond float32: standardising brings it back
    as_input = sp.csr_matrix if sparse else np.asarray
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST)
    clf.fit(as_input(wide), y)
    assert clf.score(as_input(wide), y) > 0.9
    # a value that does not fit even once standardised, or unstandardised, is named
    outlier = wide.copy()
    outlier[7, 2] = 1e300
    with pytest.raises(ValueError, match=r"row 7, column 2: 1e\+300"):
        clf.predict(as_input(outlier))
    raw = SparseMLPClassifier(backend=one_thread(), standardize=False, **FAST)
    with pytest.raises(ValueError, match=r"beyond float32's range \(row 0, column 2"):
        raw.fit(as_input(wide), y)
    # values whose squares overflow float64 still have a standard deviation: fitted on, the
    # outlier is standardised like any other value
    refit = clone(clf).fit(as_input(outlier), y)
    assert np.isfinite(refit._x_scale).all() and refit.score(as_input(outlier), y) > 0.9


def test_weighted_statistics_of_sparse_float32_input_are_the_dense_ones(blobs):
    x, y = blobs
    weights = np.random.default_rng(0).uniform(0, 2, 240)
    x32 = x.astype(np.float32)
    dense = SparseMLPClassifier(backend=one_thread(), standardize=True, max_iter=1)
    sparse = clone(dense)
    dense.fit(x32, y, sample_weight=weights)
    sparse.fit(sp.csr_matrix(x32), y, sample_weight=weights)
    np.testing.assert_allclose(sparse._x_scale, dense._x_scale, rtol=1e-5)


def test_regressor_targets_beyond_the_square_root_of_float64_are_scaled_not_inf():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    params = dict(backend=one_thread(), random_state=0, max_iter=3)
    plain = SparseMLPRegressor(**params).fit(x, x[:, 0])
    huge = SparseMLPRegressor(**params).fit(x, x[:, 0] * 1e160)  # y**2 overflows float64
    np.testing.assert_allclose(huge.predict(x) / 1e160, plain.predict(x), rtol=1e-4, atol=1e-6)
    # and below the square root of the smallest float64, y**2 underflows to a variance of 0
    tiny = SparseMLPRegressor(**params).fit(x, x[:, 0] * 1e-200)
    np.testing.assert_allclose(tiny.predict(x) / 1e-200, plain.predict(x), rtol=1e-4, atol=1e-6)
    for small in (x * 1e-200, sp.csr_matrix(x * 1e-200)):  # a column in tiny units
        scaled = SparseMLPRegressor(**params).fit(small, x[:, 0])
        assert np.isfinite(scaled._x_scale).all() and scaled.score(small, x[:, 0]) > 0.5


def test_a_refit_that_fails_leaves_the_estimator_unfitted_not_half_new(blobs):
    from sklearn.exceptions import NotFittedError

    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), random_state=0, **FAST).fit(x, y)
    with pytest.raises(ValueError):  # 8 samples: too few for a stratified validation split
        clf.set_params(early_stopping=True).fit(x[:8] * 1000 + 50, y[:8])
    with pytest.raises(NotFittedError):
        clf.predict(x)  # not the old network behind the new call's standardisation


@pytest.mark.parametrize("params, message", [
    (dict(slope=np.nan), "slope must be a finite number"),
    (dict(learning_rate_init=0), "learning_rate_init must be > 0"),
    (dict(beta_2=1.5), r"beta_2 must lie in \[0, 1\)"),
    (dict(adam_epsilon=0), "adam_epsilon must be > 0"),
    (dict(standardize="yes"), "standardize must be True, False or 'auto'"),
])
def test_bad_parameters_are_named_as_the_estimator_names_them(blobs, params, message):
    x, y = blobs
    with pytest.raises(ValueError, match=message):
        SparseMLPClassifier(backend=one_thread(), **{**FAST, **params}).fit(x, y)


def test_numpy_dtypes_are_accepted(blobs):
    x, y = blobs
    clf = SparseMLPClassifier(backend=one_thread(), dtype=np.float64, **FAST).fit(x, y)
    assert clf.model_.dtype == np.float64 and clf.get_params()["dtype"] is np.float64


def test_divergence_is_reported_as_such_whatever_the_growth_method():
    x = np.random.default_rng(0).standard_normal((200, 4))
    for method in ("gse", "set"):
        reg = SparseMLPRegressor((8,), solver="sgd", learning_rate_init=1e4, method=method,
                                 max_iter=5, random_state=0, backend=one_thread())
        with pytest.raises(FloatingPointError, match="lower the learning rate"):
            reg.fit(x, x[:, 0])
