"""Training-step time of truly sparse layers inside PyTorch: sparsekit.torch vs SparseLab 0.2.2,
SparseProp 0.1.14 and dense ``torch.nn.Linear``, on the CPU.

Cases (``--cases``):

* ``mlp`` — the default Fashion-MNIST network 784-1000-1000-1000-10 at Erdős–Rényi ε = 20
  (every library gets the same per-layer connection counts), batch 128, SGD with momentum 0.9,
  cross-entropy; SET (ζ = 0.3) once per epoch (469 steps of 128 of 60 000 samples).  The figure
  is ``step + update / 469``: the median training step (forward, backward, optimizer, the
  library's per-step hook) plus the median SET update spread over its epoch.  SparseProp has
  fixed masks: its figure is the step alone.  ``sparsekit-mlp`` is the same network as one
  :class:`sparsekit.torch.SparseMLP` (whole passes) instead of ``SparseLinear`` layers in
  ``nn.Sequential``.
* ``ffn384`` / ``ffn640`` — SparseLab's transformer shapes: one 384 -> 1536 (640 -> 2560)
  projection at 90 % sparsity, batch 1024: forward, backward from a fixed upstream gradient
  (batch-major, as torch hands it over) with the input gradient (as inside a network), SGD
  with momentum.

* ``wide90`` / ``wide99`` (``--device cuda`` on a GPU machine; ``cpu`` works too) — one
  4096 -> 4096 layer at 90 % / 99 % sparsity, batch 1024, the same step, against dense
  ``nn.Linear`` and ``torch.sparse`` CSR (``torch.sparse.mm`` with the values as the parameter):
  libraries ``sparsekit,dense,torchcsr``.

Each library runs in its own process (the peers from their own environment, ``--peers-python``,
never the system one: ``python -m venv --system-site-packages /tmp/peers-venv`` then
``/tmp/peers-venv/bin/pip install sparselab==0.2.2 sparseprop==0.1.14``), with the same torch
thread count (``--threads``, also the kernels' OpenMP threads), the libraries alternating within
each round; per library and case the reported figure is the median over rounds of each round's
median step.  Results go to ``benchmarks/results/torch-peers.{json,md}`` with the machine and
the command.  Run heavy measurements as ``flock /tmp/bench.lock python benchmarks/torch_peers.py``.
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

HERE = Path(__file__).resolve().parent
LIBS = ("sparsekit", "sparselab", "sparseprop", "dense")
MLP_LIBS = ("sparsekit-mlp",)  # the mlp case only
WIDE_LIBS = ("sparsekit", "dense", "torchcsr")
MLP = [784, 1000, 1000, 1000, 10]
EPOCH_STEPS = 469  # 60 000 / 128, rounded up
FFN = {"ffn384": (384, 1536), "ffn640": (640, 2560)}
WIDE = {"wide90": 0.1, "wide99": 0.01}


def er_nnz(n_in: int, n_out: int, epsilon: float = 20.0) -> int:
    return int(min(n_in * n_out, round(epsilon * (n_in + n_out))))


# --- one library in one process --------------------------------------------------------------
def _layers(lib: str, shapes, densities, torch):
    """One linear layer per (n_in, n_out) with the given density (1.0: fully connected)."""
    out = []
    for i, ((n_in, n_out), d) in enumerate(zip(shapes, densities)):
        if lib == "dense":
            out.append(torch.nn.Linear(n_in, n_out))
        elif lib == "sparsekit":
            from sparsekit.torch import SparseLinear

            out.append(SparseLinear(n_in, n_out, density=d, seed=i))
        elif lib == "sparselab":
            import sparselab

            out.append(sparselab.SparseLinear(n_in, n_out, sparsity=1.0 - d))
        elif lib == "torchcsr":
            out.append(_TorchCSR(n_in, n_out, d, torch))
        else:  # sparseprop builds from a dense masked weight (its own API)
            from sparseprop.modules.linear import SparseLinear as SPLinear

            lin = torch.nn.Linear(n_in, n_out)
            mask = torch.rand(n_out, n_in) < d
            out.append(SPLinear(lin.weight.data * mask, torch.nn.Parameter(lin.bias.data.clone())))
    return out


def _TorchCSR(n_in: int, n_out: int, density: float, torch):
    """A linear layer whose weight is a ``torch.sparse_csr_tensor`` (values are the parameter);
    its pattern comes from sparsekit's sampler, with no dense mask."""
    import numpy as np

    from sparsekit.nn.init import uniform_pattern

    indptr, indices = uniform_pattern(n_out, n_in, round(density * n_in * n_out),
                                      np.random.default_rng(0))

    class CSRLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("crow", torch.from_numpy(indptr.astype(np.int64)))
            self.register_buffer("col", torch.from_numpy(indices.astype(np.int64)))
            bound = 1 / np.sqrt(density * n_in)
            self.values = torch.nn.Parameter(torch.empty(indices.shape[0]).uniform_(-bound,
                                                                                     bound))
            self.bias = torch.nn.Parameter(torch.zeros(n_out))

        def forward(self, x):
            w = torch.sparse_csr_tensor(self.crow, self.col, self.values, (n_out, n_in),
                                        check_invariants=False)
            return torch.sparse.mm(w, x.T).T + self.bias

    return CSRLinear()


def worker(lib: str, case: str, threads: int, steps: int, warmup: int,
           device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if lib in MLP_LIBS and case != "mlp":
        raise SystemExit(f"{lib} runs the mlp case only")
    if lib == "sparsekit-mlp":
        from sparsekit.torch import SparseMLP

        net = SparseMLP(MLP, 20.0, seed=0)  # Erdős–Rényi: er_nnz connections per layer
        x, y = torch.randn(128, MLP[0]), torch.randint(0, MLP[-1], (128,))

        def loss_fn():
            return torch.nn.functional.cross_entropy(net(x), y)
    elif case == "mlp":
        shapes = list(zip(MLP[:-1], MLP[1:]))
        densities = [er_nnz(a, b) / (a * b) for a, b in shapes]
        layers = _layers(lib, shapes, densities, torch)
        mods = []
        for layer in layers:
            mods += [layer, torch.nn.ReLU()]
        net = torch.nn.Sequential(*mods[:-1])
        x, y = torch.randn(128, MLP[0]), torch.randint(0, MLP[-1], (128,))

        def loss_fn():
            return torch.nn.functional.cross_entropy(net(x), y)
    else:
        n_in, n_out = FFN.get(case, (4096, 4096))
        net = _layers(lib, [(n_in, n_out)], [WIDE.get(case, 0.1)], torch)[0].to(device)
        x = torch.randn(1024, n_in, device=device, requires_grad=True)
        g = torch.randn(1024, n_out, device=device)

        def loss_fn():  # backward from a fixed upstream gradient, as inside a network
            return (net(x), g)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    hook = update = None
    if case == "mlp" and lib in ("sparsekit", "sparsekit-mlp"):
        from sparsekit.torch import DynamicSparsity

        hook = DynamicSparsity(net, opt, "set", every=EPOCH_STEPS, seed=0).step
        update = DynamicSparsity(net, opt, "set", every=1, seed=1).step
    elif case == "mlp" and lib == "sparselab":
        import sparselab

        algo = sparselab.SET(sparsity=0.95, drop_fraction=0.3, update_freq=EPOCH_STEPS, seed=0)
        net.apply(algo)
        hook, update = algo.step, algo.update

    def step():
        opt.zero_grad(set_to_none=True)
        out = loss_fn()
        if isinstance(out, tuple):
            out[0].backward(out[1])
        else:
            out.backward()
        opt.step()
        if hook is not None:
            hook()

    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {"step_s": statistics.median(times), "steps": steps,
           "params": sum(p.numel() for p in net.parameters())}
    if update is not None:
        ups = []
        for _ in range(5):
            step()
            t0 = time.perf_counter()
            update()
            ups.append(time.perf_counter() - t0)
        out["update_s"] = statistics.median(ups)
        out["per_step_s"] = out["step_s"] + out["update_s"] / EPOCH_STEPS
    else:
        out["per_step_s"] = out["step_s"]
    return out


# --- the driver ------------------------------------------------------------------------------
def run_one(python: str, lib: str, case: str, args) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", lib, "--cases", case,
           "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# sparsekit.torch vs SparseLab 0.2.2, SparseProp 0.1.14 and dense nn.Linear (CPU)",
             "", f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
             f"{report['torch']}; load average before the run {m['loadavg']} (a shared "
             "machine: other jobs ran meanwhile).", "",
             f"Command: `{report['command']}`", "",
             f"{report['threads']} thread(s) for every library; {report['rounds']} rounds, each "
             f"library in its own process per round, {report['steps']} timed steps after "
             f"{report['warmup']} warm-up ones; figures are the median over rounds of the "
             "per-round median, in milliseconds per training step.  MLP: step + SET update / "
             f"{EPOCH_STEPS} (SET once per epoch; SparseProp has no topology update).", "",
             f"Device: {report['device']}.", ""]
    columns = [lib for lib in LIBS + MLP_LIBS + WIDE_LIBS[2:]
               if any(lib in res for res in report["results"].values())]
    lines += ["| case | " + " | ".join(columns) + " | sparsekit: fastest other sparse / it "
              "| dense / sparsekit |", "|---" * (len(columns) + 3) + "|"]
    for case, res in report["results"].items():
        cells, peers = [], []
        for lib in columns:
            r = res.get(lib, {})
            if "per_step_ms" in r:
                extra = f" (update {r['update_ms']:.1f})" if "update_ms" in r else ""
                cells.append(f"{r['per_step_ms']:.2f}{extra}")
                if lib in ("sparselab", "sparseprop", "torchcsr"):
                    peers.append(r["per_step_ms"])
            else:
                cells.append("failed: " + r["error"] if "error" in r else "")
        sk = res.get("sparsekit", {}).get("per_step_ms")
        dense = res.get("dense", {}).get("per_step_ms")
        ratio = f"{min(peers) / sk:.2f}x" if peers and sk else "n/a"
        vs_dense = f"{dense / sk:.2f}x" if dense and sk else "n/a"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {ratio} | {vs_dense} |")
    if report["device"] != "cuda":
        lines += ["", "GPU: not measured (no GPU machine was lent to this run); the step time on "
                  "CUDA tensors vs dense nn.Linear and torch.sparse CSR at 90-99 % sparsity is "
                  "owed (python benchmarks/torch_peers.py --device cuda --cases wide90,wide99)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="mlp,ffn384,ffn640")
    p.add_argument("--libs", default=None, help="default: " + ",".join(LIBS) + " (wide cases: "
                   + ",".join(WIDE_LIBS) + ")")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the wide cases")
    p.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    p.add_argument("--out", default=str(HERE / "results" / "torch-peers"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.cases, args.threads, args.steps, args.warmup,
                                args.device)))
        return
    sys.path.insert(0, str(HERE))
    import torch
    from _machine import describe

    report = {"machine": describe(), "torch": torch.__version__, "threads": args.threads,
              "device": args.device,
              "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
              "command": "python benchmarks/torch_peers.py " + " ".join(sys.argv[1:]),
              "results": {}}
    cases = args.cases.split(",")
    chosen = {c: args.libs.split(",") if args.libs else list(
        WIDE_LIBS if c in WIDE else LIBS + MLP_LIBS if c == "mlp" else LIBS) for c in cases}
    chosen = {c: [lib for lib in libs if lib not in MLP_LIBS or c == "mlp"]
              for c, libs in chosen.items()}
    raw = {c: {lib: [] for lib in chosen[c]} for c in cases}
    for rnd in range(args.rounds):
        for case in cases:
            libs = chosen[case]
            order = libs[rnd % len(libs):] + libs[:rnd % len(libs)]  # alternate who goes first
            for lib in order:
                python = args.peers_python if lib in ("sparselab", "sparseprop") else sys.executable
                r = run_one(python, lib, case, args)
                raw[case][lib].append(r)
                print(f"round {rnd} {case:<7} {lib:<10} "
                      + (f"{1e3 * r['per_step_s']:.2f} ms" if "per_step_s" in r else str(r)),
                      flush=True)
    for case in cases:
        out = report["results"][case] = {}
        for lib in chosen[case]:
            ok = [r for r in raw[case][lib] if "per_step_s" in r]
            if not ok:
                out[lib] = {"error": raw[case][lib][0].get("error", "failed")}
                continue
            out[lib] = {"per_step_ms": 1e3 * statistics.median(r["per_step_s"] for r in ok),
                        "step_ms": 1e3 * statistics.median(r["step_s"] for r in ok),
                        "params": ok[0]["params"], "rounds": [1e3 * r["per_step_s"] for r in ok]}
            if "update_s" in ok[0]:
                out[lib]["update_ms"] = 1e3 * statistics.median(r["update_s"] for r in ok)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
