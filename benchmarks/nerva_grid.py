"""Nerva's published density grid: sparsekit against PyTorch dense weights x binary mask.

What is measured
----------------
The MLP of Nerva's CPU comparison (Wesselink et al. 2024), 3072-1024-1024-1024-10 (CIFAR-10
shaped), batch 100, ReLU, no dropout (``--dropout``), softmax cross-entropy, SGD lr 0.01
momentum 0.9 without weight decay, at densities 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5 — the
same density in every layer, the 1024 -> 10 output layer included.  The data are synthetic:
``--samples`` (default 10 000) standard-Gaussian 3072-feature inputs with uniformly random
labels, drawn with a fixed seed in every process.  Only the speed is of interest, not what is
learnt.

Peers, each (peer, density) in its own process with the same explicit thread count
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``torch.set_num_threads``,
``OMP_WAIT_POLICY=passive`` for all):

``sparsekit``
    ``sparsekit.train`` on a ``SparseMLP.from_layers`` model whose layers hold exactly
    ``round(density * n_in * n_out)`` links each (uniformly placed, He-uniform values).
    ``train(..., epsilon=...)`` takes one ε for all layers and ε gives
    ``ε * (n_in + n_out)`` links, which is not one density for the 3072 x 1024, 1024 x 1024 and
    1024 x 10 layers; so every layer is drawn by ``SparseLayer.random`` with its own
    ``ε = density * n_in * n_out / (n_in + n_out)``, and the link count is checked.  SET
    (ζ = 0.3) once per pass over the data (``--method static`` for none); its update time is
    measured apart (``time_evolve``), not inside the step.
``torch-masked-dense``
    ``torch.nn.Linear`` weights times a fixed binary mask with exactly the same link count
    per layer, in every forward pass; no topology change.
``torch-dense``
    Plain ``torch.nn.Linear``, fully connected: the reference line (density independent, run
    once).

Each process trains ``--warmup-epochs`` + ``--epochs`` passes over the samples (100 steps per
pass at the defaults); ``sparsekit.train`` reports time per pass only, so for every peer the
step time is the median over the timed passes of ``pass seconds / steps`` (batch gather,
forward, backward, optimizer).  The time per 50 000-sample epoch is ``500 * step`` plus, for
sparsekit with SET, one topology update.  Reported: dense x mask / sparsekit per density, that
ratio at 99 % sparsity (density 0.01; Nerva reports about 4x over PyTorch there, our target is
>= 10x) and the density below which sparsekit is faster than dense x mask.

Reproduce (on a quiet machine; never two benchmarks at once)::

    flock /tmp/bench.lock python benchmarks/nerva_grid.py --threads 2

Results: ``benchmarks/results/nerva-grid.json`` and ``nerva-grid.md`` (``--out`` prefix).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe, load_average, run_header

HERE = Path(__file__).resolve().parent
SIZES = [3072, 1024, 1024, 1024, 10]
DENSITIES = (0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5)
PEERS = ("sparsekit", "torch-masked-dense", "torch-dense")
LR, MOMENTUM, ZETA = 0.01, 0.9, 0.3
EPOCH_SAMPLES = 50_000  # CIFAR-10's training set
NERVA_RATIO_AT_99 = 4.0
TARGET_RATIO_AT_99 = 10.0


def links(n_in: int, n_out: int, density: float) -> int:
    """Links of an ``n_in -> n_out`` layer at ``density`` (at least one)."""
    return max(1, min(n_in * n_out, round(density * n_in * n_out)))


def peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_data(samples: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], samples)
    return x, y


# --- one peer at one density in this process ------------------------------------------------
def run_sparsekit(density: float, args) -> dict:
    import numpy as np

    from sparsekit import train
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.layers import SparseLayer
    from sparsekit.nn.model import SparseMLP

    backend = CpuBackend(args.threads)
    rng = np.random.default_rng(0)
    layers = []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        want = links(n_in, n_out, density)
        epsilon = want / (n_in + n_out)
        layer = SparseLayer.random(n_in, n_out, epsilon, rng=rng, backend=backend)
        if layer.nnz != want:
            raise RuntimeError(f"{n_in}x{n_out}: {layer.nnz} links drawn, {want} wanted")
        layers.append(layer)
    model = SparseMLP.from_layers(layers, activation="relu", dropout=args.dropout)
    x, y = synthetic_data(args.samples)
    train_s, evolve_s = [], []

    def record(rec, _model):
        train_s.append(rec["time_train"])
        evolve_s.append(rec["time_evolve"])

    train(model, (x, y), backend=backend, epochs=args.warmup_epochs + args.epochs,
          batch_size=args.batch, lr=LR, momentum=MOMENTUM, weight_decay=0.0,
          method=args.method, zeta=ZETA, seed=0, callbacks=[record])
    skip = args.warmup_epochs
    # SET does not evolve after the last pass; a warm-up pass's update counts if none other.
    updates = (evolve_s[skip:-1] or evolve_s[:-1]) if args.method == "set" else []
    return {"pass_s": train_s[skip:], "update_s": updates,
            "connections": int(sum(model.n_connections))}


def run_torch(peer: str, density: float, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers, masks = [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        lin = torch.nn.Linear(n_in, n_out)
        if peer == "torch-masked-dense":
            mask = torch.zeros(n_out * n_in)
            mask[torch.randperm(n_out * n_in)[:links(n_in, n_out, density)]] = 1.0
            mask = mask.view(n_out, n_in)
            bound = (6 / n_in) ** 0.5
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound).mul_(mask)
                lin.bias.zero_()
            masks.append(mask)
        layers.append(lin)
    x_np, y_np = synthetic_data(args.samples)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    opt = torch.optim.SGD([p for lin in layers for p in lin.parameters()], lr=LR,
                          momentum=MOMENTUM)
    drop = torch.nn.Dropout(args.dropout) if args.dropout else (lambda h: h)
    linear = torch.nn.functional.linear

    def forward(h):
        for i, lin in enumerate(layers):
            h = linear(h, lin.weight * masks[i], lin.bias) if masks else lin(h)
            if i < len(layers) - 1:
                h = drop(torch.relu(h))
        return h

    pass_s = []
    n = x.shape[0]
    for epoch in range(args.warmup_epochs + args.epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(n // args.batch):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            loss = torch.nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch >= args.warmup_epochs:
            pass_s.append(time.perf_counter() - t0)
    connections = (int(sum(m.sum().item() for m in masks)) if masks
                   else sum(lin.weight.numel() for lin in layers))
    return {"pass_s": pass_s, "update_s": [], "connections": connections,
            "torch": torch.__version__}


def child(peer: str, density: float, args) -> dict:
    out = run_sparsekit(density, args) if peer == "sparsekit" else run_torch(peer, density, args)
    steps = args.samples // args.batch
    out["steps_per_pass"] = steps
    out["step_s"] = statistics.median(t / steps for t in out["pass_s"])
    out["median_update_s"] = statistics.median(out["update_s"]) if out["update_s"] else 0.0
    out["epoch50k_s"] = EPOCH_SAMPLES // args.batch * out["step_s"] + out["median_update_s"]
    out["peak_rss_mib"] = peak_rss_mib()
    return out


# --- the driver -------------------------------------------------------------------------------
def run_peer(peer: str, density: float, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", peer,
           "--child-density", repr(density)]
    for name in ("threads", "samples", "epochs", "warmup_epochs", "batch", "method", "dropout"):
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    env = {**os.environ, "OMP_WAIT_POLICY": "passive",
           **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                             "OPENBLAS_NUM_THREADS")}}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        err = proc.stderr.strip().splitlines()
        return {"error": err[-1] if err else f"exit status {proc.returncode}"}
    return json.loads(lines[-1])


def crossover(ratios: dict[float, float]) -> dict:
    """Where sparsekit stops being faster than dense x mask, going up the density grid.

    ``faster_up_to``: the largest grid density up to which every ratio is above 1;
    ``slower_at``: the next grid density (None when sparsekit wins everywhere);
    ``interpolated``: the density where the ratio crosses 1, interpolated linearly in
    log(density) and log(ratio) between those two points.
    """
    ds = sorted(ratios)
    faster_up_to = None
    for d in ds:
        if ratios[d] <= 1.0:
            break
        faster_up_to = d
    out = {"faster_up_to": faster_up_to, "slower_at": None, "interpolated": None}
    if faster_up_to is None or faster_up_to == ds[-1]:
        return out
    d_hi = ds[ds.index(faster_up_to) + 1]
    out["slower_at"] = d_hi
    r_lo, r_hi = math.log(ratios[faster_up_to]), math.log(ratios[d_hi])
    frac = r_lo / (r_lo - r_hi) if r_lo != r_hi else 0.5
    out["interpolated"] = math.exp(math.log(faster_up_to)
                                   + frac * (math.log(d_hi) - math.log(faster_up_to)))
    return out


def summarise(results: list[dict]) -> dict:
    by = {(r["peer"], r["density"]): r for r in results if "error" not in r}
    dense = by.get(("torch-dense", 1.0))
    per_density, masked_ratio = {}, {}
    for d in sorted({r["density"] for r in results if r["peer"] != "torch-dense"}):
        sk, masked = by.get(("sparsekit", d)), by.get(("torch-masked-dense", d))
        row = {}
        if sk and masked:
            row["masked_over_sparsekit_step"] = masked["step_s"] / sk["step_s"]
            row["masked_over_sparsekit_epoch"] = masked["epoch50k_s"] / sk["epoch50k_s"]
            masked_ratio[d] = row["masked_over_sparsekit_epoch"]
        if sk and dense:
            row["dense_over_sparsekit_epoch"] = dense["epoch50k_s"] / sk["epoch50k_s"]
        per_density[repr(d)] = row
    at_99 = per_density.get(repr(0.01), {}).get("masked_over_sparsekit_epoch")
    return {"per_density": per_density, "masked_over_sparsekit_at_density_0.01": at_99,
            "target_at_99_met": None if at_99 is None else at_99 >= TARGET_RATIO_AT_99,
            "crossover": crossover(masked_ratio) if masked_ratio else None}


def fmt_ms(r: dict | None) -> str:
    if r is None:
        return ""
    return f"failed: {r['error']}" if "error" in r else f"{1e3 * r['step_s']:.2f}"


def markdown(report: dict) -> str:
    s = report["summary"]
    cfg = report["config"]
    lines = ["# Nerva's density grid: sparsekit vs PyTorch dense x mask (CPU)", "",
             *run_header(report),
             f"MLP 3072-1024-1024-1024-10, ReLU, dropout {cfg['dropout']}, batch "
             f"{cfg['batch']}, SGD lr 0.01 momentum 0.9, the same density in every layer; "
             f"{cfg['samples']} synthetic Gaussian samples with random labels; "
             f"{cfg['threads']} thread(s) for every peer, each (peer, density) in its own "
             f"process; {cfg['warmup_epochs']} warm-up pass(es), then {cfg['epochs']} timed "
             f"passes.  Step: median over the timed passes of pass seconds / steps.  sparsekit "
             f"topology: {cfg['method']} (SET once per 50 000-sample epoch, update timed apart "
             "and added to the epoch figure); dense x mask keeps its mask fixed.", "",
             "| density | links | sparsekit ms / step | SET update ms | dense x mask ms / step "
             "| dense ms / step | s / 50k epoch: sparsekit, dense x mask | "
             "dense x mask / sparsekit | dense / sparsekit |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    res = {(r["peer"], r["density"]): r for r in report["results"]}
    dense = res.get(("torch-dense", 1.0))
    for d in cfg["densities"]:
        sk, masked = res.get(("sparsekit", d)), res.get(("torch-masked-dense", d))
        row = s["per_density"].get(repr(d), {})
        n_links = sum(links(a, b, d) for a, b in zip(SIZES[:-1], SIZES[1:]))
        upd = f"{1e3 * sk['median_update_s']:.1f}" if sk and "error" not in sk else ""
        ep = " / ".join(f"{r['epoch50k_s']:.1f}" if r and "error" not in r else "-"
                        for r in (sk, masked))
        ratio = row.get("masked_over_sparsekit_epoch")
        vs_dense = row.get("dense_over_sparsekit_epoch")
        lines.append(f"| {d:g} | {n_links} | {fmt_ms(sk)} | {upd} | {fmt_ms(masked)} | "
                     f"{fmt_ms(dense)} | {ep} | "
                     + (f"**{ratio:.2f}x**" if ratio else "n/a") + " | "
                     + (f"{vs_dense:.2f}x" if vs_dense else "n/a") + " |")
    lines.append("")
    at_99 = s["masked_over_sparsekit_at_density_0.01"]
    if at_99 is not None:
        verdict = "met" if at_99 >= TARGET_RATIO_AT_99 else "not met"
        lines.append(f"- 99 % sparsity (density 0.01): sparsekit is **{at_99:.2f}x** faster per "
                     f"epoch than dense x mask (Nerva reports about {NERVA_RATIO_AT_99:g}x over "
                     f"PyTorch; target >= {TARGET_RATIO_AT_99:g}x: **{verdict}**).")
    c = s["crossover"]
    if c is None:
        lines.append("- Crossover: not measured (a peer failed or was left out).")
    elif c["faster_up_to"] is None:
        lines.append("- sparsekit is not faster than dense x mask at any density of the grid.")
    elif c["slower_at"] is None:
        lines.append(f"- sparsekit is faster than dense x mask at every density of the grid "
                     f"(up to {c['faster_up_to']:g}).")
    else:
        lines.append(f"- sparsekit overtakes dense x mask below density about "
                     f"{c['interpolated']:.3g} (faster at {c['faster_up_to']:g} and below, "
                     f"slower at {c['slower_at']:g}; log-log interpolation between them).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ", ".join(PEERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3, help="timed passes over the samples")
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--method", default="set", choices=("set", "static"))
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--out", default=str(HERE / "results" / "nerva-grid"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-density", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.child_density, args)))
        return
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if any(p not in PEERS for p in peers):
        ap.error(f"peers must be among {PEERS}, got {peers}")
    densities = [float(d) for d in args.densities.split(",")]
    report = {"machine": describe(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/nerva_grid.py " + " ".join(sys.argv[1:]),
              "config": {"sizes": SIZES, "densities": densities,
                         **{k: getattr(args, k) for k in ("threads", "samples", "epochs",
                                                          "warmup_epochs", "batch", "method",
                                                          "dropout")}},
              "results": []}
    jobs = [(p, d) for d in densities for p in peers if p != "torch-dense"]
    if "torch-dense" in peers:
        jobs.append(("torch-dense", 1.0))
    for peer, density in jobs:
        print(f"{peer} density {density:g} ({args.threads} threads)...", flush=True)
        r = {"peer": peer, "density": density, **run_peer(peer, density, args)}
        report["results"].append(r)
        print("  " + (r["error"] if "error" in r else
                      f"{1e3 * r['step_s']:.2f} ms/step, {r['epoch50k_s']:.1f} s/50k epoch"),
              flush=True)
    report["loadavg_after"] = load_average()
    report["torch"] = next((r["torch"] for r in report["results"] if "torch" in r), None)
    report["summary"] = summarise(report["results"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
