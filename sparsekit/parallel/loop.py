"""One rank's share of WASAP-SGD: its state, its epochs, and the per-epoch bookkeeping.

Every rank trains with the engine's step (:class:`sparsekit.training.step.Engine`), as
``train()`` does; synchronous phase 1 only adds a ``grad_hook``: one ``Allreduce`` of the
gradient values between backward and update.  The gradient buffer holds, layer after layer, the
weight-gradient values (aligned with the CSR ``data``, so no index is ever sent) and the bias
gradient: exactly ``connections + biases`` numbers.  Ranks draw data order, dropout seeds and
topology changes from one shared generator, so their topologies evolve identically; dropout
seeds are offset by the rank so that ranks do not share masks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.checkpoint import save_checkpoint
from ..nn.model import SparseMLP
from ..training.config import TrainConfig
from ..training.history import CHECKPOINT, format_record, write_history
from ..training.step import Engine
from .comm import Comm
from .transfer import recv_model, send_model

TAG_RNG = 41
WORKER_DIR = "wasap-workers"
# Per-rank epoch statistics gathered on rank 0 (one float64 row per rank).
STATS = ("worker", "samples", "steps", "loss_sum", "correct", "time_train", "time_comm", "bytes",
         "test_loss", "test_acc", "time_evolve", "time_eval", "flops", "flops_dense",
         "flops_topology")


@dataclass
class Run:
    """Everything a rank needs to train; the same fields on every rank unless noted.

    The model, generator, optimizer, growth method and step/epoch counters are the
    :class:`~sparsekit.training.step.Engine`'s (``run.model`` and ``run.rng`` are its).
    """

    comm: Comm
    mode: str
    engine: Engine
    config: TrainConfig
    x: np.ndarray
    y: np.ndarray
    x_te: np.ndarray | None
    y_te: np.ndarray | None
    shard: np.ndarray          # this rank's training rows (empty on the async server)
    phase1_epochs: int
    scale_warmup_epochs: float = 5.0
    run_dir: Path | None = None
    checkpointing: bool = False
    callbacks: tuple = ()
    log: object = None
    history: list = field(default_factory=list)
    budgets: list | None = None  # per-layer connections at the end of phase 1
    version: int = 0           # async: topology version of the server model
    server_step: int = 0       # async: updates applied by the server
    stopped: bool = False
    stage: str = "fresh"       # "fresh", "phase1", "phase2" (models diverged) or "final"

    @property
    def model(self) -> SparseMLP:
        return self.engine.model

    @model.setter
    def model(self, model: SparseMLP) -> None:
        self.engine.model = model
        self.engine.optimizer.attach(model)  # a model that came without state gets zeros

    @property
    def rng(self) -> np.random.Generator:
        return self.engine.rng  # shared in sync phase 1, this rank's own afterwards

    @rng.setter
    def rng(self, rng: np.random.Generator) -> None:
        self.engine.rng = rng

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def epochs(self) -> int:
        return self.config.epochs

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
        if self.mode != "sync" or not self.config.lr_scaling or size == 1:
            return 1.0
        ramp = min(epoch / self.scale_warmup_epochs, 1.0) if self.scale_warmup_epochs else 1.0
        return 1.0 + (size - 1) * ramp


# --- the step's extra: moving gradients ---------------------------------------------------
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


def train_epoch(run: Run, allreduce: bool) -> dict:
    """One pass over this rank's shard (the engine's epoch); ``allreduce`` averages the
    gradients over all ranks before each update and scales the learning rate."""
    comm, model, engine = run.comm, run.model, run.engine
    xp = model.backend.xp
    bytes0, comm0 = comm.bytes_sent, comm.time_comm
    buf = None

    def average(grads):
        nonlocal buf
        buf = pack(xp, grads, buf)
        comm.allreduce(buf, what="gradient allreduce")
        if comm.size > 1:
            buf /= buf.dtype.type(comm.size)
        return unpack(buf, engine.model)

    fit = engine.train_epoch(run.x, run.y, run.shard, rank=comm.rank,
                             grad_hook=average if allreduce else None,
                             lr_scale=run.lr_scale if allreduce else None,
                             progress=run.config.progress and comm.rank == 0)
    return {**fit, "time_comm": comm.time_comm - comm0, "bytes": comm.bytes_sent - bytes0}


def evolve(run: Run, phase: int) -> dict:
    """End-of-epoch topology work (the engine's); importance pruning only in phase 1 (see
    the wasap docs)."""
    return run.engine.end_epoch(prune=phase == 1)


def fingerprint(model: SparseMLP) -> tuple[int, int]:
    """Cheap 63-bit hashes of the topology and of the values (host copies, O(nnz))."""
    import hashlib

    be = model.backend
    topo, vals = hashlib.blake2b(digest_size=8), hashlib.blake2b(digest_size=8)
    for layer in model.layers:
        topo.update(be.to_numpy(layer.w.indptr).tobytes())
        topo.update(be.to_numpy(layer.w.indices).tobytes())
        for arr in (layer.w.data, layer.b, *layer.state_w.values(), *layer.state_b.values()):
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
            f"method {run.engine.growth.name!r} must evolve from the weights and the shared "
            "seed only")
    if lo[1] == hi[1]:
        return False
    for layer in run.model.layers:
        for arr in (layer.w.data, layer.b, *layer.state_w.values(), *layer.state_b.values()):
            comm.bcast(arr, 0, "value re-synchronisation")
    return True


# --- evaluation, records, checkpoints ------------------------------------------------------
def evaluate_shared(run: Run) -> tuple[float, float]:
    """Test loss and accuracy of a model all ranks share, each rank scoring a slice."""
    comm, n = run.comm, run.y_te.shape[0]
    if comm.size == 1:
        return run.model.evaluate(run.x_te, run.y_te, run.config.eval_batch_size)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    part = np.zeros(2)
    if hi > lo:
        loss, acc = run.model.evaluate(run.x_te[lo:hi], run.y_te[lo:hi],
                                       run.config.eval_batch_size)
        part[:] = loss * (hi - lo) / n, acc * (hi - lo) / n
    comm.allreduce(part, what="evaluation")
    return float(part[0]), float(part[1])


def stats_row(run: Run, train: dict, evo: dict, test: tuple[float, float], t_eval: float):
    # The engine's counter covers the epoch's steps and its topology updates (end included).
    flops = run.engine.flops.record() if run.is_worker else dict.fromkeys(STATS[-3:], 0)
    return np.array([run.is_worker, train["samples"], train["steps"], train["loss_sum"],
                     train["correct"], train["time_train"], train["time_comm"], train["bytes"],
                     test[0], test[1], evo["time_evolve"], t_eval, flops["flops"],
                     flops["flops_dense"], flops["flops_topology"]], np.float64)


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
    # in async mode rank 0 is the server: its figure is the workers' samples applied
    total = sum(sps[1:] if record["mode"] == "async" else sps)
    run.log(f"{format_record(record)}  | phase {record['phase']} {record['mode']}: "
            f"{total:.0f} samples/s ({' '.join(f'{s:.0f}' for s in sps)}), "
            f"comm {max(record['time_comm']):.2f}s vs compute "
            f"{max(record['time_compute']):.2f}s, {max(record['bytes_per_step']) / 1e3:.1f} "
            f"kB sent/step")


def wasap_state(run: Run, stage: str, workers: str | None = None) -> dict:
    return {**run.engine.state_dict(), "history": run.history, "seed": run.config.seed,
            "config": run.config.to_dict(),
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
    folder = f"{WORKER_DIR}/epoch-{run.engine.epoch:04d}" if stage == "phase2" else None
    if stage == "phase2":
        others = [r for r in run.workers if r != 0]
        if comm.rank == 0:
            for r in others:
                model = recv_model(comm, r, run.model.backend)
                meta = comm.recv_json(r, TAG_RNG, "worker state")
                save_checkpoint(run.run_dir / folder / f"rank-{r}.npz", model, meta)
        elif comm.rank in others:
            send_model(comm, run.model, 0)
            comm.send_json(run.engine.state_dict(), 0, TAG_RNG, "worker state")
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
    t0 = time.perf_counter()
    test = (np.nan, np.nan)
    if run.x_te is not None:
        if shared_model:
            test = evaluate_shared(run)
        elif run.is_worker:
            test = run.model.evaluate(run.x_te, run.y_te, run.config.eval_batch_size)
    table = comm.gather(stats_row(run, train, evo, test, time.perf_counter() - t0),
                        what="epoch statistics")
    run.engine.epoch = epoch + 1  # also on ranks that did not train (the async server)
    stop = np.zeros(1, np.int64)
    if comm.rank == 0:
        work = table[:, 0] > 0
        lr = run.engine.lr_at(epoch + 1) * (run.lr_scale(epoch + 1) if phase == 1 else 1.0)
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
