"""Width sweep: truly sparse training cost grows with the connections, dense × mask with width².

MLPs 784-w-w-w-10 (ε = 20, Fashion-MNIST-shaped synthetic data: 784 standard-normal features,
10 random classes, batch 128) for w = 1 000, 10 000, 100 000, 1 000 000, each trained for a fixed
number of steps by three peers, every (peer, width) in its own process with explicit threads, an
address-space cap and a time cap:

* ``sparsekit`` — ``sparsekit.train`` (CPU backend, SET): a warm-up epoch of ``steps`` steps,
  a SET update, then a timed epoch of ``steps`` steps and an evaluation of 256 samples; the
  peak RSS is compared with :func:`sparsekit.estimate_memory`'s prediction.
* ``torch-dense-mask`` — PyTorch CPU, dense weights multiplied by a fixed 0/1 mask of the same
  Erdős–Rényi pattern (what masked sparse-training code does), SGD with momentum, weights
  re-masked after each step.
* ``scipy-reference`` — the approach of the public reference code (SET-MLP / Curci et al.):
  batch-major activations, ``scipy.sparse`` CSR products for the forward and the backward, the
  weight gradient on the pattern by a Numba ``prange`` loop over the connections reading
  strided columns (after a COO conversion every step), and momentum/decay updates as sparse
  matrix arithmetic that builds new CSR matrices every step.  float32 weights (the public code
  keeps float64, which would only slow it down).

A peer whose memory need (pre-checked) exceeds the cap, that runs out of memory, or that passes
the time cap is recorded as such.  Output: ``scaling.md``, ``scaling.json`` and ``scaling.png``
(log-log time and memory against width) in ``--out``.

    python benchmarks/scaling.py                     # the full sweep (~25 min on 2 cores)
    python benchmarks/scaling.py --quick             # widths 1 000 and 3 000, a few steps
    python benchmarks/scaling.py --lock /work/bench.lock   # hold a lock file around each case
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaling_peers import PEER_FUNCS, dense_bytes, scipy_bytes  # noqa: E402

WIDTHS = [1000, 10_000, 100_000, 1_000_000]
#: Timed steps per width (the same for every peer); one more untimed warm-up step (a warm-up
#: epoch of the same length for sparsekit).
STEPS = {1000: 20, 10_000: 5, 100_000: 3, 1_000_000: 2}
PEERS = list(PEER_FUNCS)
BATCH, EPSILON, N_TEST = 128, 20.0, 256
GIB = 2**30


def _series(r: dict) -> tuple[str, int]:
    return r["peer"], r["threads"]


def _label(series: tuple[str, int]) -> str:
    return f"{series[0]} ({series[1]} thread{'s' if series[1] > 1 else ''})"


def sizes_for(width: int) -> list[int]:
    return [784, width, width, width, 10]


def precheck(peer: str, width: int, steps: int, cap: int) -> str | None:
    """Why a case cannot fit in ``cap`` bytes, or None."""
    need = memory_need(peer, width, steps)
    if need > cap:
        return f"out of memory: needs ~{need / GIB:,.0f} GiB > cap {cap / GIB:.0f} GiB (pre-check)"
    return None


def memory_need(peer: str, width: int, steps: int) -> int:
    """Bytes a case needs, from sparsekit's estimator or the peer's own formula."""
    from sparsekit.training.memory import estimate_memory

    sizes = sizes_for(width)
    if peer == "sparsekit":
        need = estimate_memory(sizes, epsilon=EPSILON, batch_size=BATCH,
                               eval_batch_size=N_TEST, n_train=2 * steps * BATCH,
                               n_test=N_TEST).peak
    elif peer == "torch-dense-mask":
        need = dense_bytes(sizes, BATCH)
    else:
        need = scipy_bytes(sizes, EPSILON, BATCH)
    return int(need)


@contextlib.contextmanager
def held(lock: str | None):
    """Hold ``lock`` (a file, flock'ed) around one timed case so timed runs never overlap."""
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_case(peer: str, width: int, steps: int, threads: int, cap: int, time_cap: float,
             lock: str | None) -> dict:
    """One (peer, width) in a fresh process; always returns a record with a ``status``."""
    base = {"peer": peer, "width": width, "steps": steps, "threads": threads}
    why = precheck(peer, width, steps, cap)
    if why:
        return {**base, "status": "oom", "detail": why}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--worker", peer, "--width", str(width), "--steps",
           str(steps), "--threads", str(threads), "--mem-cap", str(cap)]
    t0 = time.perf_counter()
    with held(lock):
        base["loadavg_start"] = os.getloadavg()[0]  # the machine is shared: show contention
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=time_cap, env=env)
        except subprocess.TimeoutExpired:
            return {**base, "status": "timeout", "detail": f"exceeded the {time_cap:.0f} s cap",
                    "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    base["loadavg_end"] = os.getloadavg()[0]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**base, "status": "ok", "wall_s": wall, **json.loads(lines[-1])}
    err = (proc.stderr or proc.stdout).strip().splitlines()
    oom = any(s in proc.stderr for s in ("MemoryError", "Unable to allocate", "DefaultCPUAllocator",
                                         "std::bad_alloc", "Killed"))
    return {**base, "status": "oom" if oom or proc.returncode == -9 else "error", "wall_s": wall,
            "detail": (err[-1] if err else f"exit {proc.returncode}")[:300]}


def worker(peer: str, width: int, steps: int, threads: int, cap: int) -> None:
    """Run in the child: cap the address space, run the peer, print one JSON line."""
    # Address space, not RSS: libraries map more than they touch, hence the slack.
    limit = cap + 6 * GIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = PEER_FUNCS[peer](sizes_for(width), steps, threads, BATCH, EPSILON, N_TEST)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out), flush=True)


# --- report ---------------------------------------------------------------------------------
def _fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()}"


def headline(results: list[dict]) -> list[str]:
    """The targets of the issue, each with the figure that answers it."""
    ok = {_series(r) + (r["width"],): r for r in results if r["status"] == "ok"}
    by = {(r["peer"], r["width"]): r for r in results if r["threads"] == 2 or
          (r["peer"], r["width"]) not in {(q["peer"], q["width"]) for q in results
                                          if q["threads"] == 2}}
    rows = []
    for threads in sorted({t for p, t, _ in ok if p == "sparsekit"}, reverse=True):
        sk = sorted((w, r["ns_per_conn_sample"]) for (p, t, w), r in ok.items()
                    if p == "sparsekit" and t == threads)
        if len(sk) >= 2:
            (w0, t0), (w1, t1) = sk[0], sk[-1]
            mid = ", ".join(f"{w:,}: {t:.2f}" for w, t in sk)
            rows.append(f"| time per connection per sample, width {w1:,} vs {w0:,}, sparsekit "
                        f"{threads} thread(s) (target ≤ 2.5×, issue 17) | {t1:.2f} / {t0:.2f} ns = "
                        f"**{t1 / t0:.1f}×** (ns by width: {mid}) |")
    for threads in sorted({t for p, t, w in ok if p == "torch-dense-mask" and w == 10_000}):
        a, b = ok.get(("sparsekit", threads, 10_000)), ok.get(("torch-dense-mask", threads,
                                                               10_000))
        if a and b:
            rows.append(f"| step at width 10 000, {threads} thread(s): PyTorch dense × mask / "
                        f"sparsekit (target ≥ 50×) | {_fmt_time(b['step_s'])} / "
                        f"{_fmt_time(a['step_s'])} = **{b['step_s'] / a['step_s']:.0f}×** |")
    t100 = by.get(("torch-dense-mask", 100_000))
    s100 = [r for r in results if r["peer"] == "sparsekit" and r["width"] == 100_000]
    if t100 and s100:
        rows.append(f"| width 100 000 (target: dense cannot run, sparsekit trains) | dense × mask: "
                    f"{t100['status']} ({t100.get('detail', '')}); sparsekit: "
                    + "; ".join(f"{r['status']}, {_fmt_time(r.get('step_s'))} per step with "
                                f"{r['threads']} thread(s), peak RSS "
                                f"{r.get('peak_rss', 0) / GIB:.2f} GiB" for r in s100) + " |")
    errs = [(w, t, r["predicted_peak"] / r["peak_rss"]) for (p, t, w), r in sorted(ok.items())
            if p == "sparsekit" and r.get("predicted_peak")]
    if errs:
        rows.append("| estimate_memory prediction / measured peak RSS (target within 20 %) | "
                    + ", ".join(f"{w:,} ({t} thr): {x:.2f}" for w, t, x in errs) + " |")
    return rows


def write_report(results: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "command": command, "batch": BATCH, "epsilon": EPSILON,
            "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_end": os.getloadavg()}
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["# Width sweep: sparsekit vs PyTorch dense × mask vs the SciPy reference approach",
             "", f"`{command}` on {meta['machine']}, {meta['date']} (load average at the end "
             f"{meta['loadavg_end'][0]:.1f}). MLP 784-w-w-w-10, ε = 20, batch 128, synthetic "
             "Fashion-MNIST-shaped data; every case in its own process (threads as listed, "
             "address-space and time caps). FLOPs per step from `sparsekit.training.flops` "
             "(forward, backward, weight gradient, update); the dense column is a dense "
             "network of the same shape. Raw data: `scaling.json`; plot: `scaling.png`.", "",
             "## Headline figures", "", "| target | measured |", "|---|---|",
             *headline(results), "",
             "## All cases", "",
             "| width | peer | threads | status | connections | time / step | "
             "ns / connection / sample | peak RSS | FLOPs / step (sparse) | FLOPs / step "
             "(dense) | predicted peak | load avg |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: (r["width"], PEERS.index(r["peer"]), -r["threads"])):
        if r["status"] != "ok":
            lines.append(f"| {r['width']:,} | {r['peer']} | {r['threads']} | {r['status']}: "
                         f"{r.get('detail', '')} | | | | | | | | |")
            continue
        pred = r.get("predicted_peak")
        lines.append(
            f"| {r['width']:,} | {r['peer']} | {r['threads']} | ok | {r['connections']:,} | "
            f"{_fmt_time(r['step_s'])} | {r['ns_per_conn_sample']:.2f} | "
            f"{r['peak_rss'] / GIB:.2f} GiB | {r['flops_step']:.3g} | {r['flops_dense_step']:.3g}"
            f" | {f'{pred / GIB:.2f} GiB' if pred else '–'} | {r.get('loadavg_start', 0):.1f}"
            f"–{r.get('loadavg_end', 0):.1f} |")
    lines += ["", "The machine is shared (load average column): with two threads, every OpenMP "
              "or ATen parallel region waits at its barrier for a thread that another process "
              "may be holding off its core for a scheduler slice (milliseconds), which swamps "
              "small steps (width 1 000) and inflates every two-thread figure; the one-thread "
              "rows do not have that wait and are the ones to compare across widths.",
              "", "ns / connection / sample = time per step / (128 × connections of the sparse "
              "network), for every peer (the dense peer does the work of all n_in × n_out "
              "entries but is charged per sparse connection, as the comparison is per useful "
              "connection)."]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "scaling.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [("step_s", "time per step (s)"), ("ns_per_conn_sample",
                                                 "ns per connection per sample"),
              ("peak_rss", "peak RSS (GiB)")]
    series = sorted({_series(r) for r in results}, key=lambda s: (PEERS.index(s[0]), -s[1]))
    for ax, (key, label) in zip(axes, panels):
        for ser, marker in zip(series, "osD^v<>"):
            pts = [(r["width"], r[key] / (GIB if key == "peak_rss" else 1))
                   for r in results if _series(r) == ser and r["status"] == "ok"]
            if pts:
                line, = ax.plot(*zip(*sorted(pts)), marker=marker, label=_label(ser))
                # Where a peer could not run, an x at its last point's height, labelled.
                for r in results:
                    if _series(r) == ser and r["status"] != "ok":
                        ax.plot(r["width"], sorted(pts)[-1][1], "x", ms=10,
                                color=line.get_color())
                        ax.annotate(r["status"], (r["width"], sorted(pts)[-1][1]),
                                    textcoords="offset points", xytext=(4, 4), fontsize=8,
                                    color=line.get_color())
                # What a peer refused by the pre-check would have needed.
                need = [(r["width"], memory_need(r["peer"], r["width"], r["steps"]) / GIB)
                        for r in results if _series(r) == ser and r["status"] == "oom"
                        and "pre-check" in r.get("detail", "")]
                if key == "peak_rss" and need:
                    ax.plot(*zip(*sorted([pts[-1]] + need)), ":", marker=marker, mfc="none",
                            color=line.get_color(), label=f"{_label(ser)}: needed")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hidden width w (784-w-w-w-10, ε = 20)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].axhline(24, color="grey", lw=0.8)
    axes[2].annotate("this machine: 24 GiB", (1000, 24), fontsize=8, va="bottom")
    fig.suptitle("Truly sparse training scales with the connections (batch 128, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps for every width")
    p.add_argument("--mem-cap", default="20GiB", help="per-case memory cap (default 20GiB)")
    p.add_argument("--time-cap", type=float, default=600.0, help="per-case seconds (600)")
    p.add_argument("--lock", default=None, help="flock this file around each case")
    p.add_argument("--quick", action="store_true", help="widths 1000 and 3000, 3 steps")
    p.add_argument("--append", action="store_true",
                   help="add to the results already in OUT/scaling.json (replacing the same "
                        "peer, width and threads), e.g. a one-thread series")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--report-only", action="store_true",
                   help="rewrite scaling.md/png from OUT/scaling.json without running")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from sparsekit.training.memory import parse_bytes

    cap = int(parse_bytes(args.mem_cap, "--mem-cap"))
    if args.worker:
        worker(args.worker, args.width, args.steps, args.threads, cap)
        return 0
    if args.report_only:
        saved = json.loads((Path(args.out) / "scaling.json").read_text())
        write_report(saved["results"], Path(args.out), saved["meta"]["command"])
        return 0
    widths = args.widths or ([1000, 3000] if args.quick else WIDTHS)
    results = []
    for width in widths:
        steps = args.steps or (3 if args.quick else STEPS.get(width, 3))
        for peer in args.peers:
            r = run_case(peer, width, steps, args.threads, cap, args.time_cap, args.lock)
            print(json.dumps({k: v for k, v in r.items() if not isinstance(v, (list, dict))}),
                  flush=True)
            results.append(r)
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    out = Path(args.out)
    if args.quick:
        out = out / "quick"
    if args.append and (out / "scaling.json").exists():
        old = json.loads((out / "scaling.json").read_text())
        keys = {_series(r) + (r["width"],) for r in results}
        results = [r for r in old["results"] if _series(r) + (r["width"],) not in keys] + results
        command = old["meta"]["command"] + "; " + command.strip()
    write_report(results, out, command.strip())
    print(f"wrote {out / 'scaling.md'}, scaling.json, scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
