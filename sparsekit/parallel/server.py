"""Asynchronous WASAP-SGD phase 1: rank 0 is a parameter server, ranks 1..N-1 push gradients.

Protocol (all messages typed buffers; ``L`` layers):

* **push** (worker -> 0): ``TAG_PUSH`` float64 header ``[version, pulled_at, samples, loss,
  correct, cumulative samples / seconds / comm seconds / bytes / steps]``, then ``TAG_GRAD``:
  the gradient values of the worker's topology version plus bias gradients (:func:`pack`).
* **reply** (0 -> worker): ``TAG_REPLY`` float64 ``[flag, server_step, version, nnz_0..]``; then,
  only when the worker's version differs from the server's, ``TAG_INDEX`` (every layer's
  ``indptr`` and ``indices``), then ``TAG_VALUES`` (weights and biases).  Flag ``SWITCH`` (phase 1
  is over) carries nothing more.

Staleness.  A gradient computed on weights of server step ``pulled_at`` and applied at step
``t`` has staleness ``s = t - pulled_at``.  With ``W`` workers taking turns, ``s ≈ W - 1`` is the
normal case; beyond that the learning rate is damped by ``W / (s + 1)``, and a gradient older
than ``max_staleness`` (default ``8 W``) steps is dropped (counted in the history).

Outdated topology.  The server evolves its topology once per server epoch and bumps its
version.  A push whose version is not current is not applied; the reply is flagged ``STALE`` and
carries the current topology and values, which the worker must receive anyway.  The worker then
filters its gradient to that topology with the indices it just received
(:func:`~sparsekit.parallel.average.remap_values`: entries of removed connections are dropped,
new connections get 0) and pushes it again, keeping its original ``pulled_at``.  The server
therefore never stores old topologies, and each evolution costs each worker one extra round trip.
"""

from __future__ import annotations

import time

import numpy as np

from ..nn.csr import CSR
from ..training.flops import step_flops
from ..training.step import rank_seeds
from .average import remap_values
from .loop import STATS, Run, checkpoint, evolve, log_record, make_record, pack, unpack

FLAG_OK, FLAG_STALE, FLAG_SWITCH = 0, 1, 2
TAG_PUSH, TAG_GRAD, TAG_REPLY, TAG_INDEX, TAG_VALUES = 11, 12, 13, 14, 15
HEADER = 10


def index_dtype(model) -> np.dtype:
    return np.result_type(*[layer.w.indices.dtype for layer in model.layers])


def topology_buffer(model):
    xp, idt = model.backend.xp, index_dtype(model)
    return xp.concatenate([a.astype(idt, copy=False) for layer in model.layers
                           for a in (layer.w.indptr, layer.w.indices)])


def install(model, values, nnz, index=None) -> None:
    """Load server values (and, when ``index`` is given, its topology) into a replica."""
    be = model.backend
    xp = be.xp
    if index is not None:
        index, o = be.asarray(index), 0
        for layer, k in zip(model.layers, nnz):
            n_out, n_in = layer.w.shape
            indptr = index[o:o + n_out + 1].astype(layer.w.indices.dtype)
            indices = index[o + n_out + 1:o + n_out + 1 + k].astype(layer.w.indices.dtype)
            o += n_out + 1 + k
            w = CSR(xp.ascontiguousarray(indptr), xp.ascontiguousarray(indices),
                    xp.zeros(k, dtype=layer.w.dtype), (n_out, n_in), check=False)
            layer.set_topology(w)  # optimizer state, if any, starts at 0
    for layer, (v, b) in zip(model.layers, unpack(be.asarray(values), model)):
        layer.w.data[...] = v
        layer.b[...] = b


def _topology_ids(model) -> list[int]:
    return [id(layer.w) for layer in model.layers]


class _Server:
    """State of the parameter server during phase 1."""

    def __init__(self, run: Run, steps_per_shard: int) -> None:
        self.run, self.comm = run, run.comm
        self.n_workers = run.comm.size - 1
        self.per_epoch = self.n_workers * steps_per_shard
        self.max_stale = (8 * self.n_workers if run.config.max_staleness is None
                          else int(run.config.max_staleness))
        self.processed = run.engine.epoch * self.per_epoch
        self.latest = np.zeros((run.comm.size, 5))  # cumulative worker counters
        self.last = np.zeros_like(self.latest)
        self.index_cache: tuple[int, object] | None = None
        self._new_epoch()

    def _new_epoch(self) -> None:
        size = self.comm.size
        self.loss = np.zeros(size)
        self.correct = np.zeros(size)
        self.applied = self.replies = self.dropped = self.stale = 0
        self.staleness: list[int] = []
        self.t0 = time.perf_counter()
        self.comm0, self.bytes0 = self.comm.time_comm, self.comm.bytes_sent
        self.run.engine.flops.reset()

    def reply(self, dest: int, flag: int, worker_version: int) -> None:
        run, comm, model = self.run, self.comm, self.run.model
        header = np.array([flag, run.server_step, run.version, *model.n_connections], np.float64)
        comm.send(header, dest, TAG_REPLY, "reply header")
        self.replies += 1
        if flag == FLAG_SWITCH:
            return
        if worker_version != run.version:
            if self.index_cache is None or self.index_cache[0] != run.version:
                self.index_cache = (run.version, topology_buffer(model))
            comm.send(self.index_cache[1], dest, TAG_INDEX, "topology")
        values = pack(model.backend.xp, [(layer.w.data, layer.b) for layer in model.layers])
        comm.send(values, dest, TAG_VALUES, "weights")

    def apply(self, src: int, header: np.ndarray, grad) -> None:
        run, model = self.run, self.run.model
        s = run.server_step - int(header[1])
        self.staleness.append(s)
        if s > self.max_stale:
            self.dropped += 1
            return
        engine = run.engine
        frac = engine.epoch + (self.processed % self.per_epoch) / self.per_epoch
        lr = engine.lr_at(frac) * min(1.0, self.n_workers / (s + 1))
        engine.apply(unpack(model.backend.asarray(grad), model), lr)
        run.server_step += 1
        self.applied += 1
        before = _topology_ids(model)
        engine.after_step(None)
        if _topology_ids(model) != before:
            run.version += 1

    def end_epoch(self) -> bool:
        """Evolve, evaluate, record, checkpoint, log; True when a callback asks to stop."""
        run, comm, model = self.run, self.comm, self.run.model
        epoch = run.engine.epoch
        t_train = time.perf_counter() - self.t0
        before = _topology_ids(model)
        evo = evolve(run, phase=1)
        topology_flops = run.engine.flops.topology
        if _topology_ids(model) != before:
            run.version += 1
        t0 = time.perf_counter()
        test = (None if run.x_te is None
                else run.model.evaluate(run.x_te, run.y_te, run.config.eval_batch_size))
        t_eval = time.perf_counter() - t0
        delta = self.latest - self.last
        self.last = self.latest.copy()
        table = np.zeros((comm.size, len(STATS)))
        # The server does not see the workers' counters: their flops are their step count times
        # one step of the (shared) current topology.
        step_sparse, step_dense = step_flops(model, run.batch_size,
                                             run.engine.optimizer.ops_per_value)
        for r in range(1, comm.size):  # samples, time, comm, bytes, steps of each worker
            table[r] = [1, delta[r, 0], delta[r, 4], self.loss[r], self.correct[r], delta[r, 1],
                        delta[r, 2], delta[r, 3], np.nan, np.nan, 0.0, 0.0,
                        delta[r, 4] * step_sparse, delta[r, 4] * step_dense, 0.0]
        table[0] = [0, self.applied * run.batch_size, self.replies, 0, 0, t_train,
                    comm.time_comm - self.comm0, comm.bytes_sent - self.bytes0, np.nan, np.nan,
                    evo["time_evolve"], t_eval, topology_flops, 0.0, topology_flops]
        stale = self.staleness or [0]
        extra = {"staleness_mean": float(np.mean(stale)), "staleness_max": int(max(stale)),
                 "dropped": self.dropped, "stale_pushes": self.stale,
                 "topology_version": run.version}
        record = make_record(run, epoch, 1, table, lr=run.engine.lr_at(epoch + 1), evo=evo,
                             grow=evo["grow"], test=test, extra=extra)
        run.history.append(record)
        checkpoint(run, "phase1")
        log_record(run, record)
        stop = any(cb(record, model) for cb in run.callbacks)
        self._new_epoch()
        return stop

    def serve(self) -> None:
        run, comm, model = self.run, self.comm, self.run.model
        MPI = comm.MPI
        header = np.empty(HEADER, np.float64)
        done = run.engine.epoch >= run.phase1_epochs or run.stopped
        switched: set[int] = set()
        while len(switched) < self.n_workers:
            status = comm.probe(MPI.ANY_SOURCE, TAG_PUSH, "gradient push")
            src = status.Get_source()
            comm.recv(header, src, TAG_PUSH, "push header")
            grad = comm.recv_new(src, TAG_GRAD, model.dtype, "gradient")
            self.latest[src] = header[5:10]
            version = int(header[0])
            if done:
                self.reply(src, FLAG_SWITCH, version)
                switched.add(src)
                continue
            if version != run.version:
                self.stale += 1
                self.reply(src, FLAG_STALE, version)
                continue
            self.apply(src, header, grad)
            self.loss[src] += header[3]
            self.correct[src] += header[4]
            self.processed += 1
            if self.processed % self.per_epoch == 0:
                run.stopped = self.end_epoch()
                done = run.engine.epoch >= run.phase1_epochs or run.stopped
            if done:
                self.reply(src, FLAG_SWITCH, version)
                switched.add(src)
            else:
                self.reply(src, FLAG_OK, version)


def serve(run: Run, steps_per_shard: int) -> None:
    """Rank 0: apply pushed gradients until phase 1's epochs are done, then release workers."""
    _Server(run, steps_per_shard).serve()


def work(run: Run) -> None:
    """Ranks >= 1: compute gradients on the shard and push them until the server says SWITCH."""
    comm, model = run.comm, run.model
    be, bs = model.backend, run.batch_size
    xp = be.xp
    version, pulled = run.version, run.server_step
    n_hidden, m = len(model.layers) - 1, run.shard.shape[0]
    header = np.zeros(HEADER, np.float64)
    reply = np.zeros(3 + len(model.layers), np.float64)
    t_start, comm0, bytes0 = time.perf_counter(), comm.time_comm, comm.bytes_sent
    samples = steps = 0
    g = None
    while True:
        perm = run.rng.permutation(m)
        for s in range(m // bs):
            idx = run.shard[perm[s * bs:(s + 1) * bs]]
            seeds = rank_seeds(run.rng.integers(0, 2**63, size=n_hidden), comm.rank)
            xb, yb = run.engine.batch(run.x, run.y, idx)
            loss, probs, grads, _ = run.engine.gradients(xb, yb, seeds)
            loss = float(loss)  # read for the header anyway
            if not np.isfinite(loss):  # before the server applies a NaN gradient
                raise run.engine.diverged(loss)
            n_right = (probs.argmax(axis=0) == yb).sum()
            del probs
            g = pack(xp, grads, g)
            header[:5] = version, pulled, bs, float(loss), float(n_right)
            while True:
                header[5:] = (samples, time.perf_counter() - t_start, comm.time_comm - comm0,
                              comm.bytes_sent - bytes0, steps)
                comm.send(header, 0, TAG_PUSH, "push header")
                comm.send(g, 0, TAG_GRAD, "gradient")
                comm.recv(reply, 0, TAG_REPLY, "reply")
                flag, new_version = int(reply[0]), int(reply[2])
                if flag == FLAG_SWITCH:
                    return
                nnz = [int(k) for k in reply[3:]]
                index = (comm.recv_new(0, TAG_INDEX, index_dtype(model), "topology")
                         if new_version != version else None)
                values = np.empty(sum(k + layer.out_features
                                      for k, layer in zip(nnz, model.layers)), model.dtype)
                comm.recv(values, 0, TAG_VALUES, "weights")
                old = [layer.w for layer in model.layers]
                parts = unpack(g, model)
                install(model, values, nnz, index)
                version = new_version
                if flag == FLAG_STALE:
                    # Re-express the gradient on the topology just received and push it again.
                    g = pack(xp, [(remap_values(w_old, layer.w, gw), gb) for w_old, layer, (gw, gb)
                                  in zip(old, model.layers, parts)])
                    header[0] = version
                    continue
                pulled = int(reply[1])
                break
            samples += bs
            steps += 1
