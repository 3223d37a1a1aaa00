"""What the classifier and the regressor share: parameters, fitting, early stopping, prediction.

Parameters carry scikit-learn's names (:class:`sklearn.neural_network.MLPClassifier`) wherever
the meaning is the same; :func:`_SparseMLPBase._train_config` maps them onto one
:class:`~sparsekit.training.config.TrainConfig`, and training goes through
:class:`~sparsekit.training.runner.EpochRunner` (the :class:`~sparsekit.training.step.Engine`'s
step, optimizer and growth method) — there is no second training loop here, only the epoch
bookkeeping scikit-learn's stochastic solvers do around it: the validation split, the
no-improvement count and the best weights.

``alpha`` → ``weight_decay``
    scikit-learn adds ``alpha * W / n_batch`` to the gradient of the mean batch loss (its
    ``_compute_loss_grad``: ``(X^T delta + alpha * W) / n_batch``).  That is the coupled L2 term
    of :class:`~sparsekit.training.optim.MomentumSGD` and
    :class:`~sparsekit.training.optim.Adam` (``g + weight_decay * w``) with
    ``weight_decay = alpha / batch_size``, ``batch_size`` being the one this call resolved
    (``"auto"``: ``min(200, n_samples)``).  ``solver="adamw"`` applies the same
    ``alpha / batch_size`` as AdamW's decoupled shrink ``w *= 1 - lr * alpha / batch_size``.
    Two differences remain: sparsekit's optimizers also decay the biases (scikit-learn: the
    weights only), and a last partial batch of ``m < batch_size`` samples gets
    ``alpha / batch_size`` instead of ``alpha / m`` (the optimizer's decay is set once per
    call).  At the defaults (``alpha = 1e-4``, batches of up to 200) the penalty's gradient is
    5e-7 of a weight per full batch, so neither difference is visible in practice.

``sample_weight``
    As in scikit-learn, each step minimises its batch's weighted mean loss
    ``sum_i w_i * loss_i / sum_i w_i`` (:func:`~sparsekit.training.step.weighted_loss`), and
    the penalty is divided by a batch's expected weight instead of its size: ``weight_decay =
    alpha / (batch_size * mean(w))`` for the call's training samples (scikit-learn divides by each
    batch's own weight sum), so that scaling every weight by ``c`` weakens the penalty ``c``
    times, as in scikit-learn.  The weights also weight the mean and variance that standardise
    the inputs (and the regressor's targets) and the early-stopping validation score; the
    epoch's loss in ``loss_curve_`` is the weighted mean over the epoch.  Equal weights train
    exactly as no weights (the same bits), apart from that penalty.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ..nn.model import SparseMLP
from ..training.config import TrainConfig, dtype_name
from ..training.loop import check_run_memory
from ..training.runner import EpochRunner
from ._params import check_params, hidden_sizes, train_config
from .scaling import input_scaling, scale_inputs

logger = logging.getLogger("sparsekit")

_DTYPES = [np.float64, np.float32]
#: Values of a sparse ``X`` densified at once when it has to be centred (``_forward``).
SPARSE_BLOCK_VALUES = 2**19

#: Defaults shared by both estimators, chosen by the sweep of ``benchmarks/tabular.py``
#: (``benchmarks/results/tabular.md``).
DEFAULTS = dict(
    hidden_layer_sizes=(256, 256), activation="relu", slope=0.6, epsilon=10.0, dropout=0.1,
    method="gse", zeta=0.3, solver="adam", alpha=1e-4, batch_size="auto",
    learning_rate_init=3e-3, max_iter=50, tol=1e-4, n_iter_no_change=50,
    early_stopping=False, standardize="auto",
)


def _writable(a) -> bool:
    return bool(getattr(a.flags, "writeable", True))


class _SparseMLPBase(BaseEstimator):
    """Parameters, fitting and prediction shared by the classifier and the regressor."""

    _loss = "cross_entropy"

    def __init__(self, hidden_layer_sizes=DEFAULTS["hidden_layer_sizes"], *,
                 activation: str = DEFAULTS["activation"], slope: float = DEFAULTS["slope"],
                 epsilon: float = DEFAULTS["epsilon"], dropout: float = DEFAULTS["dropout"],
                 method: str = DEFAULTS["method"], zeta: float = DEFAULTS["zeta"],
                 method_params: dict | None = None, solver: str = DEFAULTS["solver"],
                 alpha: float = DEFAULTS["alpha"], batch_size=DEFAULTS["batch_size"],
                 learning_rate_init: float = DEFAULTS["learning_rate_init"],
                 lr_schedule: str = "constant", warmup_epochs: float = 0.0,
                 max_iter: int = DEFAULTS["max_iter"], shuffle: bool = True,
                 random_state=None, tol: float = DEFAULTS["tol"], verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True,
                 early_stopping: bool = DEFAULTS["early_stopping"],
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 adam_epsilon: float = 1e-8,
                 n_iter_no_change: int = DEFAULTS["n_iter_no_change"],
                 init: str = "he_uniform", fan_in: str = "dense",
                 max_grad_norm: float | None = None,
                 standardize: bool | str = DEFAULTS["standardize"],
                 backend: str = "cpu", dtype: str = "float32") -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.slope = slope
        self.epsilon = epsilon
        self.dropout = dropout
        self.method = method
        self.zeta = zeta
        self.method_params = method_params
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.adam_epsilon = adam_epsilon
        self.n_iter_no_change = n_iter_no_change
        self.init = init
        self.fan_in = fan_in
        self.max_grad_norm = max_grad_norm
        self.standardize = standardize
        self.backend = backend
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def __setstate__(self, state):
        super().__setstate__(state)
        # Training updates the weights in place and the CPU kernels take writable buffers, so a
        # network unpickled onto read-only memory (joblib's memmaps) gets private copies.
        for layer in getattr(getattr(self, "model_", None), "layers", ()):
            w = layer.w
            if not all(_writable(a) for a in (w.indptr, w.indices, w.data)):
                layer.w = w.copy()
            if not _writable(layer.b):
                layer.b = layer.b.copy()
            for state in (layer.state_w, layer.state_b):
                for name, arr in state.items():
                    if not _writable(arr):
                        state[name] = arr.copy()

    # --- hooks for the subclasses ----------------------------------------------------------
    def _encode_targets(self, y, first: bool, classes=None, sample_weight=None) -> np.ndarray:
        """``y`` as the network's targets; the first call fixes the encoding (the regressor's
        standardisation, weighted by ``sample_weight``)."""
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _validation_score(self, X, target, sample_weight=None) -> float:
        """Accuracy (classifier) or R² (regressor) of the current network on encoded targets,
        weighted by ``sample_weight`` when given."""
        raise NotImplementedError

    # --- parameters ------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        return hidden_sizes(self)

    def _check_params(self) -> None:
        """The checks that TrainConfig does not make (scikit-learn's own parameters)."""
        check_params(self)

    def _resolve_batch_size(self, n_samples: int) -> int:
        """scikit-learn's rule: ``"auto"`` is ``min(200, n_samples)``; a larger int is clipped
        to ``n_samples``, with scikit-learn's warning."""
        if isinstance(self.batch_size, str):
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                          "to be clipped", UserWarning, stacklevel=4)
        return int(min(self.batch_size, n_samples))

    def _train_config(self, batch_size: int) -> TrainConfig:
        """The :class:`TrainConfig` of these parameters for mini-batches of ``batch_size``."""
        return train_config(self, batch_size)

    # --- fitting ---------------------------------------------------------------------------
    def _initialize(self, n_features: int, n_train: int, n_val: int, batch_size: int,
                    rs) -> None:
        """Check the memory, build the network and the runner; reset the fitted attributes."""
        hidden = self._hidden_sizes()
        config = self._train_config(batch_size)
        sizes = [n_features, *hidden, self._n_outputs()]
        check_run_memory(sizes, config, n_train, n_val)  # before anything is allocated
        init_seed, train_seed = (int(s) for s in rs.randint(0, 2**31 - 1, size=2))
        self.model_ = SparseMLP(sizes, backend=self.backend, seed=init_seed,
                                **config.model_options)
        self._new_runner(config, train_seed)
        self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _warm_runner(self, batch_size: int, rs, n_train: int, n_val: int) -> None:
        """A warm ``fit``: the fitted network trained on under the current parameters, with a
        new optimizer, growth method and schedules (scikit-learn's MLP also makes a new
        optimizer at every ``fit``).  Parameters that shaped the network when it was built
        cannot change it now, so changing them is refused."""
        model, config = self.model_, self._train_config(batch_size)
        built = {"hidden_layer_sizes": (model.layer_sizes[1:-1], self._hidden_sizes()),
                 "dtype": (model.dtype.name, config.dtype), "epsilon": (model.epsilon,
                                                                        config.epsilon),
                 "init": (model.init, config.init), "fan_in": (model.fan_in, config.fan_in)}
        for name, (was, now) in built.items():
            if was != now:
                raise ValueError(f"warm_start=True trains on the fitted network, built with "
                                 f"{name}={was!r}; it cannot take {name}={now!r} (set "
                                 "warm_start=False to build a new network)")
        # another method or optimizer may need more memory (Top-KAST's set B, Adam's state)
        check_run_memory(model, config, n_train, n_val)
        model._configure(model.layer_sizes, model.epsilon, config.activation, config.alpha,
                         config.dropout, model.init, model.fan_in, model.backend, model.dtype)
        for layer in model.layers:  # the new optimizer starts its state afresh
            layer.state_w, layer.state_b, layer.w_forward = {}, {}, None
        self._new_runner(config, int(rs.randint(0, 2**31 - 1)))

    def _new_runner(self, config: TrainConfig, train_seed: int) -> None:
        """The runner that trains ``model_`` under ``config`` (its errors name the learning
        rate as this estimator does)."""
        self._runner = EpochRunner(self.model_, config, loss=self._loss, seed=train_seed,
                                   max_epochs=self.max_iter)
        self._runner.engine.lr_name = "learning_rate_init"

    def _unfit(self) -> None:
        for name in ("model_", "_runner"):
            self.__dict__.pop(name, None)

    def _validate(self, X, y, reset: bool):
        return validate_data(self, X, y, reset=reset, accept_sparse="csr", dtype=_DTYPES,
                             multi_output=self._loss == "mse", y_numeric=self._loss == "mse")

    def _fit(self, X, y, *, incremental: bool, classes=None, sample_weight=None):
        self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_") or not (self.warm_start or incremental)
        if first:  # a fit that fails from here on leaves the estimator unfitted, not half new
            self._unfit()
        X, y = self._validate(X, y, reset=first)
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                      ensure_non_negative=True, copy=True)
            with np.errstate(over="ignore"):  # the error below says it, not a warning
                total = sw.sum()
            if not np.isfinite(total):
                raise ValueError("sample_weight sums to inf; scale the weights down")
        stats_sw = _unequal(sw)  # equal weights: exactly the unweighted statistics
        target = self._encode_targets(y, first=first, classes=classes, sample_weight=stats_sw)
        if first:
            self._train_config(1)  # a bad value fails before anything is computed
            self._fit_input_scaling(X, stats_sw)
        dtype = np.dtype(dtype_name(self.dtype)) if first else self.model_.dtype
        X = self._scale_inputs(X, dtype)
        rs = check_random_state(self.random_state)
        early = self.early_stopping
        sw_tr = sw_val = None
        if early:
            stratify = y if is_classifier(self) else None
            parts = train_test_split(X, target, *(() if sw is None else (sw,)), random_state=rs,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_tr, X_val, t_tr, t_val = parts[:4]
            if sw is not None:
                sw_tr, sw_val = parts[4:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
        else:
            X_tr, t_tr, X_val, t_val, sw_tr = X, target, None, None, sw
        weight_scale = 1.0
        if sw_tr is not None:
            weight_scale = float(sw_tr.mean())
            if not weight_scale > 0:
                raise ValueError("sample_weight is zero for every training sample left after "
                                 "the early-stopping validation split")
        if sw_val is not None and not sw_val.sum() > 0:
            raise ValueError("sample_weight is zero for every sample of the early-stopping "
                             "validation split: its score would mean nothing")
        n = X_tr.shape[0]
        batch_size = self._resolve_batch_size(n)
        decay = self.alpha / (batch_size * weight_scale)
        if not decay <= float(np.finfo(dtype).max):  # as Python floats: no overflow warning
            if sw_tr is None:
                raise ValueError(f"alpha={self.alpha!r} is too large: the L2 penalty alpha / "
                                 f"batch_size overflows {dtype}")
            raise ValueError(f"sample_weight: weights this small (mean {weight_scale:.3g}) make "
                             f"the L2 penalty alpha / (batch_size * mean weight) overflow "
                             f"{dtype}; scale the weights up, or set alpha=0")
        if first:
            self._initialize(X.shape[1], n, 0 if X_val is None else X_val.shape[0],
                             batch_size, rs)
        elif not incremental:
            self._warm_runner(batch_size, rs, n, 0 if X_val is None else X_val.shape[0])
        runner = self._runner
        # partial_fit goes on past max_iter calls: each horizon spent starts a new one
        # (learning-rate and growth schedules restart) rather than training at a learning rate
        # annealed to 0 with a frozen topology.
        if incremental and (runner.epoch >= runner.horizon or runner.horizon != self.max_iter):
            runner.restart(self.max_iter)
        runner.set_weight_decay(decay)
        sw_tr, sw_val = _unequal(sw_tr), _unequal(sw_val)
        if early and getattr(self, "validation_scores_", None) is None:  # warm, switched on
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        elif not early and getattr(self, "best_loss_", None) is None:
            self.best_loss_ = np.inf
        self._best = None
        self.n_iter_ = 0
        try:
            self._epochs(runner, X_tr, t_tr, X_val, t_val, sw_tr, sw_val, batch_size,
                         incremental)
        except BaseException:
            if first:  # a first fit that fails leaves the estimator unfitted
                self._unfit()
            raise
        return self

    def _epochs(self, runner, X_tr, t_tr, X_val, t_val, sw_tr, sw_val, batch_size: int,
                incremental: bool) -> None:
        """Up to ``max_iter`` epochs (one for ``partial_fit``), with scikit-learn's stopping
        rule; the best validation epoch's network is restored under early stopping."""
        early, verbose, n = self.early_stopping, bool(self.verbose), X_tr.shape[0]
        name = type(self).__name__

        def log(line: str) -> None:
            logger.debug("%s: %s", name, line)

        for _ in range(self.max_iter):
            loss = runner.run_epoch(X_tr, t_tr, log, batch_size=batch_size,
                                    shuffle=bool(self.shuffle), sample_weight=sw_tr)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = loss
            self.loss_curve_.append(loss)
            if verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            self._update_no_improvement_count(early, X_val, t_val, verbose, sw_val)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if early else "Training loss"
                if verbose:
                    print(f"{what} did not improve more than tol={self.tol:f} for "
                          f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
            if incremental:
                break
            # As scikit-learn, unless the stopping rule could not have fired within max_iter (a
            # fixed budget of epochs, as the defaults are): then there is nothing to warn about.
            if self.n_iter_ == self.max_iter and self.n_iter_no_change < self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                              "reached and the optimization hasn't converged yet.",
                              ConvergenceWarning, stacklevel=3)
        if early and self._best is not None:
            runner.restore(self._best)
            self._best = None

    def _update_no_improvement_count(self, early: bool, X_val, t_val, verbose: bool,
                                     sw_val=None) -> None:
        """scikit-learn's rule: an epoch counts as no improvement when the validation score is
        below the best one + ``tol`` (``early_stopping``), or the training loss above the best
        one - ``tol``; the best validation epoch's weights are kept."""
        if early:
            score = self._validation_score(X_val, t_val, sw_val)
            self.validation_scores_.append(score)
            if verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best = self._runner.snapshot()
        else:
            loss = self.loss_curve_[-1]
            if loss > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, loss)

    _best = None

    def fit(self, X, y, sample_weight=None):
        """Train for up to ``max_iter`` epochs (continuing the current network if
        ``warm_start``), stopping as scikit-learn's MLP does (see ``n_iter_no_change``).

        Parameters
        ----------
        X : {array-like, scipy.sparse matrix} of shape (n_samples, n_features)
            Training data; sparse matrices are densified one mini-batch at a time only.
        y : array-like of shape (n_samples,) (or (n_samples, n_outputs) for the regressor)
            Target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each sample's loss (None: all equal); see the module
            notes on what else it weights.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    # --- input standardisation ---------------------------------------------------------------
    def _fit_input_scaling(self, X, sample_weight=None) -> None:
        """The first call's per-feature mean and divisor (:func:`.scaling.input_scaling`)."""
        self._x_mean, self._x_scale = input_scaling(X, self.standardize, sample_weight)

    def _scale_inputs(self, X, dtype=None, row_offset: int = 0):
        """``X`` standardised with the first call's statistics, in ``dtype`` (default the
        network's precision): one copy (:func:`.scaling.scale_inputs`).  After a dense first
        call a sparse ``X`` is centred too and so becomes dense: whole when fitting further, a
        block of rows at a time when predicting (:meth:`_forward`)."""
        dtype = np.dtype(self.model_.dtype if dtype is None else dtype)
        return scale_inputs(X, getattr(self, "_x_mean", None), getattr(self, "_x_scale", None),
                            dtype, row_offset)

    # --- prediction ------------------------------------------------------------------------
    def _logits(self, X) -> np.ndarray:
        """Network outputs (n_samples, n_outputs) in float64 of already validated ``X``."""
        return self.model_.logits(X).astype(np.float64)

    def _forward(self, X) -> np.ndarray:
        """Network outputs (n_samples, n_outputs) in float64 for validated ``X``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, accept_sparse="csr", dtype=_DTYPES)
        if sp.issparse(X) and getattr(self, "_x_mean", None) is not None and X.shape[0]:
            # centred, a sparse X turns dense: a block of rows at a time, as model.logits does
            rows = max(1, SPARSE_BLOCK_VALUES // max(X.shape[1], 1))
            return np.concatenate([self._logits(self._scale_inputs(X[i:i + rows], row_offset=i))
                                   for i in range(0, X.shape[0], rows)])
        return self._logits(self._scale_inputs(X))



def _unequal(sample_weight):
    """``sample_weight``, or None when every weight is the same: a weighted mean is then the
    plain mean, and computing it as one would change the last bits of training."""
    if sample_weight is None or not sample_weight.size:
        return None
    return None if (sample_weight == sample_weight[0]).all() else sample_weight
