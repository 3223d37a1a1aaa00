"""OpenMP wait policy: what two threads gain over one, on an idle machine and beside a busy
process, for the default Fashion-MNIST network.

A training step runs two OpenMP teams (the forward and the backward of the whole network,
``sparsekit/_cython/mlp.hh``).  With passive waiting the second thread sleeps between them and
is woken for each team (tens of microseconds on a virtual machine: the master starts alone);
with spinning it is there at once, but it keeps its core busy while the master runs the step's
Python and NumPy parts, which a competing process then loses.  sparsekit picks passive waiting
unless the user sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``; this measures the trade-off.

Each (policy, round) is one process training the paper's network 784-1000-1000-1000-10 (SET,
SGD with momentum, batch 128, real Fashion-MNIST) step by step with ``Engine.train_step``,
switching the backend between one and two threads every 10 steps, so both counts see the same
machine state; the first 2 steps after each switch are left out.  Reported: the median step of
each count and their ratio.  ``--load 1`` adds a competing single-threaded busy process for
the whole measurement (what a shared machine looks like); there the 2-thread step time is the
figure to compare across policies.  Policies alternate within each round.

    flock /tmp/bench.lock python benchmarks/wait_policy.py [--rounds 3] [--steps 1200] \\
        [--load 0 1] [--policies passive,active,spin10000,spin30000]

Results: ``benchmarks/results/wait-policy.{json,md}``.
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
POLICIES = {"passive": {"OMP_WAIT_POLICY": "passive"},
            "active": {"OMP_WAIT_POLICY": "active"},
            "spin10000": {"GOMP_SPINCOUNT": "10000"},
            "spin30000": {"GOMP_SPINCOUNT": "30000"},
            "spin100000": {"GOMP_SPINCOUNT": "100000"}}
CHILD = """
import json, sys, time
import numpy as np
from sparsekit import load_dataset
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

steps = int(sys.argv[1])
data = load_dataset("fashion-mnist")
x, y = data.x_train, data.y_train
be = CpuBackend(2)
cfg = TrainConfig(epochs=3, batch_size=128, lr=0.01, momentum=0.9, weight_decay=2e-4)
model = SparseMLP([784, 1000, 1000, 1000, 10], backend=be, seed=0)
engine = Engine(model, cfg, np.random.default_rng(0))
engine.plan(x.shape[0] // 128)
perm = np.random.default_rng(1).permutation(x.shape[0])
times = {1: [], 2: []}
for s in range(steps):
    threads = 1 + (s // 10) % 2
    be.num_threads = threads
    idx = perm[(s * 128) % (x.shape[0] - 128):][:128]
    t0 = time.perf_counter()
    engine.train_step(x, y, idx, 0.01)
    dt = time.perf_counter() - t0
    if s >= 40 and s % 10 >= 2:
        times[threads].append(dt)
print(json.dumps({str(k): v for k, v in times.items()}))
"""
BURNER = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_child(policy: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(POLICIES[policy])
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, check=True,
                         capture_output=True, text=True, cwd=HERE.parent)
    times = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = statistics.median(times["1"]), statistics.median(times["2"])
    return {"step_1_ms": one * 1e3, "step_2_ms": two * 1e3, "ratio": one / two}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", default="passive,active,spin10000,spin30000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--load", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        p.error(f"unknown policies {unknown}; choose from {sorted(POLICIES)}")
    report = {"command": "python benchmarks/wait_policy.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": describe(), "runs": []}
    for load in args.load:
        burner = (subprocess.Popen([sys.executable, "-c", BURNER.format(seconds=3600)])
                  if load else None)
        try:
            for rnd in range(args.rounds):
                for policy in policies:
                    res = {"load": load, "round": rnd, "policy": policy,
                           **run_child(policy, args.steps)}
                    report["runs"].append(res)
                    print(json.dumps(res), flush=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    save_report(args.out, "wait-policy", report, lambda r: render(r, policies, args.load))
    return 0


def render(report: dict, policies: list[str], loads: list[int]) -> str:
    lines = ["## OpenMP wait policy: two threads against one (generated)", "",
             *generated_header(report),
             "Network 784-1000-1000-1000-10, SET, SGD momentum 0.9, batch 128, real "
             "Fashion-MNIST; one process per (policy, round), 1 and 2 threads alternating every "
             "10 steps inside it.  Median step in ms; ratio = 1-thread step / 2-thread step "
             "(the issue's target: >= 1.6).  Each cell: the median over rounds, then every "
             "round.", ""]
    for load in loads:
        lines += [f"### {'With one competing busy process' if load else 'Idle machine'}", "",
                  "| policy | 1 thread ms | 2 threads ms | 1 / 2 threads |", "|---|---:|---:|---:|"]
        for policy in policies:
            runs = [r for r in report["runs"] if r["load"] == load and r["policy"] == policy]
            cells = [rounds_cell([r[key] for r in runs], "{:.2f}")
                     for key in ("step_1_ms", "step_2_ms", "ratio")]
            env = " ".join(f"{k}={v}" for k, v in POLICIES[policy].items())
            lines.append(f"| {policy} (`{env}`) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
