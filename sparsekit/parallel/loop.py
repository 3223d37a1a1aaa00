"""One rank's share of WASAP-SGD: its state, its epochs, and the per-epoch bookkeeping.

The step is the single-process trainer's step (:func:`sparsekit.training.loop.train`) with, in
synchronous phase 1, one ``Allreduce`` of the gradient values between backward and update.  The
gradient buffer holds, layer after layer, the weight-gradient values (aligned with the CSR
``data``, so no index is ever sent) and the bias gradient: exactly ``connections + biases``
numbers.  Ranks draw data order, dropout seeds and topology changes from one shared generator,
so their topologies evolve identically; dropout seeds are offset by the rank so that ranks do
not share masks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import save_checkpoint
from ..nn.activations import softmax_cross_entropy
from ..nn.model import SparseMLP
from ..training.flops import FlopCounter, update_flops
from ..training.loop import CHECKPOINT, format_record, write_history
from ..training.pruning import prune_neurons
from .comm import Comm
from .transfer import recv_model, rng_to_json, send_model

_GOLDEN = 0x9E3779B97F4A7C15
TAG_RNG = 41
WORKER_DIR = "wasap-workers"
# Per-rank epoch statistics gathered on rank 0 (one float64 row per rank).
STATS = ("worker", "samples", "steps", "loss_sum", "correct", "time_train", "time_comm", "bytes",
         "test_loss", "test_acc", "time_evolve", "time_eval", "flops", "flops_dense",
         "flops_topology")


@dataclass
class Run:
    """Everything a rank needs to train; the same fields on every rank unless noted."""

    comm: Comm
    mode: str
    model: SparseMLP
    x: np.ndarray
    y: np.ndarray
    x_te: np.ndarray | None
    y_te: np.ndarray | None
    shard: np.ndarray          # this rank's training rows (empty on the async server)
    batch_size: int
    epochs: int
    phase1_epochs: int
    lr: float
    schedule: Any
    opt: Any
    growth: Any
    pruning: Any
    rng: np.random.Generator   # shared in sync phase 1, this rank's own afterwards
    seed: int
    method: str
    lr_scaling: bool = True
    scale_warmup_epochs: float = 5.0
    max_staleness: int | None = None
    run_dir: Path | None = None
    checkpointing: bool = False
    callbacks: tuple = ()
    log: Any = None
    progress: bool = False
    eval_batch_size: int = 4096
    step: int = 0
    epoch: int = 0             # epochs completed
    history: list = field(default_factory=list)
    budgets: list | None = None  # per-layer connections at the end of phase 1
    version: int = 0           # async: topology version of the server model
    server_step: int = 0       # async: updates applied by the server
    stopped: bool = False
    stage: str = "fresh"       # "fresh", "phase1", "phase2" (models diverged) or "final"

    @property
    def is_worker(self) -> bool:
        return self.mode == "sync" or self.comm.rank > 0

    @property
    def workers(self) -> list[int]:
        return list(range(self.comm.size)) if self.mode == "sync" else list(
            range(1, self.comm.size))

    def lr_scale(self, epoch: float) -> float:
        """Linear scaling of the sync learning rate: 1 -> N ranks over the warm-up epochs."""
        size = self.comm.size
        if self.mode != "sync" or not self.lr_scaling or size == 1:
            return 1.0
        ramp = min(epoch / self.scale_warmup_epochs, 1.0) if self.scale_warmup_epochs else 1.0
        return 1.0 + (size - 1) * ramp


# --- the step ------------------------------------------------------------------------------
def rank_seeds(seeds, rank: int) -> list[int]:
    """Dropout seeds of this rank: the shared draw offset by the rank (rank 0: unchanged)."""
    return [(int(s) + rank * _GOLDEN) % 2**63 for s in seeds]


def batch_grads(run: Run, idx, seeds):
    """Forward and backward on rows ``idx``: ``(loss, correct, grads, cache)``."""
    model, be = run.model, run.model.backend
    xb = be.asarray(np.ascontiguousarray(run.x[idx].T))
    yb = be.asarray(run.y[idx])
    logits, acts, derivs = model.forward_train(xb, seeds)
    loss, probs, dlogits = softmax_cross_entropy(be.xp, logits, yb, as_float=False)
    grads = model.backward(acts, derivs, dlogits)
    return loss, (probs.argmax(axis=0) == yb).sum(), grads, (acts, derivs, dlogits)


def pack(xp, pairs, out=None):
    """Concatenate ``[(a_0, b_0), (a_1, b_1), ...]`` into one flat buffer (reusing ``out``)."""
    n = sum(a.shape[0] + b.shape[0] for a, b in pairs)
    if out is None or out.shape[0] != n:
        out = xp.empty(n, dtype=pairs[0][0].dtype)
    o = 0
    for a, b in pairs:
        for part in (a, b):
            out[o:o + part.shape[0]] = part
            o += part.shape[0]
    return out


def unpack(flat, model: SparseMLP) -> list:
    """Views ``[(values_0, bias_0), ...]`` of a flat buffer laid out like :func:`pack`."""
    out, o = [], 0
    for layer in model.layers:
        nnz, n_out = layer.nnz, layer.out_features
        out.append((flat[o:o + nnz], flat[o + nnz:o + nnz + n_out]))
        o += nnz + n_out
    return out


def apply_update(run: Run, grads, lr: float) -> None:
    for layer, (gw, gb) in zip(run.model.layers, grads):
        run.opt.update(layer.w.data, gw, layer.vel_w, lr)
        run.opt.update(layer.b, gb, layer.vel_b, lr)


def train_epoch(run: Run, epoch: int, allreduce: bool) -> dict:
    """One pass over this rank's shard; ``allreduce`` averages gradients over all ranks."""
    comm, model, be = run.comm, run.model, run.model.backend
    xp, bs = be.xp, run.batch_size
    m = run.shard.shape[0]
    steps = m // bs
    n_hidden = len(model.layers) - 1
    perm = run.rng.permutation(m)
    bytes0, comm0, t0 = comm.bytes_sent, comm.time_comm, time.perf_counter()
    loss_sum, correct = 0.0, xp.zeros((), dtype=xp.int64)
    bar, grow_stats, buf = None, {}, None
    flops = FlopCounter(bs)  # this rank's share of the energy proxy
    if run.progress and comm.rank == 0:
        from .._compat import tqdm

        bar = tqdm.tqdm(total=steps, desc=f"epoch {epoch + 1}/{run.epochs}", leave=False,
                        disable=tqdm is None)
    for s in range(steps):
        idx = run.shard[perm[s * bs:(s + 1) * bs]]
        seeds = rank_seeds(run.rng.integers(0, 2**63, size=n_hidden), comm.rank)
        loss, n_right, grads, cache = batch_grads(run, idx, seeds)
        frac = epoch + s / steps
        lr = run.schedule(run.lr, frac)
        if allreduce:
            buf = pack(xp, grads, buf)
            comm.allreduce(buf, what="gradient allreduce")
            if comm.size > 1:
                buf /= buf.dtype.type(comm.size)
            grads = unpack(buf, model)
            lr *= run.lr_scale(frac)
        apply_update(run, grads, lr)
        flops.step(model)
        loss_sum += loss
        correct += n_right
        stats = run.growth.after_step(model, run.step, epoch, run.rng, cache)
        if stats:
            grow_stats = stats
            flops.update(model, run.growth, stats)
        run.step += 1
        if bar is not None:
            bar.update()
    be.synchronize()
    if bar is not None:
        bar.close()
    return {"samples": steps * bs, "steps": steps, "loss_sum": float(loss_sum),
            "correct": float(correct), "time_train": time.perf_counter() - t0,
            "time_comm": comm.time_comm - comm0, "bytes": comm.bytes_sent - bytes0,
            "grow": grow_stats, **flops.record()}


def evolve(run: Run, epoch: int, phase: int) -> dict:
    """End-of-epoch topology work; importance pruning only in phase 1 (see wasap docs)."""
    t0 = time.perf_counter()
    pruned, stats = None, {}
    if (phase == 1 and run.pruning is not None and run.pruning.due(epoch + 1)
            and epoch < run.epochs - 1):
        pruned = prune_neurons(run.model, run.pruning.percentile, run.pruning.min_neurons)
    grown = run.growth.end_of_epoch(run.model, epoch, run.epochs, run.rng)
    topology = 0
    if grown:
        stats = grown
        topology = update_flops(run.model, run.growth, grown, run.batch_size)
    run.model.backend.synchronize()
    return {"pruned": pruned, "grow": stats, "time_evolve": time.perf_counter() - t0,
            "flops_topology": topology}


def fingerprint(model: SparseMLP) -> tuple[int, int]:
    """Cheap 63-bit hashes of the topology and of the values (host copies, O(nnz))."""
    import hashlib

    be = model.backend
    topo, vals = hashlib.blake2b(digest_size=8), hashlib.blake2b(digest_size=8)
    for layer in model.layers:
        topo.update(be.to_numpy(layer.w.indptr).tobytes())
        topo.update(be.to_numpy(layer.w.indices).tobytes())
        for arr in (layer.w.data, layer.b, layer.vel_w, layer.vel_b):
            vals.update(be.to_numpy(arr).tobytes())
    return (int.from_bytes(topo.digest(), "little") >> 1,
            int.from_bytes(vals.digest(), "little") >> 1)


def check_consistent(run: Run, epoch: int) -> bool:
    """Sync phase 1: verify every rank holds rank 0's model; repair value drift.

    Returns True when values had drifted (an MPI whose allreduce is not bitwise identical on
    every rank) and were re-broadcast from rank 0.  Diverged topologies raise: the growth
    method must be a function of the weights and the shared generator only.
    """
    comm = run.comm
    if comm.size == 1:
        return False
    mine = np.array(fingerprint(run.model), np.int64)
    lo, hi = comm.allreduce(mine.copy(), comm.MPI.MIN), comm.allreduce(mine.copy(), comm.MPI.MAX)
    if lo[0] != hi[0]:
        raise RuntimeError(
            f"rank {comm.rank}: topologies diverged across ranks after epoch {epoch + 1}; "
            f"method {run.method!r} must evolve from the weights and the shared seed only")
    if lo[1] == hi[1]:
        return False
    for layer in run.model.layers:
        for arr in (layer.w.data, layer.b, layer.vel_w, layer.vel_b):
            comm.bcast(arr, 0, "value re-synchronisation")
    return True


# --- evaluation, records, checkpoints ------------------------------------------------------
def evaluate_shared(run: Run) -> tuple[float, float]:
    """Test loss and accuracy of a model all ranks share, each rank scoring a slice."""
    comm, n = run.comm, run.y_te.shape[0]
    if comm.size == 1:
        return run.model.evaluate(run.x_te, run.y_te, run.eval_batch_size)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    part = np.zeros(2)
    if hi > lo:
        loss, acc = run.model.evaluate(run.x_te[lo:hi], run.y_te[lo:hi], run.eval_batch_size)
        part[:] = loss * (hi - lo) / n, acc * (hi - lo) / n
    comm.allreduce(part, what="evaluation")
    return float(part[0]), float(part[1])


def stats_row(run: Run, train: dict, evo: dict, test: tuple[float, float], t_eval: float):
    return np.array([run.is_worker, train["samples"], train["steps"], train["loss_sum"],
                     train["correct"], train["time_train"], train["time_comm"], train["bytes"],
                     test[0], test[1], evo["time_evolve"], t_eval,
                     train.get("flops", 0) + evo.get("flops_topology", 0),
                     train.get("flops_dense", 0),
                     train.get("flops_topology", 0) + evo.get("flops_topology", 0)], np.float64)


def make_record(run: Run, epoch: int, phase: int, table: np.ndarray, *, lr: float, evo: dict,
                grow: dict, test: tuple[float, float] | None, extra: dict | None = None) -> dict:
    """The epoch's history record: the single-process fields plus per-rank WASAP fields."""
    col = {k: table[:, i] for i, k in enumerate(STATS)}
    work = col["worker"] > 0
    steps = max(col["steps"][work].sum(), 1)
    samples = max(col["samples"][work].sum(), 1)
    t_train = col["time_train"]
    record = {"epoch": epoch + 1, "train_loss": float(col["loss_sum"][work].sum() / steps),
              "train_acc": float(col["correct"][work].sum() / samples), "lr": lr,
              "time_train": float(t_train.max()), "time_evolve": evo["time_evolve"],
              "connections": run.model.n_connections, "neurons": run.model.layer_sizes,
              "pruned": evo["pruned"], **{f"growth_{k}": v for k, v in grow.items()}}
    if test is not None:
        record["test_loss"], record["test_acc"] = test
    record["time_eval"] = float(col["time_eval"].max())
    record.update({
        "phase": phase, "mode": run.mode, "ranks": run.comm.size,
        "samples_per_s": [float(s / t) if t > 0 else 0.0 for s, t in zip(col["samples"], t_train)],
        "bytes_per_step": [float(b / s) if s else 0.0 for b, s in zip(col["bytes"], col["steps"])],
        "time_comm": [float(t) for t in col["time_comm"]],
        "time_compute": [float(t - c) for t, c in zip(t_train, col["time_comm"])],
        # Summed over ranks: the work the whole job did (float64 holds these exactly < 2**53).
        "flops": int(col["flops"].sum()), "flops_dense": int(col["flops_dense"].sum()),
        "flops_topology": int(col["flops_topology"].sum())})
    if extra:
        record.update(extra)
    return record


def log_record(run: Run, record: dict) -> None:
    if run.log is None:
        return
    sps = record["samples_per_s"]
    run.log(f"{format_record(record)}  | phase {record['phase']} {record['mode']}: "
            f"{sum(sps):.0f} samples/s ({' '.join(f'{s:.0f}' for s in sps)}), "
            f"comm {max(record['time_comm']):.2f}s vs compute "
            f"{max(record['time_compute']):.2f}s, {max(record['bytes_per_step']) / 1e3:.1f} "
            f"kB sent/step")


def wasap_state(run: Run, stage: str, workers: str | None = None) -> dict:
    return {"epoch": run.epoch, "step": run.step, "rng": rng_to_json(run.rng),
            "history": run.history, "method": getattr(run.growth, "name", run.method),
            "method_params": run.growth.params(), "seed": run.seed,
            "wasap": {"mode": run.mode, "world_size": run.comm.size, "stage": stage,
                      "phase1_epochs": run.phase1_epochs, "budgets": run.budgets,
                      "version": run.version, "server_step": run.server_step,
                      "workers": workers}}


def checkpoint(run: Run, stage: str) -> None:
    """Rank 0 writes the run folder; in phase 2 it first collects every worker's model.

    Phase-2 worker models go to ``wasap-workers/epoch-NNNN/rank-R.npz`` (with each rank's RNG
    state and step), then ``checkpoint.npz`` names that folder, then older folders are removed:
    a kill at any moment leaves a consistent set.  Collective in phase 2.
    """
    comm = run.comm
    if not run.checkpointing:
        return
    folder = f"{WORKER_DIR}/epoch-{run.epoch:04d}" if stage == "phase2" else None
    if stage == "phase2":
        others = [r for r in run.workers if r != 0]
        if comm.rank == 0:
            for r in others:
                model = recv_model(comm, r, run.model.backend)
                meta = comm.recv_json(r, TAG_RNG, "worker state")
                save_checkpoint(run.run_dir / folder / f"rank-{r}.npz", model, meta)
        elif comm.rank in others:
            send_model(comm, run.model, 0)
            comm.send_json({"rng": rng_to_json(run.rng), "step": run.step}, 0, TAG_RNG,
                           "worker state")
    if comm.rank != 0:
        return
    save_checkpoint(run.run_dir / CHECKPOINT, run.model, wasap_state(run, stage, folder))
    write_history(run.run_dir, run.history)
    root = run.run_dir / WORKER_DIR
    if root.exists():
        for old in root.iterdir():
            if folder is None or old.name != Path(folder).name:
                shutil.rmtree(old, ignore_errors=True)


def finish_epoch(run: Run, epoch: int, phase: int, train: dict, evo: dict,
                 shared_model: bool, extra: dict | None = None) -> bool:
    """Evaluate, gather statistics, record, checkpoint, log and run callbacks (collective).

    Returns True when a callback asked to stop (rank 0 decides, every rank learns it).
    """
    comm = run.comm
    if not np.isfinite(train["loss_sum"]):
        raise FloatingPointError(f"rank {comm.rank}: training loss became "
                                 f"{train['loss_sum']} in epoch {epoch + 1}; lower lr ({run.lr})")
    t0 = time.perf_counter()
    test = (np.nan, np.nan)
    if run.x_te is not None:
        if shared_model:
            test = evaluate_shared(run)
        elif run.is_worker:
            test = run.model.evaluate(run.x_te, run.y_te, run.eval_batch_size)
    table = comm.gather(stats_row(run, train, evo, test, time.perf_counter() - t0),
                        what="epoch statistics")
    run.epoch = epoch + 1
    stop = np.zeros(1, np.int64)
    if comm.rank == 0:
        work = table[:, 0] > 0
        lr = run.schedule(run.lr, epoch + 1) * (run.lr_scale(epoch + 1) if phase == 1 else 1.0)
        tests = table[work, 8:10]
        summary = None if run.x_te is None else (
            tuple(float(v) for v in tests[0]) if shared_model
            else (float(tests[:, 0].sum() / len(tests)), float(tests[:, 1].sum() / len(tests))))
        extra = dict(extra or {})
        if not shared_model and run.x_te is not None:
            extra["test_acc_workers"] = [float(v) for v in tests[:, 1]]
        record = make_record(run, epoch, phase, table, lr=lr, evo=evo,
                             grow=evo["grow"] or train["grow"], test=summary, extra=extra)
        run.history.append(record)
    checkpoint(run, "phase1" if phase == 1 else "phase2")
    if comm.rank == 0:
        log_record(run, record)
        stop[0] = any(cb(record, run.model) for cb in run.callbacks)
    comm.bcast(stop, 0, "stop flag")
    return bool(stop[0])
