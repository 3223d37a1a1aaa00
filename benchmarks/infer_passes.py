"""Samples per fused inference pass: time per sample by pass size and layer width.

``SparseMLP.logits`` streams its input through the CPU backend's fused inference pass (one
OpenMP team per pass, every layer's output kept for the next) in passes of
``CpuBackend.infer_batch`` samples.  Small passes keep the rows a product gathers in cache;
past the caches every connection gathers a row from memory whatever its length, so short rows
only multiply the gathers; and a pass that is not a whole number of 64-byte vectors of samples
makes every gathered load straddle two cache lines.  This benchmark times one pass of the
784-w-w-w-10 network (ε = 20) for each pass size in one process per width, alternating the
sizes round by round (each timed call after an untimed one that touches its buffers), and marks
the size ``infer_batch`` picks.

    flock /tmp/bench.lock python benchmarks/infer_passes.py [--widths 1000 10000 100000]
        [--threads 2] [--rounds 5]

Width 1 000 000 needs about 11 GiB.  Results: ``benchmarks/results/infer-passes.{json,md}``.
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

from _machine import describe, generated_header, load_average

HERE = Path(__file__).resolve().parent
SIZES = [16, 32, 64, 127, 128, 256, 512]
CHILD = """
import json, sys, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
w, threads, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sizes = [int(v) for v in sys.argv[4].split(",")]
be = CpuBackend(threads)
model = SparseMLP([784, w, w, w, 10], backend=be, seed=0)
rng = np.random.default_rng(0)
xs = {b: np.ascontiguousarray(rng.standard_normal((784, b)).astype(np.float32)) for b in sizes}
times = {b: [] for b in sizes}
for r in range(rounds):
    for b in sizes:
        # One size's buffers at a time (all of them at width 10^6 would take 27 GB); the
        # untimed first call touches them.
        buf = {}
        be.mlp_infer(model.layers, model.activations, xs[b], buf)
        t0 = time.perf_counter()
        be.mlp_infer(model.layers, model.activations, xs[b], buf)
        times[b].append(time.perf_counter() - t0)
        del buf
picked = {str(n): be.infer_batch(model.layers, n, model.activations) for n in (256, 2048)}
print(json.dumps({"times": {str(b): t for b, t in times.items()}, "picked": picked,
                  "connections": int(sum(model.n_connections))}))
"""


def run_width(width: int, threads: int, rounds: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(width), str(threads), str(rounds),
                          ",".join(map(str, SIZES))], check=True, capture_output=True,
                         text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    report = {"command": "python benchmarks/infer_passes.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": describe(), "threads": args.threads, "widths": {}}
    for w in args.widths:
        report["widths"][str(w)] = run_width(w, args.threads, args.rounds)
        print(f"width {w} done", flush=True)
    report["loadavg_after"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "infer-passes.json").write_text(json.dumps(report, indent=1))
    lines = ["# Samples per fused inference pass", ""] + generated_header(report)
    lines += [f"784-w-w-w-10, ε = 20, float32, {args.threads} thread(s); one process per width, "
              f"pass sizes alternating, {args.rounds} rounds; microseconds per sample, median "
              "(one pass / its samples). **Bold**: the pass `infer_batch` picks for a caller "
              "holding 2048 samples.", "",
              "| width | connections | " + " | ".join(str(b) for b in SIZES) + " |",
              "|---:|---:|" + "---:|" * len(SIZES)]
    for w, got in report["widths"].items():
        pick = got["picked"]["2048"]
        cells = []
        for b in SIZES:
            us = statistics.median(got["times"][str(b)]) / b * 1e6
            cells.append(f"**{us:,.1f}**" if b == pick else f"{us:,.1f}")
        lines.append(f"| {int(w):,} | {got['connections']:,} | " + " | ".join(cells) + " |")
    (args.out / "infer-passes.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
