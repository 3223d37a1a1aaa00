"""Issue 17's width target in steady state: time per connection per sample, wide vs narrow.

``scaling.py`` times each width in its own process over one epoch of a few steps, which also
counts the first step after the SET update (the transposed indices rebuilt) and leaves the
widths minutes apart on a VM whose speed drifts.  Here one process holds both networks
(784-w-w-w-10, ε = 20, batch 128, momentum SGD, ``Engine.train_step`` on synthetic data) and
alternates them: a burst of narrow steps, then a few wide ones, round after round, after a warm
up that touches every buffer.  Reported: each width's median step, its nanoseconds per
connection per sample, and the ratio of the medians (the issue's target: at most 2.5).

    flock /tmp/bench.lock python benchmarks/width_ratio.py [--wide 1000000] [--narrow 1000]
        [--threads 2] [--rounds 4]

Width 1 000 000 needs about 9 GiB.  Results: ``benchmarks/results/width-ratio.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _machine import describe, generated_header, load_average

from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

HERE = Path(__file__).resolve().parent
BATCH = 128


def make(width: int, threads: int):
    model = SparseMLP([784, width, width, width, 10], backend=CpuBackend(threads), seed=0)
    engine = Engine(model, TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, momentum=0.9),
                    np.random.default_rng(0))
    engine.plan(100)
    return engine, int(sum(model.n_connections))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wide", type=int, default=1_000_000)
    ap.add_argument("--narrow", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 784)).astype(np.float32)
    y = rng.integers(0, 10, 4096)
    nets = {w: make(w, args.threads) for w in (args.narrow, args.wide)}
    # steps per burst: about the same time for both widths
    bursts = {args.narrow: 50, args.wide: 2}
    times: dict[int, list[float]] = {w: [] for w in nets}
    for r in range(args.rounds + 1):  # round 0 warms up and is left out
        for w, (engine, _) in nets.items():
            for _ in range(bursts[w]):
                idx = rng.integers(0, x.shape[0], BATCH)
                t0 = time.perf_counter()
                engine.train_step(x, y, idx, 0.01)
                if r:
                    times[w].append(time.perf_counter() - t0)
    rows = {}
    for w, (_, conn) in nets.items():
        step = statistics.median(times[w])
        rows[w] = {"connections": conn, "step_s": step, "steps": len(times[w]),
                   "ns_per_conn_sample": step / (BATCH * conn) * 1e9}
    ratio = rows[args.wide]["ns_per_conn_sample"] / rows[args.narrow]["ns_per_conn_sample"]
    report = {"command": "python benchmarks/width_ratio.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": describe(), "threads": args.threads, "rows": rows, "ratio": ratio,
              "loadavg_after": load_average()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "width-ratio.json").write_text(json.dumps(report, indent=1))
    lines = ["# Width ratio in steady state", ""] + generated_header(report)
    lines += [f"784-w-w-w-10, ε = 20, batch {BATCH}, momentum SGD, {args.threads} thread(s), "
              f"both networks in one process, alternating bursts, {args.rounds} rounds after a "
              "warm-up round; medians of single steps.", "",
              "| width | connections | steps timed | median step | ns / connection / sample |",
              "|---:|---:|---:|---:|---:|"]
    for w, row in rows.items():
        lines.append(f"| {w:,} | {row['connections']:,} | {row['steps']} | "
                     f"{row['step_s'] * 1e3:,.2f} ms | {row['ns_per_conn_sample']:.3f} |")
    lines += ["", f"Ratio, width {args.wide:,} / {args.narrow:,}: **{ratio:.2f}×** "
              "(issue 17's target: ≤ 2.5×)."]
    (args.out / "width-ratio.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
