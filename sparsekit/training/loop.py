"""``train()``: the truly sparse training loop, with history, callbacks and checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._align import feature_major_batch
from ..growth import get_method
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.datasets import check_xy
from ..nn.activations import softmax_cross_entropy
from ..nn.model import SparseMLP
from .flops import FlopCounter
from .memory import check_memory
from .optim import LRSchedule, MomentumSGD
from .pruning import PruningSchedule, prune_neurons

CHECKPOINT = "checkpoint.npz"

logger = logging.getLogger("sparsekit")


@dataclass
class TrainResult:
    """The trained model, one history record per epoch, and the run folder (if any)."""

    model: SparseMLP
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    def to_json(self) -> str:
        """The history as a JSON document."""
        return json.dumps(self.history, indent=1)


def _split_data(data):
    """``(x_train, y_train, x_test, y_test)`` from a Dataset, a tuple, or a dataset name."""
    if isinstance(data, str):
        from ..io.datasets import load_dataset

        data = load_dataset(data)
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train, data.x_test, data.y_test
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        return tuple(data) if len(data) == 4 else (data[0], data[1], None, None)
    raise ValueError("data must be a Dataset, a dataset name, (x, y) or "
                     "(x_train, y_train, x_test, y_test)")


def train(model: SparseMLP | Sequence[int], data, *, backend=None, method="set",
          epochs: int = 10, batch_size: int = 128, lr: float = 0.01, momentum: float = 0.9,
          weight_decay: float = 2e-4, decay: str = "coupled", lr_schedule: str = "constant",
          warmup_epochs: float = 0.0, dropout: float = 0.3, epsilon: float = 20.0,
          zeta: float = 0.3, alpha: float = 0.6, activation: str = "allrelu",
          init: str = "he_uniform", fan_in: str = "dense", evolve_every: int | None = None,
          evolve_output: bool = False, method_params: dict | None = None,
          prune_start: int | None = None, prune_every: int = 10,
          prune_percentile: float = 10.0, seed: int = 0, dtype="float32",
          callbacks: Sequence[Callable[[dict, SparseMLP], Any]] = (),
          run_dir=None, resume: bool = False, eval_batch_size: int = 4096,
          progress: bool = False, log: Callable[[str], Any] | None = None,
          parallel: str | None = None, wasap_mode: str = "sync",
          phase1_fraction: float = 0.7, gpu_memory_limit=None,
          memory_limit=None) -> TrainResult:
    """Train a truly sparse MLP classifier.

    Parameters
    ----------
    model : SparseMLP or sequence of int
        A model, or layer sizes ``[n_features, hidden..., n_classes]`` to build one with
        ``epsilon, activation, alpha, dropout, init, fan_in, dtype`` and ``seed``.
    data : Dataset, str, (x, y) or (x_train, y_train, x_test, y_test)
        Batch-major float features and integer labels; a name is passed to
        :func:`sparsekit.io.datasets.load_dataset`.
    backend : {"cpu", "gpu", "auto"} or Backend, optional
    method : str or GrowthMethod, default "set"
        Topology evolution: ``"set"``, ``"static"``, ``"gse"``, ``"topkast"``, ``"rigl"`` (see
        :func:`sparsekit.growth.available_methods`).  ``evolve_every`` and ``evolve_output``
        apply to all but ``static``; other parameters go in ``method_params``, e.g.
        ``{"gamma": 1.0, "drop_fraction": 0.3, "t_end": 0.75}`` for ``gse``.
    epochs, batch_size, lr, momentum, weight_decay : training hyperparameters.
    decay : {"coupled", "decoupled"}
        PyTorch-style L2 through the gradient, or the reference code's per-step shrink.
    lr_schedule : {"constant", "step", "cosine", "linear"}; warmup_epochs : float
    zeta : float
        SET's fraction of each sign removed per update.
    evolve_every : int, optional
        Evolve every this many steps instead of once per epoch.
    prune_start, prune_every, prune_percentile
        Importance pruning: at epoch ``prune_start`` (1-based) and every ``prune_every``
        epochs after, hidden neurons at or below the percentile are removed; None disables.
    seed : int
        Seeds the initial topology, the data order, dropout and regrowth.  The same seed on the
        same backend gives the same result, whatever the thread count.
    callbacks : sequence of callables
        ``cb(record, model)`` after every epoch; returning True stops training.
    run_dir : path, optional
        Where ``checkpoint.npz`` (atomically) and ``history.json``/``history.csv`` are written
        after every epoch.
    resume : bool
        Continue from ``run_dir/checkpoint.npz``; the continued run matches an uninterrupted
        one exactly.
    progress : bool
        Show a tqdm progress bar over the steps of each epoch.
    log : callable, optional
        Receives one summary line per epoch; the same line is logged at INFO level on the
        ``logging.getLogger("sparsekit")`` logger.
    parallel : {None, "wasap"}
        ``"wasap"``: multi-process WASAP-SGD over MPI; start the script under ``mpiexec`` (see
        :func:`sparsekit.parallel.train_wasap`).
    wasap_mode : {"sync", "async"}; phase1_fraction : float
        WASAP's phase-1 scheme (allreduce, or a parameter server on rank 0) and the fraction of
        the epochs it lasts before local training.
    gpu_memory_limit : int or str, optional
        GPU backend only: cap CuPy's memory pool (bytes, ``"4GiB"``, ``"80%"``).  With or
        without it, a run whose estimated peak does not fit is refused before anything is
        allocated (see :mod:`sparsekit._cuda.memory`).
    memory_limit : int or str, optional
        Host memory the run may use (bytes, ``"16GiB"``, ``"80%"`` of physical memory); default
        the machine's available memory.  A run whose estimated peak
        (:func:`sparsekit.estimate_memory`) does not fit is refused before the model is built.

    Returns
    -------
    TrainResult
    """
    if parallel is not None:
        options = dict(locals())  # exactly the arguments of this call
        from ..parallel import train_parallel

        return train_parallel(options.pop("parallel"), options.pop("model"),
                              options.pop("data"), **options)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    x_tr, y_tr, x_te, y_te = _split_data(data)
    run_dir = Path(run_dir) if run_dir is not None else None
    seq = np.random.SeedSequence(seed)
    init_seed, train_seed = seq.spawn(2)
    history: list[dict] = []
    start_epoch, step = 0, 0
    rng = np.random.default_rng(train_seed)
    check_memory(model, backend, memory_limit, gpu_memory_limit=gpu_memory_limit,
                 epsilon=epsilon, batch_size=batch_size, eval_batch_size=eval_batch_size,
                 method=method, dtype=dtype, evolve_output=evolve_output,
                 evolve_every=evolve_every, gamma=(method_params or {}).get("gamma", 1.0),
                 n_train=len(x_tr), n_test=0 if x_te is None else len(x_te))
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs run_dir")
        ckpt = load_checkpoint(run_dir / CHECKPOINT, backend=backend)
        model, state = ckpt.model, ckpt.train_state
        history, start_epoch, step = state["history"], state["epoch"], state["step"]
        rng.bit_generator.state = state["rng"]
    elif not isinstance(model, SparseMLP):
        model = SparseMLP(model, epsilon=epsilon, activation=activation, alpha=alpha,
                          dropout=dropout, init=init, fan_in=fan_in, backend=backend,
                          dtype=dtype, seed=init_seed)
    n_classes = model.layer_sizes[-1]
    x_tr, y_tr = check_xy(x_tr, y_tr, model.layer_sizes[0], n_classes,
                          names=("x_train", "y_train"))
    if x_te is not None:
        x_te, y_te = check_xy(x_te, y_te, model.layer_sizes[0], n_classes,
                              names=("x_test", "y_test"))
    n = x_tr.shape[0]
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples")
    be, xp = model.backend, model.backend.xp
    params = dict(method_params or {})
    if method == "set":
        # Regrown links take the initial distribution at the paper's dense fan-in scale even
        # when the initial weights use the actual one: scaled by a neuron's ~epsilon inputs
        # they are ~5x a trained weight, and replacing 30 % of the links with such values each
        # epoch made training diverge (benchmarks/results/train-cpu.md).
        params = {"zeta": zeta, "every_steps": evolve_every, "evolve_output": evolve_output,
                  "init": init, "fan_in": "dense", **params}
    elif method in ("gse", "topkast", "rigl"):  # the shared update schedule
        params = {"every_steps": evolve_every, "evolve_output": evolve_output, **params}
    growth = get_method(method, **params)
    opt = MomentumSGD(lr, momentum, weight_decay, decay)
    schedule = LRSchedule(lr_schedule, epochs=epochs, warmup_epochs=warmup_epochs)
    pruning = (PruningSchedule(prune_start, prune_every, prune_percentile)
               if prune_start is not None else None)
    x_host = np.ascontiguousarray(x_tr, dtype=model.dtype)
    steps_per_epoch = n // batch_size
    growth.setup(model, steps_per_epoch, epochs, rng)  # the run's length; method state
    n_hidden = len(model.layers) - 1
    flops = FlopCounter(batch_size)  # the energy proxy in every history record
    bar = None
    for epoch in range(start_epoch, epochs):
        perm = rng.permutation(n)
        t0 = time.perf_counter()
        loss_sum, correct = 0.0, xp.zeros((), dtype=xp.int64)
        if progress:
            from .._compat import tqdm

            bar = tqdm.tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                            leave=False, disable=tqdm is None)
        grow_stats: dict = {}
        flops.reset()
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = be.asarray(feature_major_batch(x_host, idx, model.dtype))
            yb = be.asarray(y_tr[idx])
            seeds = rng.integers(0, 2**63, size=n_hidden)
            logits, acts, derivs = model.forward_train(xb, seeds)
            loss, probs, dlogits = softmax_cross_entropy(xp, logits, yb, as_float=False)
            grads = model.backward(acts, derivs, dlogits)
            cur_lr = schedule(lr, epoch + s / steps_per_epoch)
            for layer, (gw, gb) in zip(model.layers, grads):
                opt.update(layer.w.data, gw, layer.vel_w, cur_lr)
                opt.update(layer.b, gb, layer.vel_b, cur_lr)
            loss_sum += loss
            correct += (probs.argmax(axis=0) == yb).sum()
            del grads  # free before a topology update, and before the next step's forward
            flops.step(model)
            stats = growth.after_step(model, step, epoch, rng, (acts, derivs, dlogits))
            del logits, acts, derivs, probs, dlogits
            if stats:
                grow_stats = stats
                flops.update(model, growth, stats)
            step += 1
            if bar is not None:
                bar.update()
        be.synchronize()
        t_train = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        loss_avg = float(loss_sum) / steps_per_epoch
        if not np.isfinite(loss_avg):
            raise FloatingPointError(
                f"training loss became {loss_avg} in epoch {epoch + 1}; lower lr (now {lr})")
        t0 = time.perf_counter()
        pruned = None
        if pruning is not None and pruning.due(epoch + 1) and epoch < epochs - 1:
            pruned = prune_neurons(model, pruning.percentile, pruning.min_neurons)
        stats = growth.end_of_epoch(model, epoch, epochs, rng)
        if stats:
            grow_stats = stats
            flops.update(model, growth, stats)
        be.synchronize()
        t_evolve = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "train_loss": loss_avg,
                  "train_acc": float(correct) / (steps_per_epoch * batch_size),
                  "lr": schedule(lr, epoch + 1), "time_train": t_train, "time_evolve": t_evolve,
                  "connections": model.n_connections, "neurons": model.layer_sizes,
                  "pruned": pruned, **flops.record(),
                  **{f"growth_{k}": v for k, v in grow_stats.items()}}
        t0 = time.perf_counter()
        if x_te is not None:
            record["test_loss"], record["test_acc"] = model.evaluate(x_te, y_te, eval_batch_size)
        record["time_eval"] = time.perf_counter() - t0
        history.append(record)
        if run_dir is not None:
            state = {"epoch": epoch + 1, "step": step, "rng": rng.bit_generator.state,
                     "history": history, "method": getattr(growth, "name", str(method)),
                     "method_params": growth.params(), "seed": seed}
            save_checkpoint(run_dir / CHECKPOINT, model, state)
            write_history(run_dir, history)
        line = format_record(record)
        logger.info(line)  # the "sparsekit" logger (the CLI prints it); log= still gets it too
        if log is not None:
            log(line)
        if any(cb(record, model) for cb in callbacks):
            break
    return TrainResult(model, history, run_dir)


def format_record(r: dict) -> str:
    """One summary line for an epoch record."""
    test = (f" test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%"
            if "test_acc" in r else "")
    return (f"epoch {r['epoch']:>3}  train loss {r['train_loss']:.4f} acc "
            f"{100 * r['train_acc']:.2f}%{test}  [{r['time_train']:.2f}s train, "
            f"{r['time_evolve']:.2f}s evolve, {r['time_eval']:.2f}s eval]  "
            f"connections {sum(r['connections'])}  neurons {r['neurons'][1:-1]}")


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.json`` and a flat ``history.csv`` (list fields become ``name_i`` columns)."""
    run_dir = Path(run_dir)
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    flat = []
    for record in history:
        row: dict = {}
        for key, value in record.items():
            if isinstance(value, list):
                row.update({f"{key}_{i}": v for i, v in enumerate(value)})
            else:
                row[key] = value
        flat.append(row)
    keys = list(dict.fromkeys(k for row in flat for k in row))
    with open(run_dir / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)
