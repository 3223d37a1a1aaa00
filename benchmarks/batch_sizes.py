"""What a training step costs per sample at batch sizes that are, or are not, whole vectors.

The CPU kernels hold activations feature-major, one row of ``batch`` values per neuron, rows
``batch`` apart.  A float32 row is whole 64-byte vectors (AVX-512) when the batch is a multiple
of 16: every row then starts on a cache line.  At other sizes (the estimators' default of 200,
the batch of 100 in Nerva's grid) rows start off the line, so every gathered row straddles one
more line, and the last vector of a row is masked.  This measures the cost per sample at such
sizes against their aligned neighbours (96/112 around 100, 192/208 around 200), so that a padded
row stride can be judged by its gain.

One process per (case, round) holds one ``Engine`` per batch size on the same data and runs them
in turns of 20 steps (the first 2 of each turn left out); medians of single steps.

    flock /tmp/bench.lock python benchmarks/batch_sizes.py [--rounds 3] [--turns 15]

Results: ``benchmarks/results/batch-sizes.{json,md}``.
"""

from __future__ import annotations

import json
import sys

import _machine as machine

BATCHES = (96, 100, 112, 128, 192, 200, 208)
#: (odd batch, its aligned neighbours)
ODD = ((100, (96, 112)), (200, (192, 208)))
CASES = [("paper 784-1000-1000-1000-10, 1 thread", "784-1000-1000-1000-10", 1),
         ("paper 784-1000-1000-1000-10, 2 threads", "784-1000-1000-1000-10", 2),
         ("estimator 64-256-256-10, 1 thread", "64-256-256-10", 1)]

CHILD = """
import json, sys, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

sizes = [int(v) for v in sys.argv[1].split("-")]
threads, turns = int(sys.argv[2]), int(sys.argv[3])
batches = [int(b) for b in sys.argv[4].split(",")]
rng = np.random.default_rng(0)
x = rng.standard_normal((8192, sizes[0])).astype(np.float32)
y = rng.integers(0, sizes[-1], 8192)
engines = {}
for bs in batches:
    cfg = TrainConfig(epochs=3, batch_size=bs, optimizer="sgd")
    model = SparseMLP(sizes, backend=CpuBackend(threads), seed=0)
    engines[bs] = Engine(model, cfg, np.random.default_rng(0))
    engines[bs].plan(x.shape[0] // bs)
times = {bs: [] for bs in batches}
perm = np.random.default_rng(1).permutation(x.shape[0])
step = 0
for turn in range(turns):
    for bs, engine in engines.items():
        for k in range(20):
            idx = perm[(step * bs) % (x.shape[0] - bs):][:bs]
            step += 1
            t0 = time.perf_counter()
            engine.train_step(x, y, idx, engine.config.lr)
            if turn and k >= 2:
                times[bs].append(time.perf_counter() - t0)
print(json.dumps({str(bs): float(np.median(v)) / bs * 1e9 for bs, v in times.items()}))
"""


def run_case(sizes: str, threads: int, turns: int) -> dict:
    return machine.child_json(CHILD, sizes, threads, turns, ",".join(map(str, BATCHES)))


def main(argv=None) -> int:
    args = machine.turns_parser(__doc__, 15).parse_args(argv)
    report = machine.new_report("batch_sizes.py", argv)
    for rnd in range(args.rounds):
        for name, sizes, threads in CASES:
            res = {"case": name, "round": rnd, "ns_per_sample": run_case(sizes, threads,
                                                                          args.turns)}
            report["runs"].append(res)
            print(json.dumps(res), flush=True)
    machine.save_report(args.out, "batch-sizes", report, render)
    return 0


def render(report: dict) -> str:
    lines = ["## Training step per sample at batch sizes off and on whole vectors (generated)",
             "", *machine.generated_header(report),
             "`Engine.train_step`, SET, momentum SGD, synthetic data; one process per (case, "
             "round), one engine per batch size, in turns of 20 steps.  ns per sample (median "
             "step / batch); each cell: the median over rounds, then every round.  *odd / "
             "aligned*: the odd size's cost per sample over the mean of its two aligned "
             "neighbours' (> 1: the odd size pays more per sample).", "",
             "| case | " + " | ".join(map(str, BATCHES))
             + " | " + " | ".join(f"{b} / ({a} + {c}) / 2" for b, (a, c) in ODD) + " |",
             "|---|" + "---:|" * (len(BATCHES) + len(ODD))]
    for name, *_ in CASES:
        runs = [r["ns_per_sample"] for r in report["runs"] if r["case"] == name]
        cells = [machine.rounds_cell([r[str(b)] for r in runs], "{:.0f}") for b in BATCHES]
        for odd, (lo, hi) in ODD:
            cells.append(machine.rounds_cell([2 * r[str(odd)] / (r[str(lo)] + r[str(hi)])
                                      for r in runs], "{:.2f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
