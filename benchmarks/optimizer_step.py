"""What each optimizer costs per training step, with its update fused into the step or not.

The CPU backend applies momentum SGD and Adam/AdamW inside the step's OpenMP team
(``Optimizer.backend_rule``, ``_cython/epilogue.hh``); otherwise the optimizer updates every
layer afterwards: with the same kernel on each array (``Backend.apply_update``, after a step
that could not fuse it: a gradient hook, clipping, WASAP's server), or with NumPy
(``Optimizer.update``: about a dozen array passes per parameter array for Adam, five for SGD).
All give the same bits.  One process per (case, round) holds one ``Engine`` per (optimizer,
mode) on the same data and runs them in turn, 20 steps each, the first 2 of each turn left out;
"kernel" is the engine stepping with an identity gradient hook, "host" the engine with
``backend_rule`` returning None.  Reported: the median step per optimizer and mode, and what
fusing saves.

    flock /tmp/bench.lock python benchmarks/optimizer_step.py [--rounds 3] [--turns 30]

Results: ``benchmarks/results/optimizer-step.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _machine import (
    child_json,
    generated_header,
    new_report,
    rounds_cell,
    save_report,
    turns_parser,
)

HERE = Path(__file__).resolve().parent
OPTIMIZERS = ("sgd", "adam", "adamw")
#: (name, layer sizes, batch, threads): the paper's network, and the estimators' default one
#: (two hidden layers of 256 at epsilon 10, scikit-learn's batch of 200) on 64 features.
CASES = [("paper 784-1000-1000-1000-10, batch 128, 2 threads", "784-1000-1000-1000-10", 128, 2,
          20),
         ("paper 784-1000-1000-1000-10, batch 128, 1 thread", "784-1000-1000-1000-10", 128, 1,
          20),
         ("estimator 64-256-256-10, batch 200, 1 thread", "64-256-256-10", 200, 1, 10)]

CHILD = """
import json, sys, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

sizes = [int(v) for v in sys.argv[1].split("-")]
bs, threads, eps, turns = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
optimizers = sys.argv[6].split(",")
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, sizes[0])).astype(np.float32)
y = rng.integers(0, sizes[-1], 4096)
engines = {}
for opt in optimizers:
    for mode in ("fused", "kernel", "host"):
        cfg = TrainConfig(epochs=3, batch_size=bs, optimizer=opt, epsilon=eps)
        model = SparseMLP(sizes, backend=CpuBackend(threads), epsilon=eps, seed=0)
        engine = Engine(model, cfg, np.random.default_rng(0))
        engine.plan(x.shape[0] // bs)
        if mode == "host":  # the optimizer's own NumPy update after the step
            engine.optimizer.backend_rule = lambda lr: None
        engines[opt, mode] = engine
times = {f"{opt} {mode}": [] for opt, mode in engines}
perm = np.random.default_rng(1).permutation(x.shape[0])
step = 0
for turn in range(turns):
    for (opt, mode), engine in engines.items():
        for k in range(20):
            idx = perm[(step * bs) % (x.shape[0] - bs):][:bs]
            step += 1
            t0 = time.perf_counter()
            engine.train_step(x, y, idx, engine.config.lr,
                              grad_hook=(lambda g: g) if mode == "kernel" else None)
            dt = time.perf_counter() - t0
            if turn and k >= 2:
                times[f"{opt} {mode}"].append(dt)
print(json.dumps({k: float(np.median(v)) * 1e6 for k, v in times.items()}))
"""


def run_case(sizes: str, batch: int, threads: int, eps: float, turns: int) -> dict:
    return child_json(CHILD, sizes, batch, threads, eps, turns, ",".join(OPTIMIZERS))


def main(argv=None) -> int:
    args = turns_parser(__doc__, 30).parse_args(argv)
    report = new_report("optimizer_step.py", argv)
    for rnd in range(args.rounds):
        for name, sizes, batch, threads, eps in CASES:
            res = {"case": name, "round": rnd,
                   "step_us": run_case(sizes, batch, threads, eps, args.turns)}
            report["runs"].append(res)
            print(json.dumps(res), flush=True)
    save_report(args.out, "optimizer-step", report, render)
    return 0


def render(report: dict) -> str:
    lines = ["## Training step per optimizer: update fused into the step vs after it "
             "(generated)", "", *generated_header(report),
             "`Engine.train_step` on synthetic data, SET, each optimizer's default rate and "
             "decay; one process per (case, round), the engines taking turns of 20 steps.  "
             "\"fused\": the update runs in the step's team; \"kernel\": a step with an "
             "identity gradient hook, the update after it by the same kernel "
             "(`Backend.apply_update`); \"host\": the optimizer's NumPy update after the "
             "step (all three the same bits).  Each cell: the median over rounds, then every "
             "round; us per step.", "",
             "| case | optimizer | host | kernel | fused | saved (host - fused) | "
             "fused / SGD fused |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, *_ in CASES:
        runs = [r["step_us"] for r in report["runs"] if r["case"] == name]
        for opt in OPTIMIZERS:
            host = [r[f"{opt} host"] for r in runs]
            kernel = [r[f"{opt} kernel"] for r in runs]
            fused = [r[f"{opt} fused"] for r in runs]
            saved = [h - f for h, f in zip(host, fused)]
            rel = [r[f"{opt} fused"] / r["sgd fused"] for r in runs]
            lines.append(f"| {name} | {opt} | {rounds_cell(host, '{:.0f}')} | "
                         f"{rounds_cell(kernel, '{:.0f}')} | {rounds_cell(fused, '{:.0f}')} | "
                         f"{rounds_cell(saved, '{:.0f}')} | "
                         f"{rounds_cell(rel, '{:.2f}')} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
