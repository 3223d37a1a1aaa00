"""WASAP-SGD (Curci, Mocanu, Pechenizkiy 2021): data-parallel truly sparse training over MPI.

Start it under an MPI launcher, e.g. ``mpiexec -n 4 sparsekit train --parallel wasap`` or a
script calling ``sparsekit.train(..., parallel="wasap")``; every rank runs the same call.

Phase 1 (the first ``phase1_fraction`` of the epochs; the training set is split into one shard
per worker):

* ``mode="sync"``: every rank is a worker.  Each step, every rank computes the gradient of its
  own mini-batch and the gradients are averaged with one ``Allreduce`` of their *values*: the
  topology is identical on every rank because all ranks evolve it from the same weights with the
  same shared-seed generator, so indices are never sent.  The effective batch is ``N x
  batch_size``; the learning rate is scaled linearly to ``N x lr`` over ``scale_warmup_epochs``
  (Goyal et al. 2017), and the momentum is rescaled when phase 2 returns to ``lr``.  A per-epoch
  fingerprint check verifies that the ranks still hold one model.
* ``mode="async"``: rank 0 is a parameter server applying each worker's gradient as it arrives,
  with staleness damping and topology filtering (see :mod:`sparsekit.parallel.server`).

Phase 2 (the remaining epochs): each worker trains its own replica on its shard and evolves its
own topology with its own generator -- local SGD, no communication but per-epoch statistics and
checkpoints.  This is the intended algorithm.  The reference code instead kept syncing with the
master every ``0.3 x epochs`` batches, which silently reset each worker to the end-of-phase-1
master model (its phase-2 updates were never sent); that reset is deliberately not reproduced.

End: rank 0 collects the workers' models, averages them over the union of their supports and
magnitude-prunes the result back to the connection budget (the per-layer counts at the end of
phase 1) with SET's sign-split rule and an adaptive fraction
(:mod:`sparsekit.parallel.average`); it evaluates and saves the result, which every rank returns.

Failure handling: an exception on any rank ends every rank (``MPI_Abort``) with a message naming
the rank and the cause; no wait lasts longer than the communication timeout
(:mod:`sparsekit.parallel.comm`).  Rank 0 writes a checkpoint after every epoch; ``resume=True``
restarts the whole job from it (same number of ranks).

Optimizer state (momentum SGD's velocity, Adam's moments) lives with each layer and travels with
the model.  Sync phase 1: every rank applies the same averaged gradient to identical state, so
the state stays identical (the fingerprint check covers it).  Async phase 1: only the server
updates, so only it holds meaningful state; workers receive it with the model at the switch to
phase 2.  Phase 2: each worker continues from that state with its own updates.  End: the state
arrays are averaged over the union of supports like the weights (an absent connection counts as
zero state) and pruned with them; the optimizer's step count is shared.  When sync phase 2
returns to the unscaled learning rate, momentum SGD's velocity (which has the rate folded in)
is rescaled to match; Adam's moments hold gradient statistics only and are left alone.

With one rank and ``mode="sync"`` the result equals :func:`sparsekit.train` with the same seed
(unless importance pruning falls in phase 2, where WASAP-SGD does not prune).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.dataset import check_xy
from ..io.runfolder import refuse_existing_run, run_folder_lock
from ..nn.model import SparseMLP
from ..training.config import WASAP_MODES, TrainConfig
from ..training.history import CHECKPOINT, TrainResult, write_history
from ..training.step import Engine
from .average import average_models
from .comm import Comm, guarded, rank_map, select_gpu, share_cores
from .loop import TAG_RNG, WORKER_DIR, Run, evolve, finish_epoch, train_epoch, wasap_state
from .server import serve, work
from .transfer import bcast_model, recv_model, rng_from_json, send_model

MODES = WASAP_MODES
_IDLE = {"samples": 0, "steps": 0, "loss_sum": 0.0, "correct": 0.0, "time_train": 0.0,
         "time_comm": 0.0, "bytes": 0, "grow": {}}


def train_wasap(model, data, config: TrainConfig | None = None, *, callbacks=(), run_dir=None,
                resume: bool = False, log=None, comm=None, **options) -> TrainResult:
    """Train with WASAP-SGD on every rank of an MPI job (see the module docstring).

    Parameters
    ----------
    model, data, config, callbacks, run_dir, resume, log, **options
        As in :func:`sparsekit.train`; ``config.wasap_mode`` (``"sync"``: allreduce of
        gradient values; ``"async"``: a parameter server on rank 0, at least 2 ranks),
        ``phase1_fraction`` (fraction of the epochs in phase 1), ``lr_scaling`` and
        ``scale_warmup_epochs`` (sync: linear scaling of the rate with the number of ranks,
        ramped over ``min(5, epochs / 10)`` epochs by default), ``max_staleness`` (async: drop
        gradients staler than this many server steps, default 8 x workers) and ``timeout``
        (seconds any communication may wait; default ``$SPARSEKIT_MPI_TIMEOUT`` or 300) are
        WASAP's own options.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    TrainResult
        On every rank, the final (averaged, pruned) model; the history is complete on rank 0.
        ``callbacks`` run on rank 0 only (in phase 2 they see rank 0's own model; the last
        record is then updated with the averaged model's test metrics).  Every rank must be
        given the same options (except ``backend``, ``progress``, ``eval_batch_size``, the
        memory limits and ``timeout``): ranks given different ones are refused at the start.

    Notes
    -----
    Importance pruning (``prune_start``) runs only in phase 1 of sync mode, where every rank
    prunes identically; in phase 2 it is skipped because workers would remove different neurons
    and their models could no longer be averaged.  Async mode refuses it.  Only ``"set"`` and
    ``"static"`` (or subclasses) are accepted: phase 1 needs topology changes that depend only
    on the weights and the shared generator, not on each rank's data; a per-epoch fingerprint
    check reports any divergence of the ranks' topologies as an error.
    """
    from ..training.loop import make_config

    cfg = make_config(config, options)
    if cfg.parallel != "wasap":  # its checks (TrainConfig._check_wasap) run with the option
        cfg = cfg.replace(parallel="wasap")
    mode = cfg.wasap_mode
    comm = Comm(comm, cfg.timeout)
    check_ranks(mode, comm.size)
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir")
    with guarded(comm):
        if _wants_gpu(model, cfg.backend):  # pragma: no cover - needs a GPU
            select_gpu(comm)  # before any device array of this run exists
        ranks = rank_map(comm)
        _check_same_config(comm, cfg)
        if ranks is not None and comm.size > 1:
            line = f"wasap-sgd {mode} on {comm.size} ranks ({ranks})"
            if log is not None:
                log(line)
            else:
                print(line, file=sys.stderr, flush=True)
        with contextlib.ExitStack() as stack:
            if comm.rank == 0 and run_dir is not None:  # rank 0 owns the folder (and writes it)
                stack.enter_context(run_folder_lock(run_dir))
            run = _prepare(comm, cfg, model, data, run_dir, resume)
            run.callbacks, run.log = tuple(callbacks), log
            return _train(run)


def _wants_gpu(model, backend) -> bool:
    """Whether this run computes on a GPU (then each rank binds its own device first)."""
    if isinstance(model, SparseMLP):
        backend = model.backend
    if backend is None:  # what get_backend(None) would pick
        import os

        backend = os.environ.get("SPARSEKIT_BACKEND", "cpu")
    if isinstance(backend, str) and backend.lower() == "auto":
        from .._compat import has_cupy_gpu

        return has_cupy_gpu
    name = backend if isinstance(backend, str) else getattr(backend, "name", None)
    return str(name).lower() == "gpu"


def _shard(n: int, n_shards: int, index: int, seed_seq) -> np.ndarray:
    """Rows of shard ``index``: a seeded random split into equal parts (all rows if one)."""
    if n_shards == 1:
        return np.arange(n)
    m = n // n_shards
    perm = np.random.default_rng(seed_seq).permutation(n)
    return np.sort(perm[index * m:(index + 1) * m])


def _worker_rng(seed: int, rank: int, epoch: int) -> np.random.Generator:
    """Async workers' own generator (data order, dropout), fresh per (rank, starting epoch)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, rank, epoch)))


def _prepare(comm: Comm, cfg: TrainConfig, model, data, run_dir, resume) -> Run:
    """Build or resume the model on rank 0 and give every rank its share (typed messages)."""
    from ..backends import get_backend
    from ..training.loop import FRESH_RUN_HINT, build_model, check_run_memory, split_data

    mode, epochs, batch_size = cfg.wasap_mode, cfg.epochs, cfg.batch_size
    x_tr, y_tr, x_te, y_te = split_data(data)
    run_dir = Path(run_dir) if run_dir is not None else None
    init_seed, train_seed, shard_seed = np.random.SeedSequence(cfg.seed).spawn(3)
    be = model.backend if isinstance(model, SparseMLP) else get_backend(cfg.backend)
    checkpointing = bool(comm.bcast(np.array([run_dir is not None], np.int64), 0,
                                    "run folder flag")[0])
    ckpt, meta = None, None
    if comm.rank == 0:
        check_run_memory(None if resume else model, cfg, len(x_tr),
                         0 if x_te is None else len(x_te))
        if resume:
            sizes = model.layer_sizes if isinstance(model, SparseMLP) else model
            ckpt = load_checkpoint(run_dir / CHECKPOINT, backend=be, layer_sizes=sizes)
            meta = _resume_meta(ckpt.train_state, mode, comm.size, run_dir)
            _check_resumed_config(ckpt.train_state, cfg, run_dir)
        else:
            if run_dir is not None:
                refuse_existing_run(run_dir, FRESH_RUN_HINT)
            model = build_model(model, cfg.replace(backend=be), init_seed)
            meta = {"stage": "fresh", "epoch": 0, "step": 0, "rng": None, "budgets": None,
                    "version": 0, "server_step": 0, "workers": None, "optimizer": None,
                    "method_state": None, "phase1_epochs": int(round(cfg.phase1_fraction * epochs))}
    meta = comm.bcast_json(meta, 0, "run state")
    rng_state = None
    # In phase 2 every worker resumes its own counters, optimizer scalars and method state:
    # async workers step while the server does not, so rank 0's would rewind theirs.
    state = meta
    if meta["stage"] == "phase2":
        others = [r for r in _workers(mode, comm.size) if r != 0]
        if comm.rank == 0:
            model, rng_state = ckpt.model, ckpt.train_state["rng"]
            for r in others:
                part = load_checkpoint(run_dir / meta["workers"] / f"rank-{r}.npz", backend=be)
                send_model(comm, part.model, r)
                comm.send_json(part.train_state, r, TAG_RNG, "worker state")
        elif comm.rank in others:
            model = recv_model(comm, 0, be)
            state = comm.recv_json(0, TAG_RNG, "worker state")
            rng_state = state["rng"]
    else:
        model = bcast_model(comm, ckpt.model if ckpt is not None else model, be)
        rng_state = meta["rng"]
    share_cores(comm, model.backend)
    sizes = model.layer_sizes
    x_tr, y_tr = check_xy(x_tr, y_tr, sizes[0], sizes[-1], names=("x_train", "y_train"),
                          dtype=model.dtype)
    if x_te is not None:
        x_te, y_te = check_xy(x_te, y_te, sizes[0], sizes[-1], names=("x_test", "y_test"),
                              dtype=model.dtype)
    _check_same_data(comm, x_tr, y_tr, x_te)
    n_shards = check_shards(x_tr.shape[0], comm.size, mode, batch_size)
    is_worker = mode == "sync" or comm.rank > 0
    index = comm.rank if mode == "sync" else comm.rank - 1
    shard = (_shard(x_tr.shape[0], n_shards, index, shard_seed) if is_worker
             else np.empty(0, np.int64))
    if rng_state is not None and (meta["stage"] == "phase2" or mode == "sync" or comm.rank == 0):
        rng = rng_from_json(rng_state)
    elif mode == "async" and comm.rank > 0:
        rng = _worker_rng(cfg.seed, comm.rank, meta["epoch"])
    else:
        rng = np.random.default_rng(train_seed)
    engine = Engine(model, cfg, rng)
    engine.epoch, engine.step = int(state["epoch"]), int(state["step"])
    if state.get("optimizer") is not None:
        engine.optimizer.load_state_dict(state["optimizer"])
    engine.growth.load_state_dict(state.get("method_state") or {})
    # Methods that plan by the run's length learn it from this rank's shard.
    engine.plan(max(shard.shape[0] // batch_size, x_tr.shape[0] // n_shards // batch_size))
    warmup = cfg.scale_warmup_epochs
    run = Run(comm=comm, mode=mode, engine=engine, config=cfg,
              x=np.ascontiguousarray(x_tr, dtype=model.dtype), y=y_tr, x_te=x_te, y_te=y_te,
              shard=shard, phase1_epochs=min(meta["phase1_epochs"], epochs),
              scale_warmup_epochs=min(5.0, epochs / 10) if warmup is None else float(warmup),
              run_dir=run_dir, checkpointing=checkpointing, budgets=meta["budgets"],
              version=meta["version"], server_step=meta["server_step"], stage=meta["stage"])
    if comm.rank == 0 and ckpt is not None:
        run.history = list(ckpt.train_state.get("history", []))
    return run


def check_ranks(mode: str, size: int) -> None:
    """Refuse ``async`` mode on fewer than 2 ranks (rank 0 serves, the others compute)."""
    if mode == "async" and size < 2:
        raise ValueError("wasap mode 'async' needs at least 2 ranks (rank 0 serves, the others "
                         "compute); start it with mpiexec -n N, N >= 2, or use mode 'sync'")


def check_shards(n_train: int, size: int, mode: str, batch_size: int) -> int:
    """The number of data shards (one per worker: every rank in ``sync`` mode, all but the
    server in ``async``), refusing shards that hold no full batch."""
    n_shards = size if mode == "sync" else size - 1
    if n_shards >= 1 and n_train // n_shards < batch_size:
        raise ValueError(f"each of the {n_shards} data shards has {n_train // n_shards} "
                         f"samples, fewer than batch_size {batch_size}; use fewer ranks or a "
                         "smaller batch")
    return n_shards


def finished_run_error(run_dir, trained: int, epochs: int) -> str:
    """Why a finished WASAP-SGD run cannot be resumed for ``epochs`` epochs."""
    return (f"{run_dir} holds a finished WASAP-SGD run of {trained} epochs: its averaged model "
            f"cannot train further (epochs={epochs}); train it in a new run")


#: Options a rank may set for itself: where and how it computes, not what.
RANK_OWN_OPTIONS = ("backend", "progress", "eval_batch_size", "memory_limit", "gpu_memory_limit",
                    "timeout")


def _as_floats(value):
    """``value`` with every number a float (``gamma=1`` and ``gamma=1.0`` are one option)."""
    if isinstance(value, dict):
        return {k: _as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_floats(v) for v in value]
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return value


def _lowest_and_highest(comm: Comm, mine: np.ndarray, what: str):
    """Every rank's ``mine``, reduced to the lowest and the highest of each entry (equal on
    every rank exactly when the ranks agree)."""
    return (comm.allreduce(mine.copy(), comm.MPI.MIN, what),
            comm.allreduce(mine.copy(), comm.MPI.MAX, what))


def _check_same_config(comm: Comm, cfg: TrainConfig) -> None:
    """Refuse ranks given different training options (other epochs or batch sizes stall a
    collective until the timeout; another learning rate or seed makes the topologies diverge,
    blamed on the growth method).  Compared: a digest of the options, less
    :data:`RANK_OWN_OPTIONS`."""
    options = {k: v for k, v in cfg.to_dict().items() if k not in RANK_OWN_OPTIONS}
    text = json.dumps(_as_floats(options), sort_keys=True, default=repr)
    mine = np.array([int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "little")],
                    dtype=np.float64)  # 48 bits: exact in a float64
    low, high = _lowest_and_highest(comm, mine, "options digest")
    if low[0] != high[0]:
        raise ValueError("the ranks were given different training options: every rank must "
                         "train with the same configuration (only "
                         f"{', '.join(RANK_OWN_OPTIONS)} may differ)")


def _check_same_data(comm: Comm, x_tr, y_tr, x_te) -> None:
    """Refuse ranks that loaded different data (their shards, step counts and collectives would
    no longer pair up: a stall until the communication timeout).  Compared: the sizes, the
    labels' sum and the sum of up to 64 evenly spaced training rows."""
    rows = np.linspace(0, x_tr.shape[0] - 1, min(64, x_tr.shape[0])).astype(np.int64)
    sample = x_tr[rows]
    sample = sample.toarray() if hasattr(sample, "toarray") else np.asarray(sample)
    mine = np.array([x_tr.shape[0], -1 if x_te is None else x_te.shape[0], int(y_tr.sum()),
                     float(sample.astype(np.float64).sum())], dtype=np.float64)
    low, high = _lowest_and_highest(comm, mine, "data fingerprint")
    if not np.array_equal(low, high, equal_nan=True):
        what = (f"this rank has {int(mine[0])} training and {int(mine[1])} test samples, the "
                f"ranks {int(low[0])} to {int(high[0])} training samples"
                if not np.array_equal(low[:2], high[:2])
                else "the same numbers of samples, but other labels or values")
        raise ValueError(f"the ranks loaded different data ({what}): every rank must load the "
                         "same dataset")


def _check_resumed_config(state: dict, cfg: TrainConfig, run_dir: Path) -> None:
    """The run's saved options against this job's: a difference is an error, as in train()."""
    from ..training.loop import RESUME_MAY_CHANGE, check_resume_epochs, config_differences

    try:
        saved = TrainConfig.from_dict(state.get("config") or {})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{run_dir / CHECKPOINT}: its saved config is invalid ({exc})") from None
    check_resume_epochs(run_dir, cfg.epochs, int(state.get("epoch", 0)))
    diffs = config_differences(saved, cfg) if state.get("config") else []
    if diffs:
        raise ValueError(f"resume of {run_dir}: options differ from the run's: "
                         f"{'; '.join(diffs)} (only {', '.join(RESUME_MAY_CHANGE)} may change)")


def _workers(mode: str, size: int) -> list[int]:
    return list(range(size)) if mode == "sync" else list(range(1, size))


def _resume_meta(state: dict, mode: str, size: int, run_dir: Path) -> dict:
    w = state.get("wasap")
    if w is None:
        raise ValueError(f"{run_dir / CHECKPOINT} was not written by parallel='wasap'; resume it "
                         "without parallel")
    if w["mode"] != mode or w["world_size"] != size:
        raise ValueError(f"{run_dir} was trained with wasap mode {w['mode']!r} on "
                         f"{w['world_size']} ranks; resume it the same way (got {mode!r} on "
                         f"{size} ranks)")
    return {"stage": w["stage"], "epoch": state["epoch"], "step": state["step"],
            "rng": state["rng"], "budgets": w["budgets"], "version": w["version"],
            "server_step": w["server_step"], "workers": w["workers"],
            "optimizer": state.get("optimizer"), "method_state": state.get("method_state"),
            "phase1_epochs": w["phase1_epochs"]}


def _train(run: Run) -> TrainResult:
    comm = run.comm
    if run.stage == "final":  # a finished job: its averaged model cannot be trained further
        if run.config.epochs > run.engine.epoch:  # every rank knows the epoch
            raise ValueError(finished_run_error(run.run_dir, run.engine.epoch,
                                                run.config.epochs))
        if comm.rank == 0 and run.log is not None:
            run.log(f"{run.run_dir} holds a finished WASAP-SGD run; returning its final model")
        return TrainResult(run.model, run.history if comm.rank == 0 else [], run.run_dir)
    if run.stage in ("fresh", "phase1"):
        if run.mode == "sync":
            for epoch in range(run.engine.epoch, run.phase1_epochs):
                train = train_epoch(run, allreduce=True)
                evo = evolve(run, phase=1)
                resynced = _check(run, epoch)
                if finish_epoch(run, epoch, 1, train, evo, shared_model=True,
                                extra={"resynced": resynced} if resynced else None):
                    run.stopped = True
                    break
        else:
            _async_phase1(run)
        _enter_phase2(run)
    for epoch in range(run.engine.epoch, run.epochs):
        if run.stopped:
            break
        run.stage = "phase2"
        train = train_epoch(run, allreduce=False) if run.is_worker else dict(_IDLE)
        evo = (evolve(run, phase=2) if run.is_worker
               else {"pruned": None, "grow": {}, "time_evolve": 0.0})
        if finish_epoch(run, epoch, 2, train, evo, shared_model=False):
            run.stopped = True
    return _finish(run)


def _check(run: Run, epoch: int) -> bool:
    from .loop import check_consistent

    return check_consistent(run, epoch)


def _async_phase1(run: Run) -> None:
    comm = run.comm
    steps_per_shard = (run.x.shape[0] // (comm.size - 1)) // run.batch_size
    if run.engine.epoch < run.phase1_epochs:
        if comm.rank == 0:
            serve(run, steps_per_shard)
        else:
            work(run)
    # Every worker now starts phase 2 from the server's model (optimizer state included).
    engine = run.engine
    state = comm.bcast_json({"epoch": engine.epoch, "step": engine.step, "version": run.version,
                             "server_step": run.server_step, "stopped": run.stopped,
                             "optimizer": engine.optimizer.state_dict()}
                            if comm.rank == 0 else None, 0, "phase switch")
    run.model = bcast_model(comm, run.model if comm.rank == 0 else None, run.model.backend)
    engine.epoch, engine.step, run.version = state["epoch"], state["step"], state["version"]
    engine.optimizer.load_state_dict(state["optimizer"])
    run.server_step, run.stopped = state["server_step"], state["stopped"]


def _enter_phase2(run: Run) -> None:
    """Budgets, each rank's own generator, and the momentum rescaled to the unscaled lr."""
    run.budgets = run.model.n_connections
    if run.mode == "sync":
        # Rank 0 continues the shared stream itself (so one rank equals the single-process
        # trainer; jumped() would drop a buffered 32-bit draw); rank r jumps r * 2**127 ahead.
        if run.comm.rank:
            run.rng = np.random.Generator(run.rng.bit_generator.jumped(run.comm.rank))
        scale = run.lr_scale(run.phase1_epochs)
        if scale != 1.0:
            run.engine.optimizer.rescale_lr(run.model, 1.0 / scale)


def _finish(run: Run) -> TrainResult:
    """Union-average the workers' models (if they diverged), evaluate and save on rank 0."""
    comm, be = run.comm, run.model.backend
    averaged = run.stage == "phase2"
    workers = _workers(run.mode, comm.size)
    final = run.model
    if averaged:
        if comm.rank == 0:
            models = ([run.model] if 0 in workers else []) + [
                recv_model(comm, r, be) for r in workers if r != 0]
            final = average_models(models, run.budgets)
        elif comm.rank in workers:
            send_model(comm, run.model, 0)
    if comm.rank == 0:
        run.model = final
        if run.history:
            record = run.history[-1]
            if run.x_te is not None:
                before = record.get("test_acc")
                record["test_loss"], record["test_acc"] = final.evaluate(
                    run.x_te, run.y_te, run.config.eval_batch_size)
                record["test_acc_before_average"] = before
            record["connections"] = final.n_connections
            record["averaged_workers"] = len(workers) if averaged else 1
            if run.log is not None:
                acc = (f", test accuracy {100 * record['test_acc']:.2f}%"
                       if "test_acc" in record else "")
                how = (f"union average of {len(workers)} worker{'s' * (len(workers) > 1)} "
                       f"pruned to "
                       f"{sum(run.budgets)} connections" if averaged else "shared model")
                run.log(f"final model ({how}){acc}")
        if run.checkpointing:
            save_checkpoint(run.run_dir / CHECKPOINT, final, wasap_state(run, "final"))
            write_history(run.run_dir, run.history)
            import shutil

            shutil.rmtree(run.run_dir / WORKER_DIR, ignore_errors=True)
    run.model = bcast_model(comm, final if comm.rank == 0 else None, be)
    return TrainResult(run.model, run.history if comm.rank == 0 else [], run.run_dir)
