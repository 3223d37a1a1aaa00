"""The estimators' parameters: scikit-learn's checks of its own names, and the one
:class:`~sparsekit.training.config.TrainConfig` they map onto."""

from __future__ import annotations

import numbers

import numpy as np

from ..nn.activations import NAMES as ACTIVATIONS
from ..training.config import TrainConfig, check_float

SOLVERS = ("sgd", "adam", "adamw")
#: scikit-learn's names for two of sparsekit's activations (``activation="logistic"`` runs
#: ``"sigmoid"``), so that code written for its MLPs runs unchanged.
SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid"}


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def hidden_sizes(est) -> list[int]:
    """``hidden_layer_sizes`` as a list of ints, checked."""
    sizes = est.hidden_layer_sizes
    sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
    # () is a network without hidden layers (one sparse layer), as in scikit-learn's MLP
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
               for s in sizes):
        raise ValueError("hidden_layer_sizes must be a positive int or a sequence of "
                         f"positive ints, got {est.hidden_layer_sizes!r}")
    return [int(s) for s in sizes]


def check_params(est) -> None:
    """The checks that TrainConfig does not make (scikit-learn's own parameters)."""
    hidden_sizes(est)
    if not (isinstance(est.activation, str)
            and (est.activation in ACTIVATIONS or est.activation in SKLEARN_ACTIVATIONS)):
        raise ValueError(f"activation must be one of {(*SKLEARN_ACTIVATIONS, *ACTIVATIONS)}, "
                         f"got {est.activation!r}")
    for name, low in (("max_iter", 1), ("n_iter_no_change", 1)):
        value = getattr(est, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    bs = est.batch_size
    if not (isinstance(bs, str) and bs == "auto") and (
            not isinstance(bs, numbers.Integral) or isinstance(bs, bool) or bs < 1):
        raise ValueError(f"batch_size must be 'auto' or an integer >= 1, got {bs!r}")
    if est.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {est.solver!r}")
    for name in ("shuffle", "early_stopping", "nesterovs_momentum", "warm_start"):
        _check_bool(name, getattr(est, name))
    if not (isinstance(est.standardize, str) and est.standardize == "auto") and \
            not isinstance(est.standardize, (bool, np.bool_)):
        raise ValueError(f"standardize must be True, False or 'auto', got "
                         f"{est.standardize!r}")
    # Checked here under the estimator's names (TrainConfig calls them alpha, lr, betas and
    # adam_eps, and alpha is the L2 penalty here).
    check_float("slope", est.slope)
    if est.activation == "allrelu" and not est.slope > 0:
        raise ValueError(f"slope must be > 0 for allrelu, got {est.slope!r}")
    check_float("learning_rate_init", est.learning_rate_init, low=0, low_open=True)
    for name in ("beta_1", "beta_2"):
        check_float(name, getattr(est, name), low=0, high=1, high_open=True)
    check_float("adam_epsilon", est.adam_epsilon, low=0, low_open=True)
    tol = est.tol
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    vf = est.validation_fraction
    if isinstance(vf, bool) or not isinstance(vf, numbers.Real) or not 0 < vf < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {vf!r}")
    alpha = est.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
            0 <= alpha < np.inf):
        raise ValueError(f"alpha (the L2 penalty) must be a finite number >= 0, got "
                         f"{alpha!r}")


def train_config(est, batch_size: int) -> TrainConfig:
    """The :class:`TrainConfig` of these parameters for mini-batches of ``batch_size``."""
    sgd = est.solver == "sgd"
    return TrainConfig(
        epsilon=est.epsilon, alpha=est.slope,
        activation=SKLEARN_ACTIVATIONS.get(est.activation, est.activation),
        dropout=est.dropout, init=est.init, fan_in=est.fan_in, dtype=est.dtype,
        method=est.method, method_params=est.method_params or {}, zeta=est.zeta,
        optimizer=est.solver, lr=est.learning_rate_init, momentum=est.momentum,
        nesterov=bool(sgd and est.nesterovs_momentum and est.momentum > 0),
        betas=(est.beta_1, est.beta_2), adam_eps=est.adam_epsilon,
        weight_decay=est.alpha / batch_size, batch_size=batch_size,
        lr_schedule=est.lr_schedule, warmup_epochs=est.warmup_epochs,
        max_grad_norm=est.max_grad_norm, backend=est.backend, eval_batch_size=2048,
        epochs=est.max_iter)
