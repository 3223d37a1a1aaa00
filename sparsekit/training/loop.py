"""``train()``: the truly sparse training loop, with history, callbacks and checkpoints.

The loop itself is short: it builds a :class:`~sparsekit.training.config.TrainConfig` and an
:class:`~sparsekit.training.step.Engine`, and around the engine's epochs it evaluates, records,
checkpoints and logs.  ``parallel="wasap"`` hands the same config to
:func:`sparsekit.parallel.train_wasap`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.dataset import check_xy, is_sparse
from ..io.runfolder import refuse_existing_run, run_folder_lock
from ..nn.model import SparseMLP
from .config import TrainConfig, check_layer_sizes
from .history import CHECKPOINT, TrainResult, format_record, write_history
from .memory import check_memory
from .optim import OPTIMIZERS
from .step import Engine

#: What :func:`train` tells a fresh run aimed at a folder that holds another run.
FRESH_RUN_HINT = "continue it with resume=True or choose another run_dir"

logger = logging.getLogger("sparsekit")


def split_data(data):
    """``(x_train, y_train, x_test, y_test)`` from a Dataset, a tuple, or a dataset name."""
    if isinstance(data, str):
        from ..io.datasets import load_dataset

        data = load_dataset(data)
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train, data.x_test, data.y_test
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        x_tr, y_tr, x_te, y_te = tuple(data) if len(data) == 4 else (*data, None, None)
        if y_tr is None:
            raise ValueError("y_train is None: training needs labels")
        if (x_te is None) != (y_te is None):
            raise ValueError("x_test and y_test must be given together (or both None)")
        return x_tr, y_tr, x_te, y_te
    raise ValueError("data must be a Dataset, a dataset name, (x, y) or "
                     "(x_train, y_train, x_test, y_test)")


def make_config(config: TrainConfig | None, options: dict[str, Any]) -> TrainConfig:
    """``config`` (default :class:`TrainConfig`) with keyword ``options`` applied and checked."""
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    return (config or TrainConfig()).replace(**options) if options else (config or TrainConfig())


def build_model(model, config: TrainConfig, seed) -> SparseMLP:
    """``model`` itself, or a new :class:`SparseMLP` from layer sizes and ``config``."""
    if isinstance(model, SparseMLP):
        return model
    return SparseMLP(check_layer_sizes(model), backend=config.backend, seed=seed,
                     **config.model_options)


def ready_model_config(model: SparseMLP, config: TrainConfig, given) -> TrainConfig:
    """``config`` with a ready model's own network options (what the run records, and what
    its growth method reads), refusing any in ``given`` (the options passed by keyword) that
    differ from the model's: they apply only to a model built from layer sizes, and would
    otherwise be ignored silently."""
    own = model.config()
    for key, value in config.model_options.items():
        if key in given and value != own[key]:
            raise ValueError(f"{key}={given[key]!r} differs from the given model's "
                             f"{key}={own[key]!r}: network options apply to a model train() "
                             "builds from layer sizes; change the model itself instead")
    return config.replace(**{k: own[k] for k in config.model_options})


def check_run(model, config: TrainConfig, n_train: int, n_test: int) -> None:
    """What a run checks of its size before the model is built (``model``: layer sizes, a
    model, or None for a resumed one): a batch that fits the training samples, a peak memory
    that fits (:func:`check_run_memory`).  The command line makes these checks before it
    creates the run folder as well."""
    if n_train < config.batch_size:  # before the memory check, which would blame the batch
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n_train} training "
                         "samples")
    check_run_memory(model, config, n_train, n_test)


def check_run_memory(model, config: TrainConfig, n_train: int, n_test: int) -> None:
    """Refuse, before the model is built, a run whose estimated peak does not fit."""
    check_memory(model, config.backend, config.memory_limit,
                 gpu_memory_limit=config.gpu_memory_limit, epsilon=config.epsilon,
                 batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                 method=config.method_name, dtype=config.dtype,
                 evolve_output=config.evolve_output, evolve_every=config.evolve_every,
                 gamma=config.method_params.get("gamma", 1.0), n_train=n_train, n_test=n_test,
                 state_slots=len(OPTIMIZERS[config.optimizer].slots),
                 forward_density=config.method_params.get("forward_density"),
                 backward_density=config.method_params.get("backward_density"))


def train(model: SparseMLP | Sequence[int], data, config: TrainConfig | None = None, *,
          callbacks: Sequence[Callable[[dict, SparseMLP], Any]] = (), run_dir=None,
          resume: bool = False, log: Callable[[str], Any] | None = None,
          **options) -> TrainResult:
    """Train a truly sparse MLP classifier.

    Parameters
    ----------
    model : SparseMLP or sequence of int
        A model, or layer sizes ``[n_features, hidden..., n_classes]`` to build one from the
        config's network options (``epsilon``, ``activation``, ``alpha``, ``dropout``,
        ``init``, ``fan_in``, ``dtype``) and ``seed``.
    data : Dataset, str, (x, y) or (x_train, y_train, x_test, y_test)
        Batch-major float features (dense, or ``scipy.sparse``: densified one batch at a time)
        and integer labels with at least two classes; a name is passed to
        :func:`sparsekit.io.datasets.load_dataset`.  An empty test set records no test
        metrics (with a warning).
    config : TrainConfig, optional
        Every training option (see :class:`~sparsekit.training.config.TrainConfig`).
    **options
        Options of :class:`~sparsekit.training.config.TrainConfig` by keyword, applied over
        ``config``: e.g. ``epochs=20, optimizer="adam", method="gse"``.  An unknown name is a
        ``TypeError``; a bad value a ``ValueError`` naming the option.
    callbacks : sequence of callables
        ``cb(record, model)`` after every epoch; returning True stops training.
    run_dir : path, optional
        Where ``checkpoint.npz`` (atomically, with the optimizer state) and
        ``history.json``/``history.csv`` are written after every epoch.  It is created and
        locked before any work: a second process training into it gets an error naming this
        one's PID (see :mod:`sparsekit.io.runfolder`).  Without ``resume`` a folder that
        already holds a checkpoint is refused (``FileExistsError``) rather than overwritten.
    resume : bool
        Continue from ``run_dir/checkpoint.npz``; the continued run matches an uninterrupted
        one exactly, for every optimizer and growth method.  Without ``config`` the run's
        saved config is used, with ``**options`` over it; any option that differs from the
        run's is an error listing the differences, except those in
        :data:`RESUME_MAY_CHANGE` (``epochs``, ``backend``, ...).  A checkpoint whose layers
        do not match ``model`` is an error.
    log : callable, optional
        Receives one summary line per epoch; the same line is logged at INFO level on the
        ``logging.getLogger("sparsekit")`` logger.

    Returns
    -------
    TrainResult
        The model, one history record per epoch and the run folder.  A record's ``lr`` is the
        scheduled rate at the end of its epoch (where the next one starts).
    """
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    try:
        cfg = make_config(config, options)
    except ValueError:
        if not (resume and config is None) or options.get("parallel"):
            raise
        # Resuming, the options apply over the run's saved config (resume_state checks them
        # there): over the defaults, a run's own method_params could belong to another method.
        cfg = make_config(None, {k: v for k, v in options.items()
                                 if k in (*RESUME_MAY_CHANGE, "parallel")})
    callbacks = _check_hooks(callbacks, log, run_dir)
    wasap_only = sorted(k for k in options if k in WASAP_OPTIONS)
    if cfg.parallel is None and wasap_only and not resume:  # as the command line refuses them
        raise ValueError(f"{wasap_only[0]} applies to parallel='wasap' only")
    if isinstance(model, SparseMLP):
        cfg = ready_model_config(model, cfg, {} if resume else options)
    if cfg.parallel is not None:
        from ..parallel import train_wasap

        return train_wasap(model, data, cfg, callbacks=callbacks, run_dir=run_dir,
                           resume=resume, log=log)
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir")
    with contextlib.ExitStack() as stack:
        if run_dir is not None:  # before any work: a bad, busy or used folder fails at once
            run_dir = stack.enter_context(run_folder_lock(run_dir))
            if not resume:
                refuse_existing_run(run_dir, FRESH_RUN_HINT)
        return _train(model, data, cfg, config is None, options, callbacks, run_dir, resume,
                      log)


#: Options of WASAP-SGD alone (``parallel="wasap"``).
WASAP_OPTIONS = ("wasap_mode", "phase1_fraction", "lr_scaling", "scale_warmup_epochs",
                 "max_staleness")

#: Options a resumed run may change: how long it runs and where and how it computes, never
#: what it computes per step.  (``sparsekit train --resume`` documents the same list.)
RESUME_MAY_CHANGE = ("epochs", "backend", "progress", "eval_batch_size", "memory_limit",
                     "gpu_memory_limit", "timeout")


def config_differences(saved: TrainConfig, given: TrainConfig,
                       may_change: Sequence[str] = RESUME_MAY_CHANGE) -> list[str]:
    """``"name: run has A, given B"`` for each option that differs, except ``may_change``."""
    a, b = saved.to_dict(), given.to_dict()
    return [f"{k}: run has {a[k]!r}, given {b[k]!r}" for k in a
            if k not in may_change and a[k] != b[k]]


def check_resume_epochs(run_dir, epochs: int, trained: int) -> None:
    """Refuse to resume a run for fewer epochs than it has trained (it would return at once,
    seemingly finished, with more epochs than asked for)."""
    if epochs < trained:
        raise ValueError(f"resume of {run_dir}: epochs={epochs} is fewer than the {trained} it "
                         f"has trained; give epochs > {trained} to continue it")


def resume_state(path: Path, model, cfg: TrainConfig, use_saved: bool, options: dict):
    """Load a run's checkpoint for ``train(resume=True)``; check it and the options.

    Returns ``(model, state, config)``.  With no ``config`` given (``use_saved``) the run's
    saved config is the base and ``options`` apply over it.  Any option that differs from the
    run's, except :data:`RESUME_MAY_CHANGE`, is an error listing the differences; so is a
    checkpoint of another architecture or a training state that cannot be continued.
    """
    sizes = (model.layer_sizes if isinstance(model, SparseMLP)
             else None if model is None else check_layer_sizes(model))
    ckpt = load_checkpoint(path, backend=cfg.backend, layer_sizes=sizes)
    state = ckpt.train_state
    if "wasap" in state:
        raise ValueError(f"{path} was written by parallel='wasap'; resume it with "
                         "parallel='wasap' under mpiexec")
    missing = [k for k in ("epoch", "step", "rng", "history", "config") if k not in state]
    if missing:
        raise ValueError(f"{path} holds no resumable training state (no {', '.join(missing)}); "
                         "a model saved with SparseMLP.save can be trained further by passing "
                         "it to train() without resume")
    history = state["history"]
    if not isinstance(history, list) or len(history) != state["epoch"]:
        n = len(history) if isinstance(history, list) else "no list of"
        raise ValueError(f"{path}: its history has {n} records for {state['epoch']} epochs")
    if any(not isinstance(r, dict) or r.get("epoch") != i + 1 for i, r in enumerate(history)):
        raise ValueError(f"{path}: its history records are not numbered 1..{len(history)}")
    try:
        saved = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its saved config is invalid ({exc})") from None
    if use_saved:
        cfg = saved.replace(**options)
    check_resume_epochs(path.parent, cfg.epochs, state["epoch"])
    diffs = config_differences(saved, cfg)
    if diffs:
        raise ValueError(f"resume of {path.parent}: options differ from the run's: "
                         f"{'; '.join(diffs)} (only {', '.join(RESUME_MAY_CHANGE)} may change)")
    if sizes is not None and cfg.prune_start is None and ckpt.model.layer_sizes != sizes:
        # Only importance pruning shrinks layers; without it they must match exactly.
        raise ValueError(f"checkpoint {path}: its layers {ckpt.model.layer_sizes} do not match "
                         f"the configured network {sizes}")
    return ckpt.model, state, cfg


def _n_rows(x) -> int:
    return int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else len(x)


def _check_hooks(callbacks, log, run_dir) -> tuple:
    """``callbacks`` as a tuple, after checking it and ``log`` and ``run_dir`` (one-line
    errors naming the argument, before any work)."""
    if callable(callbacks) or isinstance(callbacks, (str, bytes)):
        raise TypeError("callbacks must be a sequence of callables; wrap a single one in a list")
    try:
        callbacks = tuple(callbacks)
    except TypeError:
        raise TypeError(f"callbacks must be a sequence of callables, got "
                        f"{type(callbacks).__name__}") from None
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] is not callable ({type(cb).__name__})")
    if log is not None and not callable(log):
        raise TypeError(f"log must be a callable taking one line, got {type(log).__name__}")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    return callbacks


def _train(model, data, cfg: TrainConfig, use_saved: bool, options, callbacks, run_dir,
           resume, log) -> TrainResult:
    """:func:`train` once the run folder (if any) is held."""
    x_tr, y_tr, x_te, y_te = split_data(data)
    init_seed, train_seed = np.random.SeedSequence(cfg.seed).spawn(2)
    history: list[dict] = []
    state = None
    if resume:
        model, state, cfg = resume_state(run_dir / CHECKPOINT, model, cfg, use_saved, options)
        history = list(state["history"])
    check_run(None if resume else model, cfg, _n_rows(x_tr),
              0 if x_te is None else _n_rows(x_te))
    if not resume:
        model = build_model(model, cfg, init_seed)
    n_classes = model.layer_sizes[-1]
    x_tr, y_tr = check_xy(x_tr, y_tr, model.layer_sizes[0], n_classes,
                          names=("x_train", "y_train"), sparse=True, dtype=model.dtype)
    present = np.flatnonzero(np.bincount(y_tr, minlength=n_classes))
    if present.size < 2:
        raise ValueError(f"y_train holds a single class ({present.tolist()[0]}) of "
                         f"{n_classes}: there is nothing to learn")
    if x_te is not None:
        x_te, y_te = check_xy(x_te, y_te, model.layer_sizes[0], n_classes,
                              names=("x_test", "y_test"), sparse=True, dtype=model.dtype)
        if x_te.shape[0] == 0:
            warnings.warn("the test set is empty: no test loss or accuracy is recorded",
                          stacklevel=3)
            x_te = y_te = None
    engine = Engine(model, cfg, np.random.default_rng(train_seed))
    if state is not None:
        try:
            engine.load_state_dict(state)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a malformed field
            raise ValueError(f"{run_dir / CHECKPOINT}: its training state cannot be restored "
                             f"({exc})") from None
    # Sparse input stays CSR: the engine densifies one batch at a time.
    x_host = (x_tr.astype(model.dtype, copy=False) if is_sparse(x_tr)
              else np.ascontiguousarray(x_tr, dtype=model.dtype))
    while engine.epoch < cfg.epochs:
        epoch = engine.epoch
        fit = engine.train_epoch(x_host, y_tr, progress=cfg.progress)
        evo = engine.end_epoch()
        grow = evo["grow"] or fit["grow"]
        record = {"epoch": epoch + 1, "train_loss": fit["loss"],
                  "train_acc": fit["correct"] / fit["samples"], "lr": engine.lr_at(epoch + 1),
                  "time_train": fit["time_train"], "time_evolve": evo["time_evolve"],
                  "connections": model.n_connections, "neurons": model.layer_sizes,
                  "pruned": evo["pruned"], **engine.flops.record(),
                  **{f"growth_{k}": v for k, v in grow.items()}}
        t0 = time.perf_counter()
        if x_te is not None:
            record["test_loss"], record["test_acc"] = model.evaluate(x_te, y_te,
                                                                     cfg.eval_batch_size)
        record["time_eval"] = time.perf_counter() - t0
        history.append(record)
        if run_dir is not None:
            save_checkpoint(run_dir / CHECKPOINT, model,
                            {**engine.state_dict(), "history": history, "seed": cfg.seed,
                             "config": cfg.to_dict()})
            write_history(run_dir, history)
        line = format_record(record)
        logger.info(line)  # the "sparsekit" logger (the CLI prints it); log= still gets it too
        if log is not None:
            log(line)
        if any(cb(record, model) for cb in callbacks):
            break
    return TrainResult(model, history, run_dir)
