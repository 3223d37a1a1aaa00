"""The estimators' scikit-learn conventions: MLPClassifier's parameter names and meanings,
stopping rules, fitted attributes, input standardisation and the memory check up front."""

import io
import tracemalloc
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from sklearn.datasets import make_blobs, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

import sparsekit  # noqa: E402
from sparsekit._cython.backend import CpuBackend  # noqa: E402
from sparsekit.sklearn import SparseMLPClassifier, SparseMLPRegressor  # noqa: E402
from sparsekit.sklearn.base import DEFAULTS  # noqa: E402
from sparsekit.training.config import TrainConfig  # noqa: E402
from sparsekit.training.step import Engine  # noqa: E402


def one_thread():
    return CpuBackend(num_threads=1)


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=300, centers=3, n_features=6, random_state=0)


def small(**kw):
    return SparseMLPClassifier(**{"hidden_layer_sizes": (16,), "max_iter": 5,
                                  "backend": one_thread(), "random_state": 0, **kw})


# --- names -------------------------------------------------------------------------------------
def test_parameters_carry_scikit_learns_names():
    ours = set(SparseMLPClassifier().get_params())
    shared = {"hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
              "learning_rate_init", "max_iter", "shuffle", "random_state", "tol", "verbose",
              "warm_start", "momentum", "nesterovs_momentum", "early_stopping",
              "validation_fraction", "beta_1", "beta_2", "n_iter_no_change"}
    assert shared <= set(MLPClassifier().get_params())  # the names are scikit-learn's
    assert shared <= ours
    # sparsekit's own: the Erdős–Rényi epsilon stays; Adam's epsilon and the All-ReLU slope
    # have names of their own; the old names are gone
    assert {"epsilon", "adam_epsilon", "slope", "method", "zeta", "method_params", "dropout",
            "backend", "standardize"} <= ours
    assert not {"lr", "weight_decay", "decay"} & ours
    assert set(SparseMLPRegressor().get_params()) == ours
    assert SparseMLPClassifier().alpha == 1e-4  # the L2 penalty, scikit-learn's default


def test_alpha_is_scikit_learns_l2_penalty_divided_by_the_batch():
    est = SparseMLPClassifier(alpha=0.02, solver="adam", beta_1=0.8, beta_2=0.99,
                              adam_epsilon=1e-6, learning_rate_init=0.005)
    cfg = est._train_config(50)
    assert cfg.optimizer == "adam" and cfg.decay == "coupled"
    assert cfg.weight_decay == pytest.approx(0.02 / 50)
    assert cfg.lr == 0.005 and cfg.betas == (0.8, 0.99) and cfg.adam_eps == 1e-6
    sgd = SparseMLPClassifier(solver="sgd", momentum=0.5, alpha=0.1)._train_config(10)
    assert sgd.optimizer == "sgd" and sgd.nesterov and sgd.momentum == 0.5
    assert sgd.decay == "coupled" and sgd.weight_decay == pytest.approx(0.01)
    plain = SparseMLPClassifier(solver="sgd", nesterovs_momentum=False)._train_config(10)
    assert not plain.nesterov
    adamw = SparseMLPClassifier(solver="adamw", alpha=0.1)._train_config(20)
    assert adamw.decay == "decoupled" and adamw.weight_decay == pytest.approx(0.005)
    assert SparseMLPClassifier(slope=0.75)._train_config(1).alpha == 0.75  # All-ReLU


def test_alpha_matches_scikit_learns_gradient_term(blobs):
    """One SGD step without momentum from the same weights: the change that alpha adds is
    -lr * alpha * w / batch_size, as in scikit-learn's _compute_loss_grad."""
    x, y = blobs
    moves = {}
    for alpha in (0.0, 5.0):
        clf = small(solver="sgd", momentum=0.0, alpha=alpha, dropout=0.0, batch_size=300,
                    learning_rate_init=0.1, method="static", max_iter=1, shuffle=False)
        clf.partial_fit(x, y, classes=[0, 1, 2])
        moves[alpha] = clf
    # same seeds, same initial weights: the difference is the penalty's step alone
    a, b = moves[0.0].model_.layers[0], moves[5.0].model_.layers[0]
    rs = np.random.RandomState(0)
    init_seed = int(rs.randint(0, 2**31 - 1, size=2)[0])
    w0 = sparsekit.SparseMLP([6, 16, 3], epsilon=DEFAULTS["epsilon"], activation="relu",
                             dropout=0.0, seed=init_seed).layers[0].w.data
    np.testing.assert_allclose(b.w.data - a.w.data, -0.1 * 5.0 * w0 / 300, rtol=1e-3,
                               atol=1e-7)


@pytest.mark.parametrize("bad, match", [
    (dict(solver="lbfgs"), "solver"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size="big"), "batch_size"), (dict(alpha=-1.0), "alpha"),
    (dict(tol=-1.0), "tol"), (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(n_iter_no_change=0), "n_iter_no_change"), (dict(shuffle="yes"), "shuffle"),
    (dict(slope=-1.0), "slope must be > 0 for allrelu"), (dict(beta_1=1.0), "beta_1"),
    (dict(learning_rate_init=0.0), "learning_rate_init"), (dict(epsilon=0.0), "epsilon"),
])
def test_bad_parameters_fail_at_fit_naming_them(blobs, bad, match):
    x, y = blobs
    est = small(**bad)
    assert est.get_params()[next(iter(bad))] == bad[next(iter(bad))]  # stored, unchecked
    if "slope" in bad:
        est.set_params(activation="allrelu")
    with pytest.raises(ValueError, match=match):
        est.fit(x, y)


# --- batches and shuffling ------------------------------------------------------------------------
def test_batch_size_auto_is_min_200_n_and_ints_are_clipped(blobs):
    x, y = blobs
    auto = small(batch_size="auto", max_iter=1).fit(x, y)
    assert auto._runner.step == 2  # 300 samples in batches of 200: 2 steps
    tiny = small(batch_size="auto", max_iter=1).fit(x[:50], y[:50])
    assert tiny._runner.step == 1  # min(200, 50)
    with pytest.warns(UserWarning, match="It is going to be clipped"):
        big = small(batch_size=1000, max_iter=1).fit(x, y)
    assert big._runner.step == 1
    assert small(batch_size=64, max_iter=1).fit(x, y)._runner.step == 5
    assert SparseMLPClassifier().batch_size == "auto"


def test_shuffle_false_visits_samples_in_order_and_draws_nothing(blobs, monkeypatch):
    x, y = blobs
    seen = []
    original = Engine.train_step

    def recording(self, x_, target, idx, lr, **kw):
        seen.append(np.array(idx))
        return original(self, x_, target, idx, lr, **kw)

    monkeypatch.setattr(Engine, "train_step", recording)
    small(shuffle=False, batch_size=100, max_iter=1).fit(x, y)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(300))
    seen.clear()
    small(shuffle=True, batch_size=100, max_iter=1).fit(x, y)
    assert not np.array_equal(np.concatenate(seen), np.arange(300))


def test_engine_shuffle_true_keeps_the_random_stream():
    """shuffle=True (the default) draws exactly the permutation it drew before the argument
    existed: same generator state after the epoch as a permutation + the step draws."""
    model = sparsekit.SparseMLP([4, 8, 2], epsilon=2.0, backend=one_thread(), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=10, method="static")
    x = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    rng = np.random.default_rng(5)
    Engine(model, cfg, rng).train_epoch(x, y)
    ref = np.random.default_rng(5)
    ref.permutation(30)
    for _ in range(3):
        ref.integers(0, 2**63, size=1)
    assert rng.bit_generator.state == ref.bit_generator.state


# --- stopping ---------------------------------------------------------------------------------
def test_stops_on_training_loss_like_scikit_learn(blobs):
    x, y = blobs
    clf = small(max_iter=50, tol=100.0, n_iter_no_change=3).fit(x, y)
    # the first epoch improves on best_loss_ = inf; every later one fails to improve by tol:
    # stop once the count exceeds n_iter_no_change (1 + 4 epochs)
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None


def test_max_iter_reached_warns_convergence(blobs):
    x, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\)"):
        small(max_iter=2, tol=0.0, n_iter_no_change=1).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fixed budget (n_iter_no_change >= max_iter): silent
        small(max_iter=2, n_iter_no_change=2).fit(x, y)


def test_early_stopping_stratified_split_scores_and_best_weights(blobs):
    x, y = blobs
    clf = small(early_stopping=True, validation_fraction=0.2, max_iter=30,
                n_iter_no_change=4, random_state=7)
    clf.fit(x, y)
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # the split is scikit-learn's: train_test_split stratified with the estimator's generator
    _, x_val, _, y_val = train_test_split(x, y, random_state=np.random.RandomState(7),
                                          test_size=0.2, stratify=y)
    assert np.bincount(y_val).tolist() == [20, 20, 20]
    # the network kept is the best epoch's
    assert clf.score(x_val, y_val) == pytest.approx(clf.best_validation_score_)


def test_early_stopping_gives_up_after_n_iter_no_change(blobs):
    x, y = blobs
    clf = small(early_stopping=True, tol=10.0, n_iter_no_change=2, max_iter=40).fit(x, y)
    assert clf.n_iter_ == 4  # the first epoch beats -inf, then 3 > n_iter_no_change


def test_early_stopping_refused_in_partial_fit_and_small_validation(blobs):
    x, y = blobs
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        small(early_stopping=True).partial_fit(x, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="validation set is too small"):
        SparseMLPRegressor((8,), early_stopping=True, validation_fraction=0.01,
                           backend=one_thread()).fit(x[:30], y[:30].astype(float))


def test_regressor_early_stopping_scores_r2():
    x, y = make_regression(n_samples=300, n_features=5, noise=0.5, random_state=0)
    reg = SparseMLPRegressor(hidden_layer_sizes=(32,), early_stopping=True, max_iter=30,
                             backend=one_thread(), random_state=0).fit(x, y)
    assert all(s <= 1.0 for s in reg.validation_scores_)
    assert reg.best_validation_score_ > 0.8 and reg.score(x, y) > 0.8


def test_verbose_prints_scikit_learns_lines(blobs):
    x, y = blobs
    out = io.StringIO()
    with redirect_stdout(out):
        small(verbose=True, max_iter=2, early_stopping=True).fit(x, y)
    text = out.getvalue()
    assert "Iteration 1, loss = " in text and "Validation score: " in text


# --- inputs ------------------------------------------------------------------------------------
def test_unscaled_inputs_are_standardised(blobs):
    x, y = blobs
    x_raw = x * np.array([1e3, 1e-3, 1.0, 50.0, 1e4, 0.1]) + 1e3
    scaled = small(max_iter=20).fit(x, y)
    raw = small(max_iter=20).fit(x_raw, y)
    assert raw.score(x_raw, y) > 0.9
    assert np.mean(raw.predict(x_raw) == scaled.predict(x)) > 0.95
    off = small(max_iter=20, standardize=False).fit(x, y)
    assert off._x_scale is None and off.score(x, y) > 0.9


def test_constant_features_do_not_divide_by_zero(blobs):
    x, y = blobs
    x = np.column_stack([x, np.full(len(x), 3.0)])
    clf = small().fit(x, y)
    assert np.isfinite(clf.predict_proba(x)).all()


def test_nearly_constant_features_are_not_blown_up(blobs):
    x, y = blobs
    rare = np.zeros(len(x))
    rare[:3] = 1.0  # a border pixel: almost always 0
    x = np.column_stack([x, rare])
    clf = small(max_iter=1, standardize=True).fit(x, y)
    std = x.std(axis=0)
    floor = 0.3 * np.median(std)
    np.testing.assert_allclose(clf._x_scale[:6], np.maximum(std[:6], floor))
    assert clf._x_scale[6] == pytest.approx(floor)  # not its own tiny deviation
    # "auto" (the default) standardises them too: their spreads are far apart
    np.testing.assert_array_equal(small(max_iter=1).fit(x, y)._x_scale, clf._x_scale)


@pytest.mark.parametrize("sparse", [False, True])
def test_features_of_one_scale_keep_their_relative_spread(blobs, sparse):
    # 4 informative columns spread 2-4x wider than 20 noise ones, as make_classification's
    rng = np.random.default_rng(0)
    x, y = blobs
    x = np.column_stack([x[:, :4] / x[:, :4].std(axis=0) * np.array([2.0, 3.0, 4.0, 2.5]),
                         rng.standard_normal((len(x), 20))])
    std = x.std(axis=0)
    assert np.percentile(std, 90) <= 5 * np.percentile(std, 10)
    data = sp.csr_matrix(x) if sparse else x
    auto = small(max_iter=1).fit(data, y)
    np.testing.assert_allclose(auto._x_scale, np.full(24, np.median(std)))
    scaled = auto._scale_inputs(data)
    scaled = scaled.toarray() if sparse else scaled
    np.testing.assert_allclose(scaled.std(axis=0), std / np.median(std), rtol=1e-5)
    assert (auto._x_mean is None) == sparse  # a sparse X is only scaled
    per_feature = small(max_iter=1, standardize=True).fit(data, y)
    np.testing.assert_allclose(per_feature._x_scale, np.maximum(std, 0.3 * np.median(std)))
    with pytest.raises(ValueError, match="standardize must be True, False or 'auto'"):
        small(standardize="yes").fit(x, y)


# --- memory -----------------------------------------------------------------------------------
def test_huge_estimator_is_refused_before_anything_is_allocated(blobs):
    x, y = blobs
    tracemalloc.start()
    with pytest.raises(ValueError, match="does not fit in memory"):
        SparseMLPClassifier((10**9,)).fit(x, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20
    with pytest.raises(ValueError, match="does not fit in memory"):
        SparseMLPRegressor((10**9,)).fit(x, y.astype(float))


def test_sparse_mlp_constructor_checks_memory_first():
    tracemalloc.start()
    with pytest.raises(ValueError, match="does not fit in memory.*raise memory_limit"):
        sparsekit.SparseMLP([784, 10**9, 10])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20


def test_defaults_are_the_documented_ones():
    clf = SparseMLPClassifier()
    for name, value in DEFAULTS.items():
        assert getattr(clf, name) == value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning with the defaults on a small set
        x, y = make_blobs(n_samples=20, centers=2, random_state=0)
        SparseMLPClassifier(max_iter=1, backend=one_thread()).fit(x, y)


# --- a warm fit under changed parameters ------------------------------------------------------
def weights(est):
    return np.concatenate([layer.w.data for layer in est.model_.layers])


def test_a_warm_fit_trains_under_the_current_parameters_with_a_new_optimizer(blobs):
    x, y = blobs
    est = small(warm_start=True, solver="adam").fit(x, y)
    assert set(est.model_.layers[0].state_w) == {"exp_avg", "exp_avg_sq"}
    before = weights(est)
    est.set_params(learning_rate_init=1e-12).fit(x, y)  # as good as no step at all
    assert np.abs(weights(est) - before).max() < 1e-8
    est.set_params(learning_rate_init=0.05, solver="sgd", momentum=0.5).fit(x, y)
    assert set(est.model_.layers[0].state_w) == {"momentum"}  # scikit-learn: a new optimizer
    assert np.abs(weights(est) - before).max() > 1e-3
    est.set_params(activation="tanh", dropout=0.5).fit(x, y)
    assert est.model_.activation_name == "tanh" and est.model_.dropout == 0.5
    assert est._runner.engine.config.optimizer == "sgd" and est._runner.engine.config.lr == 0.05


@pytest.mark.parametrize("change, message", [
    ({"hidden_layer_sizes": (32,)}, r"built with hidden_layer_sizes=\[16\]"),
    ({"dtype": "float64"}, "built with dtype='float32'"),
    ({"epsilon": 3.0}, "built with epsilon=10.0"),
])
def test_a_warm_fit_refuses_what_would_need_a_new_network(blobs, change, message):
    x, y = blobs
    est = small(warm_start=True).fit(x, y)
    proba = est.predict_proba(x)
    with pytest.raises(ValueError, match=message + ".*set warm_start=False"):
        est.set_params(**change).fit(x, y)
    np.testing.assert_array_equal(est.predict_proba(x), proba)  # untouched
    est.set_params(warm_start=False).fit(x, y)  # a new network takes them


def test_a_warm_fit_checks_its_parameters_before_training(blobs):
    x, y = blobs
    est = small(warm_start=True).fit(x, y)
    with pytest.raises(ValueError, match="dropout"):
        est.set_params(dropout=5.0).fit(x, y)


def test_duplicate_entries_of_a_csr_x_give_the_canonical_matrix_model():
    from sklearn.datasets import make_classification

    x, y = make_classification(200, 10, n_informative=5, n_classes=3, random_state=0)
    x = np.where(np.abs(x) > 0.8, x, 0.0)
    a = sp.csr_matrix(x)
    counts = np.diff(a.indptr)
    # every stored entry twice, at half its value: the same matrix, not canonical
    dup = sp.csr_matrix((np.repeat(a.data / 2, 2), np.repeat(a.indices, 2),
                         np.concatenate([[0], np.cumsum(2 * counts)])), shape=a.shape)
    assert not dup.has_canonical_format and np.array_equal(dup.toarray(), x)
    p1 = small().fit(a, y).predict_proba(a)
    p2 = small().fit(dup, y).predict_proba(a)
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("alpha, message", [
    (np.inf, "alpha .*must be a finite number >= 0, got inf"),
    (1e300, "alpha=1e[+]300 is too large"),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # the error, not an overflow warning first
def test_alpha_errors_name_alpha(blobs, alpha, message):
    x, y = blobs
    with pytest.raises(ValueError, match=message):
        small(alpha=alpha).fit(x, y)


def test_a_diverging_first_fit_names_learning_rate_init_and_leaves_no_model(blobs):
    from sklearn.exceptions import NotFittedError

    x, y = blobs
    est = small(solver="sgd", learning_rate_init=1e4, max_iter=20)
    with pytest.raises(FloatingPointError, match="learning_rate_init, now 10000.0"):
        est.fit(x * 1e3, y)
    with pytest.raises(NotFittedError):
        est.predict(x)


def test_no_hidden_layers_is_one_sparse_layer(blobs):
    x, y = blobs
    est = small(hidden_layer_sizes=(), max_iter=30, learning_rate_init=0.05).fit(x, y)
    assert est.model_.layer_sizes == [6, 3] and est.score(x, y) > 0.9
    xr, yr = make_regression(100, 4, random_state=0)
    reg = SparseMLPRegressor(hidden_layer_sizes=[], backend=one_thread(), random_state=0,
                             max_iter=3).fit(xr, yr)
    assert reg.predict(xr).shape == (100,)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be"):
        small(hidden_layer_sizes=(0,)).fit(x, y)
