"""What it costs the CPU products when a batch operand does not start on a cache line.

NumPy promises 16-byte alignment only: a large ``np.empty`` or ``np.load`` starts 16 bytes into
a page, and a view ``a[1:]`` anywhere.  With rows of whole cache lines (batch 128 float32) every
row of such an operand then starts off a line by the same amount.  The forward and
``matmul_t`` walk each gathered row from the start of its line with the lanes before it masked
(AVX-512 builds); the pattern gradients (SDDMM, fused backward) copy the operand to an aligned
buffer when they gather it often enough (``spmm.pyx``: ``_head``, ``REALIGN_REUSE``).

For each thread count, one process times every product through ``CpuBackend`` (what a user
calls) on a 1000 x 1000 layer, ε = 20, batch 128, with both operands placed at each byte offset
in turn (the offsets alternate within each round, so load hits them alike).  Reported: the
median microseconds of each product per offset over the rounds, and its ratio to offset 0.

    flock /tmp/bench.lock python benchmarks/operand_offsets.py [--threads 1 2] [--rounds 3] \\
        [--offsets 0 16 32 48] [--out DIR]

Results: ``DIR/operand-offsets.{json,md}`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _machine import child_json, generated_header, new_report, save_report

PRODUCTS = ("matmul", "matmul_t", "weight_grad", "backward")

CHILD = r"""
import json, sys, time
import numpy as np
from sparsekit._cython.backend import CpuBackend
from sparsekit.nn.init import erdos_renyi

threads, rounds, n, batch = map(int, sys.argv[1:5])
offsets = [int(v) for v in sys.argv[5].split(",")]
rng = np.random.default_rng(0)
be = CpuBackend(num_threads=threads)
w = erdos_renyi(n, n, 20, rng=rng)
be.transpose_index(w)

def placed(offset):
    buf = np.empty(n * batch * 4 + 128, np.uint8)
    start = (offset - buf.ctypes.data) % 64
    a = buf[start:start + n * batch * 4].view(np.float32).reshape(n, batch)
    a[...] = rng.standard_normal((n, batch))
    return a

def median_us(fn, budget=0.4):
    for _ in range(10):
        fn()
    ts, t_end = [], time.perf_counter() + budget
    while len(ts) < 20 or time.perf_counter() < t_end:
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e6

operands = {off: (placed(off), placed(off)) for off in offsets}
calls = {"matmul": lambda x, dy: be.matmul(x, w), "matmul_t": lambda x, dy: be.matmul_t(dy, w),
         "weight_grad": lambda x, dy: be.weight_grad(x, dy, w),
         "backward": lambda x, dy: be.backward(x, dy, w)}
out = {name: {str(off): [] for off in offsets} for name in calls}
for _ in range(rounds):
    for off in offsets:
        x, dy = operands[off]
        for name, fn in calls.items():
            out[name][str(off)].append(median_us(lambda: fn(x, dy)))
print(json.dumps(out))
"""


def render(report: dict) -> str:
    offsets = report["offsets"]
    lines = ["# CPU products on operands off a cache line", "", *generated_header(report),
             f"Layer {report['n']} x {report['n']}, ε = 20, batch {report['batch']}, float32; "
             "both operands start the given number of bytes past a 64-byte line.  Median "
             "microseconds per call over the rounds (each round's figure is the median of at "
             "least 20 calls); in brackets, the ratio to offset 0.", ""]
    for run in report["runs"]:
        lines += [f"## {run['threads']} thread{'s' if run['threads'] > 1 else ''}", "",
                  "| product | " + " | ".join(f"offset {o}" for o in offsets) + " |",
                  "|---|" + "---|" * len(offsets)]
        for name in PRODUCTS:
            meds = [statistics.median(run["us"][name][str(o)]) for o in offsets]
            cells = [f"{m:.1f} ({m / meds[0]:.2f}×)" for m in meds]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--offsets", type=int, nargs="+", default=[0, 16, 32, 48])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if any(o % 4 or not 0 <= o < 64 for o in args.offsets):
        p.error("--offsets must be multiples of 4 in [0, 64)")
    if args.batch % 16:
        p.error("--batch must be a multiple of 16 (rows of whole cache lines)")
    report = new_report("operand_offsets.py", argv)
    report.update(offsets=args.offsets, n=args.size, batch=args.batch)
    for t in args.threads:
        us = child_json(CHILD, t, args.rounds, args.size, args.batch,
                        ",".join(map(str, args.offsets)))
        report["runs"].append({"threads": t, "us": us})
    save_report(args.out, "operand-offsets", report, render)
    print(render(report))


if __name__ == "__main__":
    main()
