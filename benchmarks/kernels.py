"""CPU kernel benchmark: sparsekit side by side with SciPy, torch and dense NumPy.

Run ``python benchmarks/kernels.py`` (full, about 10 minutes on 2 cores) or ``--quick`` (under a
minute, no 100 000² layer, 2 threads only); ``nox -s bench`` runs it in a fresh environment.

Each peer runs in its own subprocess with OMP/MKL/OpenBLAS thread counts and
``torch.set_num_threads`` set explicitly (OpenMP, OpenBLAS and MKL pools spin after a parallel
region, so mixing them in one process distorts timings); results come back as JSON.  The machine's
limits (sgemm FLOP/s, copy/triad bandwidth) are measured in the same run, in their own process.
Writes ``benchmarks/results/cpu-kernels.{md,json}`` (``cpu-kernels-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if (ROOT / "sparsekit").is_dir():  # benchmark the checkout, not some other installed copy
    sys.path.insert(0, str(ROOT))

import kernels_report as report  # noqa: E402

BATCH = 128
LAYERS = [
    {"name": "784x1000", "title": "784 → 1000, ε = 20", "n_in": 784, "n_out": 1000,
     "epsilon": 20.0},
    {"name": "1000x1000", "title": "1000 → 1000, ε = 20", "n_in": 1000, "n_out": 1000,
     "epsilon": 20.0},
    # ER with ε = 50 gives exactly 1 % (10 000²) and 0.1 % (100 000²)
    {"name": "10000x10000", "title": "10 000², 1 %", "n_in": 10_000, "n_out": 10_000,
     "epsilon": 50.0},
    {"name": "100000x100000", "title": "100 000², 0.1 %", "n_in": 100_000, "n_out": 100_000,
     "epsilon": 50.0},
]
FULL = {"warmup": 2, "min_repeats": 5, "max_repeats": 200, "budget_s": 0.4,
        "clean_wait_s": 3.0, "clean_wait_total_s": 10.0,
        "sgemm_n": 4096, "stream_n": 1 << 26}
QUICK = {"warmup": 1, "min_repeats": 5, "max_repeats": 40, "budget_s": 0.05,
         "clean_wait_s": 1.0, "clean_wait_total_s": 3.0,
         "sgemm_n": 2048, "stream_n": 1 << 25}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --- worker side ---------------------------------------------------------------------------------
def worker(job_file: Path) -> None:
    import kernels_peers as peers
    import numpy as np

    job = json.loads(job_file.read_text())
    threads, cfg, data_dir = job["threads"], job["cfg"], Path(job["data_dir"])
    # A busy neighbour core slows even a 1-thread peer here (measured up to 1.6x: shared
    # caches, memory, or host SMT siblings), so every peer asks for the same quiet.
    cfg["foreign_limit"] = 0.3
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(threads)
        pools = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                         "threading_layer", "architecture")}
                 for p in threadpool_info()]
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
        pools = []
    out: dict = {"peer": job["peer"], "threads": threads, "pid": os.getpid(),
                 "threadpools": pools, "loadavg_start": peers.loadavg(), "layers": {}}
    if job["peer"] == "prepare":
        out["prepared"] = peers.prepare(job["layers"], data_dir, BATCH)
    elif job["peer"] == "machine":
        out["machine"] = peers.machine(cfg, threads)
        out["versions"] = {"numpy": np.__version__, "scipy": __import__("scipy").__version__}
    else:
        fn = peers.PEERS[job["peer"]]
        for spec in job["layers"]:
            t0 = time.perf_counter()
            try:
                res = fn(spec, data_dir, cfg, threads)
            except Exception as exc:  # keep the other layers; the run reports the failure
                res = {"error": f"{type(exc).__name__}: {exc}"}
            res["wall_s"] = time.perf_counter() - t0
            res["loadavg"] = peers.loadavg()
            out["layers"][spec["name"]] = res
            gc.collect()
        if job["peer"] == "torch":
            import torch

            out["versions"] = {"torch": torch.__version__}
    out["loadavg_end"] = peers.loadavg()
    out["maxrss_mib"] = peak_rss_mib()
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    Path(job["out"]).write_text(json.dumps(out))


def peak_rss_mib() -> float | None:
    """VmHWM of this process (ru_maxrss would include the parent image a child forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --- orchestration -------------------------------------------------------------------------------
def cpu_busy_seconds() -> float:
    """CPU-seconds spent busy on the whole machine (all containers) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(max_wait_s: float, threshold: float = 0.25) -> dict:
    """Wait (up to ``max_wait_s``) until other jobs use under ``threshold`` of a core."""
    t0 = time.perf_counter()
    while True:
        b0, w0 = cpu_busy_seconds(), time.perf_counter()
        time.sleep(0.5)
        busy = (cpu_busy_seconds() - b0) / (time.perf_counter() - w0)
        waited = time.perf_counter() - t0
        if busy < threshold or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_cores_busy": round(busy, 2)}


def run_peer(peer: str, threads: int, layers, cfg, tmp: Path, max_wait_s: float = 0) -> dict:
    tag = "-".join([peer, str(threads)] + [spec["name"] for spec in layers])
    job = {"peer": peer, "threads": threads, "layers": layers, "cfg": cfg,
           "data_dir": str(tmp), "out": str(tmp / f"{tag}.json")}
    job_file = tmp / f"job-{tag}.json"
    job_file.write_text(json.dumps(job))
    env = dict(os.environ)
    for var in THREAD_ENV:
        env[var] = str(threads)
    # One OpenMP wait policy for every peer: sparsekit's default (passive) unless the caller
    # set one; libgomp in torch would otherwise spin while sparsekit sleeps.
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "passive")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    quiet = wait_quiet(max_wait_s)
    names = " ".join(spec["name"] for spec in layers) if peer != "prepare" else ""
    print(f"[kernels] {peer:9s} threads={threads} {names:13s} ...", end="", file=sys.stderr,
          flush=True)
    t0, busy0, own0 = time.perf_counter(), cpu_busy_seconds(), children_cpu_seconds()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           str(job_file)], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    # CPU time the machine spent on anything but this peer, per second of the peer's run
    foreign = (cpu_busy_seconds() - busy0) - (children_cpu_seconds() - own0)
    quiet["other_cores_busy_during"] = round(max(foreign, 0.0) / dt, 2)
    if proc.returncode != 0:
        print(f" FAILED ({dt:.0f} s)\n{proc.stderr[-4000:]}", file=sys.stderr)
        return {"error": proc.stderr[-4000:], "wall_s": dt}
    res = json.loads(Path(job["out"]).read_text())
    res["wall_s"] = dt
    res["quiet"] = quiet
    errs = [f"{k}: {v['error']}" for k, v in res.get("layers", {}).items()
            if isinstance(v, dict) and "error" in v]
    print(f" {dt:.0f} s, load {res['loadavg_end'].split()[0]}, other jobs "
          f"{quiet['other_cores_busy_during']:.2f} cores"
          + (f"  ERRORS: {errs}" if errs else ""), file=sys.stderr)
    return res


def best_limits(runs: list[dict]) -> dict:
    """The machine-limit run with the highest P, with P and BW the best over all runs."""
    best = dict(max(runs, key=lambda m: m["P_gflops"]))
    best["P_gflops"] = max(m["P_gflops"] for m in runs)
    best["BW_gbs"] = max(m["BW_gbs"] for m in runs)
    return best


def machine_description() -> dict:
    info: dict = {"python": platform.python_version(), "platform": platform.platform(),
                  "cpus_usable": len(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name") and "cpu_model" not in info:
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "flags" not in info:
                flags = line.split(":", 1)[1].split()
                info["flags"] = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))]
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["caches"] = {ln.split(":")[0].strip(): ln.split(":", 1)[1].strip()
                          for ln in lscpu.splitlines() if "cache" in ln.split(":")[0]}
        info["hypervisor"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                                   if ln.startswith("Hypervisor vendor")), None)
    except OSError:
        pass
    try:
        git = ["git", "-C", str(ROOT)]
        info["sparsekit_commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "sparsekit/_cython",
                                      "sparsekit/backends", "sparsekit/nn/csr.py",
                                      "sparsekit/nn/init.py", "setup.py"],
                               capture_output=True, text=True).stdout.strip()
        info["sparsekit_tree_dirty"] = bool(dirty)
    except OSError:
        pass
    stale = [p.name for p in (ROOT / "sparsekit" / "_cython").glob("*.pyx")
             if not any(so.stat().st_mtime >= p.stat().st_mtime
                        for so in p.parent.glob(p.stem + ".*.so"))]
    if stale:
        info["stale_build"] = stale
    return info


def set_step_only(layers, cfg, args) -> int:
    """``--only set-step``: one SET step vs one forward, per layer, at 1 and 2 threads; prints a
    table of medians (ms) and writes ``cpu-kernels-set-step.json``."""
    phases = ("prune", "regrow", "rebuild", "total", "transpose_index")
    rows, results = [], {"command": "python benchmarks/kernels.py --only set-step", "cfg": cfg,
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "layers": {}}
    with tempfile.TemporaryDirectory(prefix="sparsekit-bench-") as tmp:
        prep = run_peer("prepare", 2, layers, cfg, Path(tmp))
        if "error" in prep:
            return 1
        for spec in prep["prepared"]:
            for t in (1, 2):
                res = run_peer("set-step", t, [spec], cfg, Path(tmp), args.max_wait)
                got = res.get("layers", {}).get(spec["name"], {})
                if "error" in res or "error" in got:
                    return 1
                results["layers"].setdefault(spec["name"], {})[str(t)] = got
                ms = {k: got["set_step"][k]["median"] * 1e3 for k in phases}
                fwd = got["kernels"]["fwd"]["median"] * 1e3
                rows.append(f"| {spec['name']} | {t} | {fwd:.3f} | "
                            + " | ".join(f"{ms[k]:.3f}" for k in phases)
                            + f" | {ms['total'] / fwd:.2f}x |")
    md = ("| layer | threads | fwd | prune | regrow | rebuild | step | transpose | step/fwd |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print("Medians in ms (step = prune + regrow + rebuild; the transpose index apart)\n\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-kernels-set-step.json").write_text(json.dumps(results, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: no 100 000² layer, 2 threads only, few repeats")
    ap.add_argument("--layers", nargs="+", choices=[s["name"] for s in LAYERS],
                    help="subset of layers")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="folder for cpu-kernels.{md,json}")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait before each peer for other jobs to go quiet "
                    "(default 5, 0 with --quick)")
    ap.add_argument("--only", choices=["set-step"],
                    help="one section: 'set-step' times one SET step (prune, regrow, rebuild, "
                    "transpose index) against one forward product, sparsekit only, 1 and 2 "
                    "threads (1000^2 and 10 000^2 unless --layers)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    cfg = QUICK if args.quick else FULL
    if args.max_wait is None:
        args.max_wait = 0.0 if args.quick else 5.0
    layers = [s for s in LAYERS if (args.layers is None or s["name"] in args.layers)
              and (not args.quick or args.layers or s["n_in"] <= 10_000)]
    if args.only == "set-step":
        if args.layers is None:
            layers = [s for s in LAYERS if s["name"] in ("1000x1000", "10000x10000")]
        return set_step_only(layers, cfg, args)
    headline = 2
    threads_list = [2] if args.quick else [2, 1]
    # The targets are at 2 threads; sparsekit and SciPy also run at 1 thread (the
    # reproducible figure on a shared machine), with the machine limits at both counts.  Each
    # layer's peers run back to back, so a ratio compares timings taken minutes apart at most.
    plan = [("machine", t, []) for t in threads_list]  # again at the end, see below
    for spec in layers:
        plan += [(p, headline, [spec["name"]]) for p in ("sparsekit", "scipy", "torch", "dense")]
        plan += [(p, t, [spec["name"]]) for t in threads_list if t != headline
                 for p in ("sparsekit", "scipy")]
    # The limits are maxima: measuring them at both ends of the run and keeping the best makes
    # a neighbour's job during one of the two less likely to lower P or BW.
    plan += [("machine", t, []) for t in threads_list]
    command = "python benchmarks/kernels.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    results: dict = {"command": command.strip(), "started": started,
                     "machine": machine_description(), "batch": BATCH, "cfg": cfg,
                     "loadavg_start": Path("/proc/loadavg").read_text().strip(), "peers": {},
                     "processes": []}
    with tempfile.TemporaryDirectory(prefix="sparsekit-bench-") as tmp:
        prep = run_peer("prepare", headline, layers, cfg, Path(tmp))
        if "error" in prep:
            return 1
        layers = prep["prepared"]
        by_name = {spec["name"]: spec for spec in layers}
        for peer, t, names in plan:
            res = run_peer(peer, t, [by_name[n] for n in names], cfg, Path(tmp), args.max_wait)
            slot = results["peers"].setdefault(peer, {}).setdefault(str(t), {"layers": {}})
            slot["layers"].update(res.pop("layers", {}) or {})
            if "error" in res:
                for n in names:
                    slot["layers"][n] = {"error": res["error"]}
            for key in ("versions", "threadpools", "peer", "threads", "omp_wait_policy"):
                if key in res:
                    slot[key] = res[key]
            if res.get("machine"):
                slot.setdefault("machine_runs", []).append(res["machine"])
                slot["machine"] = best_limits(slot["machine_runs"])
            results["processes"].append(
                {"peer": peer, "threads": t, "layers": names,
                 **{k: res.get(k) for k in ("wall_s", "quiet", "loadavg_start", "loadavg_end",
                                            "maxrss_mib", "error")}})
    results["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    results["wall_s"] = time.perf_counter() - t_start
    results["layers"] = layers
    flat = {peer: {t: (r.get("layers") if peer != "machine" else {"machine": r.get("machine")})
                   for t, r in by_t.items()} for peer, by_t in results["peers"].items()}
    for by_t in flat.values():
        for t, per in list(by_t.items()):
            by_t[t] = per or {}
    results["summary"] = report.summarize(flat, layers, threads_list, BATCH)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu-kernels-quick" if args.quick else "cpu-kernels"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    md = report.render_markdown(results, layers, threads_list, headline)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"[kernels] wrote {args.out / stem}.md and .json in {results['wall_s']:.0f} s",
          file=sys.stderr)
    failed = [f"{p}/{t}/{name}" for p, by_t in results["peers"].items()
              for t, r in by_t.items() for name, v in r.get("layers", {}).items()
              if isinstance(v, dict) and "error" in v]
    failed += [f"{pr['peer']}/{pr['threads']}" for pr in results["processes"] if pr.get("error")]
    if failed:
        print(f"[kernels] FAILED peers: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
