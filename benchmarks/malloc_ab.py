"""A/B of sparsekit's malloc settings (``sparsekit/_cython/_malloc.py``) on what users run.

Each case runs in its own process, once with the settings (the default) and once with
``SPARSEKIT_MALLOC_TUNING=0`` (glibc's defaults), the two alternating within each round so that
load on a shared machine hits both alike.  Reports the median seconds per call and the minor
page faults per call of each, and their ratio.

Cases (default Fashion-MNIST-shaped network, 784-1000-1000-1000-10, ε = 20, batch 128):
``kernels``: one forward product and one fused backward of a 1000 x 1000 layer;
``torch``: a forward + backward + SGD step of three ``sparsekit.torch.SparseLinear`` layers;
``predict``: ``SparseMLP.predict`` of 10 000 samples;
``evolve``: one SET update of the network;
``train``: one training epoch (evaluation excluded) on Fashion-MNIST.

    python benchmarks/malloc_ab.py [--threads 2] [--rounds 5] [--cases kernels torch ...]
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

from _machine import describe, run_header

CASES = ("kernels", "torch", "predict", "evolve", "train")

CHILD = r"""
import json, resource, sys, time
import numpy as np
from sparsekit._cython._malloc import malloc_tuning
case, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def timed(fn, reps, warm=3):
    for _ in range(warm):
        fn()
    ts, f0 = [], faults()
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return {"s": float(np.median(ts)), "faults": (faults() - f0) / reps}

from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.model import SparseMLP
be = CpuBackend(num_threads=threads)
sizes = [784, 1000, 1000, 1000, 10]
rng = np.random.default_rng(0)
if case == "kernels":
    from sparsekit.nn.init import erdos_renyi
    w = erdos_renyi(1000, 1000, 20, rng=rng)
    x = np.ascontiguousarray(rng.standard_normal((1000, 128), dtype=np.float32))
    dy = np.ascontiguousarray(rng.standard_normal((1000, 128), dtype=np.float32))
    be.transpose_index(w)
    out = {"forward": timed(lambda: be.matmul(x, w), reps),
           "backward": timed(lambda: be.backward(x, dy, w), reps)}
elif case == "torch":
    import torch
    from sparsekit.torch import SparseLinear
    torch.set_num_threads(threads)
    net = torch.nn.Sequential(SparseLinear(784, 1000, seed=0, backend=be), torch.nn.ReLU(),
                              SparseLinear(1000, 1000, seed=1, backend=be), torch.nn.ReLU(),
                              SparseLinear(1000, 10, seed=2, backend=be))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xb = torch.randn(128, 784)
    yb = torch.randint(0, 10, (128,))
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
    out = {"step": timed(step, reps)}
else:
    model = SparseMLP(sizes, backend=be, seed=0)
    if case == "predict":
        xs = rng.standard_normal((10000, 784), dtype=np.float32)
        out = {"predict": timed(lambda: model.predict(xs), max(3, reps // 20), warm=1)}
    elif case == "evolve":
        from sparsekit.growth.set import SET
        method = SET()
        out = {"evolve": timed(lambda: method.evolve(model, rng), max(5, reps // 10))}
    else:
        from sparsekit import load_dataset, train
        data = load_dataset("fashion-mnist")
        times, f = [], []
        def cb(r, m):
            times.append(r["time_train"]); f.append(faults())
        f0 = faults()
        train(sizes, (data.x_train, data.y_train), backend=be, epochs=2, seed=0, callbacks=[cb])
        n_steps = -(-len(data.y_train) // 128)
        out = {"epoch": {"s": times[-1], "faults": (f[-1] - f[-2]) / n_steps}}
print(json.dumps({"tuning": malloc_tuning(), "results": out}))
"""


def run_case(case: str, threads: int, reps: int, tuned: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), SPARSEKIT_MALLOC_TUNING=str(int(tuned)))
    got = subprocess.run([sys.executable, "-c", CHILD, case, str(threads), str(reps)], env=env,
                         capture_output=True, text=True, check=True)
    res = json.loads(got.stdout.strip().splitlines()[-1])
    if res["tuning"]["applied"] != tuned:
        raise RuntimeError(f"{case}: expected tuning={tuned}, got {res['tuning']}")
    return res["results"]


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        return "not installed"
    return torch.__version__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200, help="timed calls per process (kernels)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    machine = describe()
    samples: dict = {}
    for r in range(args.rounds):
        for case in args.cases:
            for tuned in ((True, False) if r % 2 else (False, True)):
                for op, v in run_case(case, args.threads, args.reps, tuned).items():
                    samples.setdefault((case, op), {True: [], False: []})[tuned].append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows, data = [], []
    for (case, op), by in samples.items():
        med = {t: statistics.median(v["s"] for v in by[t]) for t in by}
        flt = {t: statistics.median(v["faults"] for v in by[t]) for t in by}
        data.append({"case": case, "op": op, "glibc_s": med[False], "tuned_s": med[True],
                     "glibc_faults": flt[False], "tuned_faults": flt[True],
                     "samples": {str(t): by[t] for t in by}})
        rows.append(f"| {case} | {op} | {med[False] * 1e3:.3f} | {med[True] * 1e3:.3f} | "
                    f"**{med[False] / med[True]:.2f}×** | {flt[False]:.0f} | {flt[True]:.0f} |")
    cmd = ("python benchmarks/malloc_ab.py --threads "
           f"{args.threads} --rounds {args.rounds} --reps {args.reps}")
    report = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine, "torch": _torch_version(), "loadavg_after": describe()["loadavg"]}
    head = run_header(report)
    md = [
        "# malloc settings A/B: glibc's defaults vs sparsekit's (`_cython/_malloc.py`)", "",
        *head,
        f"{args.threads} threads. Each case runs in its own process, once with "
        "`SPARSEKIT_MALLOC_TUNING=0` (glibc's defaults) and once with the default settings "
        "(`M_MMAP_THRESHOLD` 32 MiB, `M_TRIM_THRESHOLD` 64 MiB), alternating within each round; "
        "the median over rounds of each process's median ms per call, and minor page faults per "
        "call.", "",
        "| case | op | glibc ms | sparsekit ms | speed-up | glibc faults/call | sparsekit faults/call |",
        "|---|---|---|---|---|---|---|", *rows, ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "malloc-ab.json").write_text(json.dumps({**report, "rows": data}, indent=1))
    (args.out / "malloc-ab.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
