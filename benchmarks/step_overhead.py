"""What a training step spends outside its OpenMP team, and what the per-step caches save.

The CPU step keeps three things between steps: the step plan (``CpuBackend._step_plan``: the
fusability checks and the buffers it hands ``mlp.step``), the loss (computed by the step's
team itself, in C without the GIL, or else the kernel ``CpuBackend.softmax_cross_entropy``: two
C passes around NumPy's exp instead of a dozen NumPy calls) and the flop count of a step
(``FlopCounter.step``, once per shapes).  This benchmark runs ``Engine.train_step`` in one
process and switches every 10 steps between the code as it is ("kept") and the same code with
all three recomputed at every step ("recomputed": the plan popped from the buffers, the generic
NumPy loss called back from the team, the flop count forgotten), which is what a step did
before them; the first 2 steps after each switch are left out.  Reported: the median
step of each mode and the difference.  A small network shows the fixed cost of a step (it is
nearly all overhead), the paper's Fashion-MNIST network what it means for real training.

    flock /tmp/bench.lock python benchmarks/step_overhead.py [--rounds 3] [--steps 3000]

Results: ``benchmarks/results/step-overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe, generated_header, rounds_cell, save_report

HERE = Path(__file__).resolve().parent
#: (name, layer sizes, batch, threads, data): "fmnist" is the real data set, else synthetic.
CASES = [("tiny 4-4-4-4-3, batch 2", "4-4-4-4-3", 2, 1, "synthetic"),
         ("tabular 64-256-256-10, batch 64", "64-256-256-10", 64, 1, "synthetic"),
         ("paper 784-1000-1000-1000-10, batch 128, 1 thread", "784-1000-1000-1000-10", 128, 1,
          "fmnist"),
         ("paper 784-1000-1000-1000-10, batch 128, 2 threads", "784-1000-1000-1000-10", 128, 2,
          "fmnist")]
CHILD = """
import json, sys, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit._cython.workspace import PLAN
from sparsekit.backends.base import Backend
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

sizes = [int(v) for v in sys.argv[1].split("-")]
bs, threads, data, steps = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if data == "fmnist":
    from sparsekit import load_dataset
    d = load_dataset("fashion-mnist")
    x, y = d.x_train, d.y_train
else:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 5000)
be = CpuBackend(threads)
cfg = TrainConfig(epochs=3, batch_size=bs, lr=0.01, momentum=0.9, weight_decay=2e-4)
model = SparseMLP(sizes, backend=be, seed=0)
engine = Engine(model, cfg, np.random.default_rng(0))
engine.plan(x.shape[0] // bs)
perm = np.random.default_rng(1).permutation(x.shape[0])
kept_loss = be.softmax_cross_entropy
generic_loss = lambda z, t: Backend.softmax_cross_entropy(be, z, t)
called_back = lambda loss, logits: None  # CpuBackend._step_labels: the team's loss declined
times = {"kept": [], "recomputed": []}
for s in range(steps):
    mode = "recomputed" if (s // 10) % 2 else "kept"
    idx = perm[(s * bs) % (x.shape[0] - bs):][:bs]
    if mode == "recomputed":
        engine._buffers.pop(PLAN, None)  # every plan
        engine.flops._last = (None, (0, 0))
    be.softmax_cross_entropy = generic_loss if mode == "recomputed" else kept_loss
    if mode == "recomputed":
        be._step_labels = called_back
    else:
        vars(be).pop("_step_labels", None)
    t0 = time.perf_counter()
    engine.train_step(x, y, idx, 0.01)
    dt = time.perf_counter() - t0
    if s >= 40 and s % 10 >= 2:
        times[mode].append(dt)
print(json.dumps(times))
"""

#: The loss alone: ``CpuBackend.softmax_cross_entropy`` (the kernel) against the generic
#: ``Backend.softmax_cross_entropy`` (NumPy), alternating every 10 calls in one process.
LOSS_CHILD = """
import json, statistics, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit.backends.base import Backend
be = CpuBackend(1)
rng = np.random.default_rng(0)
out = []
for c, b in ((10, 128), (10, 512), (100, 128)):
    z = rng.standard_normal((c, b)).astype(np.float32)
    y = rng.integers(0, c, b)
    t = {"kernel": [], "numpy": []}
    for r in range(4000):
        name = "kernel" if (r // 10) % 2 == 0 else "numpy"
        f = be.softmax_cross_entropy if name == "kernel" else (
            lambda a, l: Backend.softmax_cross_entropy(be, a, l))
        t0 = time.perf_counter()
        f(z, y)
        t[name].append(time.perf_counter() - t0)
    out.append({"shape": f"{c} x {b}", "numpy_us": statistics.median(t["numpy"]) * 1e6,
                "kernel_us": statistics.median(t["kernel"]) * 1e6})
print(json.dumps(out))
"""


def run_case(sizes: str, batch: int, threads: int, data: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, sizes, str(batch), str(threads), data,
                          str(steps)], check=True, capture_output=True, text=True,
                         cwd=HERE.parent)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    kept, old = statistics.median(times["kept"]), statistics.median(times["recomputed"])
    return {"kept_us": kept * 1e6, "recomputed_us": old * 1e6, "saved_us": (old - kept) * 1e6,
            "speedup": old / kept}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000,
                   help="steps per process (the paper's network runs a third of them)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    report = {"command": " ".join(["python benchmarks/step_overhead.py", *(argv or sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": describe(), "runs": []}
    for rnd in range(args.rounds):
        for name, sizes, batch, threads, data in CASES:
            steps = args.steps if data != "fmnist" else max(args.steps // 3, 200)
            res = {"case": name, "round": rnd, **run_case(sizes, batch, threads, data, steps)}
            report["runs"].append(res)
            print(json.dumps(res), flush=True)
    out = subprocess.run([sys.executable, "-c", LOSS_CHILD], check=True, capture_output=True,
                         text=True, cwd=HERE.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report["loss"] = json.loads(out.stdout.strip().splitlines()[-1])
    save_report(args.out, "step-overhead", report, render)
    return 0


def render(report: dict) -> str:
    lines = ["## Per-step overhead: kept vs recomputed (generated)", "",
             *generated_header(report),
             "`Engine.train_step`, SGD momentum 0.9, SET; one process per (case, round), the "
             "two modes alternating every 10 steps inside it.  Each cell: the median over "
             "rounds, then every round.", "",
             "| case | recomputed us | kept us | saved us | speed-up |",
             "|---|---:|---:|---:|---:|"]
    for name, *_ in CASES:
        runs = [r for r in report["runs"] if r["case"] == name]
        cells = [rounds_cell([r[key] for r in runs], fmt)
                 for key, fmt in (("recomputed_us", "{:.1f}"), ("kept_us", "{:.1f}"),
                                  ("saved_us", "{:.1f}"), ("speedup", "{:.3f}"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("loss"):
        lines += ["", "The loss alone (classes x batch, float32, one thread; median us per call, "
                  "kernel and NumPy alternating every 10 calls in one process, same bits):", "",
                  "| logits | NumPy us | kernel us | speed-up |", "|---|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {r['numpy_us']:.1f} | {r['kernel_us']:.1f} | "
                  f"{r['numpy_us'] / r['kernel_us']:.2f}x |" for r in report["loss"]]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
