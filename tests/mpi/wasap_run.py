"""One WASAP-SGD job on small synthetic data, for tests/test_mpi.py to run under mpiexec.

Every rank runs this script.  Rank 0 writes ``--result`` (JSON: history, connections, exit
notes).  Fault injection, for the failure tests:

* ``--fault raise|stop|exit --fault-rank R --fault-epoch E``: rank R raises, stops itself
  (SIGSTOP) or calls ``sys.exit(0)`` at the end of epoch E (through a SET subclass whose
  end-of-epoch hook all training ranks call);
* ``--crash-after E``: rank 0 SIGKILLs itself after epoch E's checkpoint (a crashed job, for
  resume tests);
* ``--pid-dir D``: every rank writes ``D/rank-R.pid`` so the launcher can kill one from outside;
* ``--uneven-data``: rank 1 loads fewer samples (ranks that disagree on the data).
* ``--uneven-options``: rank 1 trains one epoch more (ranks that disagree on the options).

``--compare-single`` (one rank): also train with the single-process trainer and exit 1 unless
weights, optimizer state and history agree exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from sparsekit import train
from sparsekit._cython.backend import CpuBackend
from sparsekit.growth import SET

SIZES = [24, 48, 32, 4]


def make_data(seed: int = 0, n_train: int = 1200, n_test: int = 400):
    """Four overlapping Gaussian classes in 24 dimensions (chance 25 %, Bayes ~90 %)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, 24)) * 0.6
    y = rng.integers(0, 4, n_train + n_test)
    x = (centers[y] + rng.standard_normal((y.size, 24))).astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class FaultySET(SET):
    """SET that misbehaves on one rank at one epoch (fault injection)."""

    def __init__(self, how: str, rank: int, at_epoch: int, my_rank: int) -> None:
        super().__init__(zeta=0.3)
        self.how, self.rank, self.at_epoch, self.my_rank = how, rank, at_epoch, my_rank

    def end_of_epoch(self, model, epoch, epochs, rng):
        if self.my_rank == self.rank and epoch == self.at_epoch:
            if self.how == "raise":
                raise RuntimeError("injected failure")
            if self.how == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            if self.how == "exit":
                sys.exit(0)
        return super().end_of_epoch(model, epoch, epochs, rng)


def state_arrays(model):
    return [a for layer in model.layers
            for a in (layer.w.indptr, layer.w.indices, layer.w.data, layer.b,
                      *layer.state_w.values(), *layer.state_b.values())]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="sync")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--phase1-fraction", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--fan-in", default="dense")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--result", default=None)
    p.add_argument("--fault", default=None, choices=["raise", "stop", "exit"])
    p.add_argument("--fault-rank", type=int, default=1)
    p.add_argument("--fault-epoch", type=int, default=1)
    p.add_argument("--crash-after", type=int, default=None)
    p.add_argument("--pid-dir", default=None)
    p.add_argument("--compare-single", action="store_true")
    p.add_argument("--huge", type=int, default=None, metavar="N",
                   help="an N-N-4 network (ε 2) on 96 random samples: the one-rule check")
    p.add_argument("--uneven-data", action="store_true",
                   help="rank 1 loads 100 training samples fewer than the others")
    p.add_argument("--uneven-options", action="store_true",
                   help="rank 1 trains one epoch more than the others")
    p.add_argument("--default-backend", action="store_true",
                   help="the default CPU backend (thread count left to sparsekit)")
    args = p.parse_args()

    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    if args.pid_dir:
        Path(args.pid_dir, f"rank-{rank}.pid").write_text(str(os.getpid()))
    method = (FaultySET(args.fault, args.fault_rank, args.fault_epoch, rank) if args.fault
              else "set")
    callbacks = []
    if args.crash_after is not None:
        def crash(record, model):
            if record["epoch"] == args.crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
        callbacks.append(crash)
    kw = dict(backend=None if args.default_backend else CpuBackend(1), epochs=args.epochs,
              batch_size=args.batch_size, lr=args.lr, epsilon=6, seed=args.seed,
              optimizer=args.optimizer, fan_in=args.fan_in)
    sizes, data = SIZES, make_data()
    if args.uneven_data and rank == 1:
        data = make_data(n_train=1100)
    if args.uneven_options and rank == 1:
        kw["epochs"] += 1
    if args.huge:
        rng = np.random.default_rng(0)
        sizes = [args.huge, args.huge, 4]
        x = rng.standard_normal((96, args.huge), dtype=np.float32)
        y = rng.integers(0, 4, 96)
        data, kw["epsilon"] = (x[:64], y[:64], x[64:], y[64:]), 2
    res = train(sizes, data, parallel="wasap", wasap_mode=args.mode,
                phase1_fraction=args.phase1_fraction, method=method, run_dir=args.out,
                resume=args.resume, callbacks=callbacks, **kw,
                log=(lambda line: print(line, flush=True)) if rank == 0 else None)
    import resource

    peak = MPI.COMM_WORLD.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, MPI.MAX)
    if rank != 0:
        return 0
    notes = {}
    if args.compare_single:
        ref = train(SIZES, make_data(), **kw)
        same_arrays = all(np.array_equal(a, b) for a, b in
                          zip(state_arrays(ref.model), state_arrays(res.model)))
        same_history = all(
            rb.get(k) == v for ra, rb in zip(ref.history, res.history)
            for k, v in ra.items() if not k.startswith("time"))
        notes = {"same_arrays": same_arrays, "same_history": same_history,
                 "n_records": [len(ref.history), len(res.history)]}
        if not (same_arrays and same_history):
            print(f"MISMATCH {notes}", flush=True)
            return 1
        print("equal to the single-process trainer", flush=True)
    if args.result:
        Path(args.result).write_text(json.dumps({
            "history": res.history, "connections": res.model.n_connections,
            "size": MPI.COMM_WORLD.Get_size(), "threads": res.model.backend.num_threads,
            "peak_rss_mib": peak / 1024,
            **notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
