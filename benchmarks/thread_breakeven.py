"""Where a second thread starts to pay: one vs two OpenMP threads by the size of the work.

Every parallel region wakes its threads; with the passive wait policy (the default, see
``wait-policy.md``) that is a futex wake and, on a virtual machine with an idle vCPU, a trip
through the hypervisor, so a region costs tens of microseconds before any work is shared.
Below some size one thread is faster.  This benchmark finds that size for what the CPU backend
runs as separate regions (the products ``matmul``, ``weight_grad`` and the candidate gradient
``sampled_grad``; the elementwise ``bias_act_dropout``, ``transpose_into`` and membership tests),
for a whole training step (one team per step, ``Engine.train_step``) and for
an inference forward pass (one team per pass, ``SparseMLP.forward_infer``),
on layers and networks whose work spans 2^15 to 2^25 multiply-adds.

Each case runs in one process that alternates one and two threads (kernels: every call;
steps: every 10 steps, the first 2 after a switch left out), so both see the same moment of a
machine whose speed drifts; the backend's own thresholds are off while it runs.  Work is the
quantity the backend's thresholds measure: nnz x batch for the products (``min_parallel_work``),
candidates x batch for ``sampled_grad`` (which counts half of it), the summed nnz of the layers x
batch for a step (``min_team_work``).

    flock /tmp/bench.lock python benchmarks/thread_breakeven.py [--rounds 5]

Results: ``benchmarks/results/thread-breakeven.{json,md}``.
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
#: kernels: (n_out, n_in, ε, batch); each layer is timed with matmul, weight_grad and
#: sampled_grad (as many candidates as connections, as GSE scores with γ = 1).
LAYERS = [(128, 64, 10, 32), (256, 256, 10, 32), (256, 256, 10, 133), (512, 512, 10, 128),
          (1000, 1000, 10, 128), (1000, 1000, 20, 128), (2000, 2000, 20, 128)]
#: elementwise: (features, batch) of a bias + activation + dropout pass and of a batch
#: transpose, and features x batch / 16 membership tests in a 2000 x 2000 layer at ε = 20
ELEMENTS = [(128, 128), (256, 256), (512, 512), (1000, 512), (2000, 1024)]
#: steps: (layer sizes, ε, batch)
NETS = [("8-64-64-3", 10, 32), ("13-128-128-3", 10, 64), ("13-256-256-3", 10, 133),
        ("64-256-256-10", 10, 200), ("784-300-100-10", 20, 128),
        ("784-1000-1000-1000-10", 20, 32), ("784-1000-1000-1000-10", 20, 128)]

CHILD = """
import json, sys, time
import numpy as np
from sparsekit._cython import sddmm, spmm
from sparsekit._cython.backend import CpuBackend
from sparsekit.growth.gse import sample_candidates
from sparsekit.nn.init import erdos_renyi
from sparsekit.nn.model import SparseMLP
from sparsekit.training.config import TrainConfig
from sparsekit.training.step import Engine

kind, spec, reps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
out = {}


# Seconds per call on 1 and 2 threads, the order of the two swapped every repeat
# (before(nt), untimed, sets the thread count where call does not take it).
def alternate(call, before=None):
    t = {1: [], 2: []}
    for r in range(reps):
        for nt in ((1, 2) if r % 2 == 0 else (2, 1)):
            if before is not None:
                before(nt)
            t0 = time.perf_counter()
            call(nt)
            t[nt].append(time.perf_counter() - t0)
    return t


def time_calls(calls, works):
    for name, call in calls.items():
        t = alternate(call)
        out[name] = {"work": works[name], "1": t[1], "2": t[2]}

if kind == "kernels":
    n_out, n_in, eps, b = spec
    w = erdos_renyi(n_out, n_in, eps, rng=0)
    x = rng.standard_normal((n_in, b), dtype=np.float32)
    dy = rng.standard_normal((n_out, b), dtype=np.float32)
    rows, cols = sample_candidates(CpuBackend(1), w, w.nnz, rng)
    calls = {"matmul": lambda nt: spmm.matmul(w.indptr, w.indices, w.data, x, n_in, nt),
             "weight_grad": lambda nt: sddmm.weight_grad(w.indptr, w.indices, x, dy, n_in, nt),
             "sampled_grad": lambda nt: sddmm.sampled_grad(x, dy, rows, cols, nt)}
    works = {"matmul": w.nnz * b, "weight_grad": w.nnz * b, "sampled_grad": len(rows) * b}
    time_calls(calls, works)
elif kind == "elements":
    from sparsekit._cython import elementwise, sampling
    f, b = spec
    z = rng.standard_normal((f, b)).astype(np.float32)
    bias = np.zeros(f, np.float32)
    rows_bf = rng.standard_normal((b, f)).astype(np.float32)
    t_out = np.empty((f, b), np.float32)
    w = erdos_renyi(2000, 2000, 20, rng=0)
    r_q, c_q = rng.integers(0, 2000, f * b // 16), rng.integers(0, 2000, f * b // 16)
    calls = {"bias_act_dropout": lambda nt: elementwise.bias_act_dropout(z, bias, 0.6, 0.3, 1, nt),
             "transpose_into": lambda nt: elementwise.transpose_into(rows_bf, t_out, nt),
             "contains": lambda nt: sampling.contains(w.indptr, w.indices, r_q, c_q, nt)}
    works = {"bias_act_dropout": f * b, "transpose_into": f * b, "contains": len(r_q) * 16}
    time_calls(calls, works)
else:
    sizes, eps, b = spec
    sizes = [int(v) for v in sizes.split("-")]
    x = rng.standard_normal((4096, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 4096)
    be = CpuBackend(1)
    be.min_parallel_work = be.min_team_work = 0
    model = SparseMLP(sizes, epsilon=eps, backend=be, seed=0)
    engine = Engine(model, TrainConfig(epochs=3, batch_size=b, lr=0.01, momentum=0.9,
                                       weight_decay=2e-4), np.random.default_rng(0))
    engine.plan(x.shape[0] // b)
    perm = np.random.default_rng(1).permutation(x.shape[0])
    t = {1: [], 2: []}
    for s in range(reps):
        nt = 2 if (s // 10) % 2 else 1
        be.num_threads = nt
        idx = perm[(s * b) % (x.shape[0] - b):][:b]
        t0 = time.perf_counter()
        engine.train_step(x, y, idx, 0.01)
        dt = time.perf_counter() - t0
        if s >= 20 and s % 10 >= 2:
            t[nt].append(dt)
    out["step"] = {"work": sum(layer.nnz for layer in model.layers) * b, "1": t[1], "2": t[2]}
    # Inference: one forward pass of the whole network in one team (what predict runs per
    # chunk of rows), alternating every call.
    x_ib = np.ascontiguousarray(x[:b].T)
    t = alternate(lambda nt: model.forward_infer(x_ib),
                  before=lambda nt: setattr(be, "num_threads", nt))
    out["forward"] = {"work": sum(layer.nnz for layer in model.layers) * b, "1": t[1], "2": t[2]}
print(json.dumps(out))
"""


def run_case(kind: str, spec, reps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(spec), str(reps)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{kind} {spec}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="processes per case (default 5)")
    ap.add_argument("--reps", type=int, default=400, help="calls (or steps) per process")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.reps < 40:
        ap.error("--rounds must be >= 1 and --reps >= 40")
    started, machine = time.strftime("%Y-%m-%d %H:%M %Z"), describe()
    cases = ([("kernels", spec) for spec in LAYERS] + [("elements", spec) for spec in ELEMENTS]
             + [("step", spec) for spec in NETS])
    rows = []
    for kind, spec in cases:
        pooled: dict[str, dict] = {}
        for _ in range(args.rounds):
            for name, got in run_case(kind, spec, args.reps).items():
                p = pooled.setdefault(name, {"work": got["work"], "1": [], "2": [],
                                             "ratios": []})
                p["1"] += got["1"]
                p["2"] += got["2"]
                p["ratios"].append(statistics.median(got["1"]) / statistics.median(got["2"]))
        label = {"kernels": "{}x{}, ε = {}, batch {}", "elements": "{} x {} elements",
                 "step": "{}, ε = {}, batch {}"}[kind].format(*spec)
        for name, p in pooled.items():
            t1, t2 = statistics.median(p["1"]) * 1e6, statistics.median(p["2"]) * 1e6
            rows.append({"case": label, "call": name, "work": p["work"], "one_us": t1,
                         "two_us": t2, "speedup": t1 / t2,
                         "round_speedups": [round(r, 2) for r in p["ratios"]]})
            print(f"{label:40s} {name:13s} work 2^{p['work'].bit_length() - 1:<3d} "
                  f"1 thr {t1:9.1f} us  2 thr {t2:9.1f} us  {t1 / t2:5.2f}x", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python benchmarks/thread_breakeven.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "date": started, "machine": machine, "loadavg_after": load_average(),
              "rows": rows}
    (args.out / "thread-breakeven.json").write_text(json.dumps(result, indent=1))
    lines = ["# One vs two threads by the size of the work", "",
             *generated_header(result),
             "Medians over all rounds pooled; *per round*: each process's own speed-up. *work*: "
             "connections x samples (for a product, its multiply-adds; the backend's "
             "thresholds count a step or a backward pass twice); for the elementwise calls, "
             "elements (16 per membership test here; the backend counts 4).", "",
             "| case | call | work | 1 thread µs | 2 threads µs | 2-thread speed-up "
             "| per round |", "|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["call"] not in ("step", "forward"), r["call"],
                                         r["work"])):
        lines.append(f"| {r['case']} | {r['call']} | {r['work']:,} | {r['one_us']:.1f} | "
                     f"{r['two_us']:.1f} | **{r['speedup']:.2f}×** | "
                     f"{', '.join(f'{v:.2f}' for v in r['round_speedups'])} |")
    (args.out / "thread-breakeven.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
