"""End-to-end CPU training speed: sparsekit against what a user would pick instead.

What is measured
----------------
Every peer trains the paper's Fashion-MNIST network 784-1000-1000-1000-10 on the real 60 000
training images (``--samples`` takes the first N, for quick checks only): Erdős–Rényi ε = 20
per layer (35 680 / 40 000 / 40 000 / 10 000 links, i.e. about 4.5 % / 4 % / 4 % / 100 %),
All-ReLU (slopes -0.6, 0.6, -0.6 on the negative side), dropout 0.3, softmax cross-entropy,
SGD lr 0.01 momentum 0.9 weight decay 2e-4, batch 128 (the last partial batch dropped).  Peers:

``sparsekit``
    ``sparsekit.train(...)`` with ``backend=CpuBackend(threads)``, SET (ζ = 0.3) once per epoch.
``sparselab``
    SparseLab 0.2.2 ``SparseLinear`` layers at the same per-layer densities (its own random
    mask draw, so the link counts differ by a few); its ``SET`` update (drop fraction 0.3)
    once per epoch, called at the end of the epoch.
``sparseprop``
    SparseProp 0.1.14 ``SparseLinear`` built from the same kind of masked dense weight; fixed
    masks (it has no topology update).
``torch-dense``
    ``torch.nn.Linear`` layers, fully connected.
``torch-masked-dense``
    Dense ``torch.nn.Linear`` weights times a fixed binary mask in every forward pass.

Each (thread count, peer) runs in its own process, the PyTorch-library peers from their own
environment (``--peers-python``, default ``/tmp/peers-venv/bin/python``, made with
``python -m venv --system-site-packages /tmp/peers-venv`` then
``/tmp/peers-venv/bin/pip install sparselab==0.2.2 sparseprop==0.1.14``).  Every process gets
the same explicit thread count: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``torch.set_num_threads``, with ``OMP_WAIT_POLICY=passive`` (as
sparsekit uses) for all of them.  Per peer we report the median over ``--epochs`` epochs of the
training seconds per epoch (the steps: batch gather, forward, backward, optimizer; no
evaluation), the median topology-update seconds per epoch (SET, where the peer has one) and
the process's peak RSS (``VmHWM``: the data set, about 190 MiB, is in every peer's figure).
The ratio column is ``peer (train + update) / sparsekit (train + update)`` at the same thread
count; a peer that cannot be imported or fails is named in the table with its error.

Reproduce (on a quiet machine; never two benchmarks at once)::

    flock /tmp/bench.lock python benchmarks/train_cpu.py --epochs 3 --threads 1 2

Options: ``--peers sparsekit,sparselab,...`` (default all five), ``--samples N``,
``--rounds R`` (repeat the sweep R times and pool the epochs: on a machine whose speed drifts,
the fairest comparison of thread counts), ``--peers-python PATH``, ``--out DIR``.  Results: ``DIR/train-cpu.json`` and the generated speed
table ``DIR/train-cpu.speed.md`` (``train-cpu.md`` holds hand-written sections and is not
touched).
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

from _machine import describe, load_average, run_header

HERE = Path(__file__).resolve().parent
SIZES = [784, 1000, 1000, 1000, 10]
EPSILON = 20.0
BATCH = 128
LR, MOMENTUM, WEIGHT_DECAY, DROPOUT, ZETA = 0.01, 0.9, 2e-4, 0.3, 0.3
ALLRELU_SLOPES = [-0.6, 0.6, -0.6]
PEER_LABELS = {
    "sparsekit": "sparsekit (CSR, SET once per epoch)",
    "sparselab": "SparseLab 0.2.2 SparseLinear + SET once per epoch",
    "sparseprop": "SparseProp 0.1.14 SparseLinear (fixed masks)",
    "torch-dense": "PyTorch dense nn.Linear",
    "torch-masked-dense": "PyTorch dense weights x fixed binary mask",
}
VENV_PEERS = ("sparselab", "sparseprop")


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``, not inherited across exec) or current (``VmRSS``)
    resident memory in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def er_connections(n_in: int, n_out: int) -> int:
    """Links of an Erdős–Rényi layer at ε = 20, as sparsekit counts them."""
    return int(min(n_in * n_out, round(EPSILON * (n_in + n_out))))


def load_data(samples: int | None):
    from sparsekit import load_dataset

    data = load_dataset("fashion-mnist")
    n = samples or data.x_train.shape[0]
    return data.x_train[:n], data.y_train[:n]


# --- sparsekit --------------------------------------------------------------------------------
def run_sparsekit(epochs: int, threads: int, samples: int | None) -> dict:
    from sparsekit import train
    from sparsekit._cython.backend import CpuBackend

    x, y = load_data(samples)
    train_s, evolve_s = [], []

    def record(rec, _model):
        train_s.append(rec["time_train"])
        evolve_s.append(rec["time_evolve"])

    res = train(SIZES, (x, y), backend=CpuBackend(threads), epochs=epochs, seed=0,
                batch_size=BATCH, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                dropout=DROPOUT, zeta=ZETA, callbacks=[record])
    # SET does not evolve after the last epoch: that epoch's (empty) update is left out.
    return {"epoch_s": train_s, "update_s": evolve_s[:-1],
            "connections": int(sum(res.model.n_connections)),
            "train_acc_last": res.history[-1]["train_acc"]}


# --- the PyTorch-based peers: one loop, different layers --------------------------------------
def torch_layers(peer: str, torch):
    """The four linear layers of ``peer`` and, for SparseLab, its SET algorithm (else None)."""
    layers, algo = [], None
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        density = er_connections(n_in, n_out) / (n_in * n_out)
        if peer == "sparselab":
            import sparselab

            layers.append(sparselab.SparseLinear(n_in, n_out, sparsity=1.0 - density))
        elif peer == "sparseprop":
            from sparseprop.modules.linear import SparseLinear

            dense = torch.nn.Linear(n_in, n_out)
            mask = torch.rand(n_out, n_in) < density
            layers.append(SparseLinear(dense.weight.data * mask,
                                       torch.nn.Parameter(dense.bias.data.clone())))
        else:  # torch-dense, torch-masked-dense
            layers.append(torch.nn.Linear(n_in, n_out))
    if peer == "sparselab":
        import sparselab

        # update_freq is never reached: the update is called (and timed) once per epoch below.
        algo = sparselab.SET(sparsity=0.95, drop_fraction=ZETA, update_freq=10**9, seed=0)
        for layer in layers:
            layer.apply(algo)
    return layers, algo


def masks_for(layers, torch):
    """Fixed binary masks at the ε = 20 densities, weights initialised He-uniform (dense fan-in)
    and masked, as in sparsekit."""
    masks = []
    for lin in layers:
        n_out, n_in = lin.weight.shape
        mask = (torch.rand(n_out, n_in) < er_connections(n_in, n_out) / (n_in * n_out)).float()
        bound = (6 / n_in) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound).mul_(mask)
            lin.bias.zero_()
        masks.append(mask)
    return masks


def run_torch_peer(peer: str, epochs: int, threads: int, samples: int | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers, algo = torch_layers(peer, torch)
    masks = masks_for(layers, torch) if peer == "torch-masked-dense" else None
    x_np, y_np = load_data(samples)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    drop = torch.nn.Dropout(DROPOUT)
    linear = torch.nn.functional.linear

    def forward(h):
        for i, layer in enumerate(layers):
            z = linear(h, layer.weight * masks[i], layer.bias) if masks else layer(h)
            if i == len(layers) - 1:
                return z
            h = drop(torch.where(z > 0, z, ALLRELU_SLOPES[i] * z))

    train_s, update_s = [], []
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(n // BATCH):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            loss = torch.nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_s.append(time.perf_counter() - t0)
        if algo is not None:
            t0 = time.perf_counter()
            algo.update()
            update_s.append(time.perf_counter() - t0)
    if masks:
        connections = int(sum(m.sum().item() for m in masks))
    elif peer == "sparselab":
        connections = int(sum(layer.nnz for layer in layers))
    elif peer == "sparseprop":
        connections = int(sum(layer.W_val.numel() for layer in layers))
    else:
        connections = int(sum(layer.weight.numel() for layer in layers))
    return {"epoch_s": train_s, "update_s": update_s, "connections": connections,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def child(peer: str, epochs: int, threads: int, samples: int | None) -> dict:
    """One peer in this process; an import failure is reported, not raised."""
    try:
        import sparsekit  # noqa: F401 - every peer loads the data through it
        if peer == "sparselab":
            import sparselab  # noqa: F401
        elif peer == "sparseprop":
            import sparseprop  # noqa: F401
        if peer != "sparsekit":
            import torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - whatever breaks the import is the answer
        return {"error": f"cannot import {peer}: {type(exc).__name__}: {exc}"}
    import_rss = rss_mib("VmRSS")
    if peer == "sparsekit":
        out = run_sparsekit(epochs, threads, samples)
    else:
        out = run_torch_peer(peer, epochs, threads, samples)
    set_medians(out, peer)
    out["peak_rss_mib"] = rss_mib()
    out["import_rss_mib"] = import_rss
    out["python"] = sys.executable
    return out


# --- the driver -------------------------------------------------------------------------------
def thread_env(threads: int) -> dict:
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS")}
    return {**os.environ, **env, "OMP_WAIT_POLICY": "passive"}


def run_peer(peer: str, threads: int, args) -> dict:
    python = args.peers_python if peer in VENV_PEERS else sys.executable
    if not Path(python).exists():
        return {"error": f"peers interpreter {python} not found"}
    cmd = [python, str(Path(__file__).resolve()), "--child", peer, "--epochs", str(args.epochs),
           "--threads", str(threads)]
    if args.samples:
        cmd += ["--samples", str(args.samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        err = proc.stderr.strip().splitlines()
        return {"error": err[-1] if err else f"exit status {proc.returncode}"}
    return json.loads(lines[-1])


def set_medians(out: dict, peer: str) -> None:
    """``median_epoch_s``, ``median_update_s`` and their sum ``median_total_s`` of a result's
    ``epoch_s`` and ``update_s``."""
    out["median_epoch_s"] = statistics.median(out["epoch_s"])
    # None: the peer has a topology update but none was measured (sparsekit with --epochs 1).
    out["median_update_s"] = (statistics.median(out["update_s"]) if out["update_s"]
                              else None if peer in ("sparsekit", "sparselab") else 0.0)
    out["median_total_s"] = out["median_epoch_s"] + (out["median_update_s"] or 0.0)


def merge_rounds(runs: list[dict]) -> list[dict]:
    """One result per (peer, threads): every round's epochs and updates pooled, medians over
    the pool, the largest peak RSS, and each round's median total (``round_totals``); a peer
    that failed in any round keeps its first error."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["peer"], r["threads"]), []).append(r)
    merged = []
    for rounds in groups.values():
        failed = next((r for r in rounds if "error" in r), None)
        if failed is not None:
            merged.append(failed)
            continue
        m = {k: v for k, v in rounds[0].items() if k != "round"}
        m["epoch_s"] = [t for r in rounds for t in r["epoch_s"]]
        m["update_s"] = [t for r in rounds for t in r["update_s"]]
        m["round_totals"] = [r["median_total_s"] for r in rounds]
        m["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
        set_medians(m, m["peer"])
        merged.append(m)
    return merged


def ratios(results: list[dict]) -> dict:
    """Per thread count: each peer's time / sparsekit's, and the fastest PyTorch-based peer."""
    out = {}
    for threads in sorted({r["threads"] for r in results}):
        ok = {r["peer"]: r for r in results if r["threads"] == threads and "error" not in r}
        sk = ok.get("sparsekit")
        row = {"vs_sparsekit": {p: r["median_total_s"] / sk["median_total_s"]
                                for p, r in ok.items()} if sk else {}}
        torch_based = {p: r for p, r in ok.items() if p != "sparsekit"}
        if torch_based:
            best = min(torch_based, key=lambda p: torch_based[p]["median_total_s"])
            row["fastest_torch_peer"] = best
            if sk:
                row["fastest_torch_peer_vs_sparsekit"] = row["vs_sparsekit"][best]
        out[str(threads)] = row
    sk_by_threads = {r["threads"]: r["median_total_s"] for r in results
                     if r["peer"] == "sparsekit" and "error" not in r}
    if len(sk_by_threads) > 1:
        lo, hi = min(sk_by_threads), max(sk_by_threads)
        per_round = {r["threads"]: r.get("round_totals", []) for r in results
                     if r["peer"] == "sparsekit" and "error" not in r}
        out["sparsekit_threads"] = {"fewest": lo, "most": hi,
                                    "ratio_fewest_over_most": sk_by_threads[lo]
                                    / sk_by_threads[hi],
                                    "ratio_per_round": [a / b for a, b in
                                                        zip(per_round[lo], per_round[hi])]}
    return out


def markdown(report: dict) -> str:
    lines = ["## Speed and memory: sparsekit against the PyTorch-based peers (generated)", "",
             *run_header(report),
             f"Network 784-1000-1000-1000-10, ε = 20, All-ReLU, dropout 0.3, SGD lr 0.01 "
             f"momentum 0.9 weight decay 2e-4, batch 128, {report['samples']} training images, "
             f"{report['epochs']} epochs per peer and round, {report.get('rounds', 1)} "
             "round(s) of the whole sweep, each peer in its own process.  Seconds per "
             "epoch: median training time (no evaluation); update: median topology update "
             "per epoch (SET; sparsekit's does not run after the last epoch, so it is the "
             "median of the others); ratio: (train + update) / sparsekit's at the same "
             "threads.  Peak RSS includes the data set (about 190 MiB); in brackets the "
             "resident memory right after the imports (a CUDA build of torch alone maps about "
             "500 MiB).", ""]
    for threads, row in ((k, v) for k, v in report["ratios"].items() if k.isdigit()):
        lines += [f"### {threads} thread(s)", "",
                  "| peer | s / epoch (median; each epoch) | update s | peak RSS (at import) "
                  "| links "
                  "| / sparsekit |", "|---|---:|---:|---:|---:|---:|"]
        for r in (r for r in report["results"] if str(r["threads"]) == threads):
            label = PEER_LABELS.get(r["peer"], r["peer"])
            if "error" in r:
                lines.append(f"| {label} | not run: {r['error']} | | | | |")
                continue
            each = ", ".join(f"{t:.2f}" for t in r["epoch_s"])
            ratio = row["vs_sparsekit"].get(r["peer"])
            upd = r["median_update_s"]
            lines.append(f"| {label} | {r['median_epoch_s']:.2f} ({each}) | "
                         + ("n/a" if upd is None else f"{upd:.3f}")
                         + f" | {r['peak_rss_mib']:.0f} MiB ({r['import_rss_mib']:.0f}) | "
                         f"{r['connections']} | "
                         + (f"{ratio:.2f}x |" if ratio is not None else "n/a |"))
        if "fastest_torch_peer" in row:
            best = row["fastest_torch_peer"]
            vs = row.get("fastest_torch_peer_vs_sparsekit")
            lines += ["", f"Fastest PyTorch-based peer at {threads} thread(s): "
                      f"**{PEER_LABELS.get(best, best)}**"
                      + (f", {vs:.2f}x sparsekit's time per epoch." if vs else ".")]
        lines.append("")
    scaling = report["ratios"].get("sparsekit_threads")
    if scaling:
        each = scaling.get("ratio_per_round", [])
        lines.append(f"sparsekit, {scaling['fewest']} thread(s) / {scaling['most']} threads: "
                     f"{scaling['ratio_fewest_over_most']:.2f}x (above 1: more threads help)"
                     + (f"; round by round {', '.join(f'{v:.2f}' for v in each)}."
                        if len(each) > 1 else "."))
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--peers", default=",".join(PEER_LABELS),
                    help="comma list of " + ", ".join(PEER_LABELS))
    ap.add_argument("--samples", type=int, default=None,
                    help="first N training images only (quick checks; default all 60 000)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole sweep; medians over every epoch of every round")
    ap.add_argument("--peers-python", default="/tmp/peers-venv/bin/python")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.threads[0], args.samples)))
        return
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEER_LABELS]
    if unknown:
        ap.error(f"unknown peer(s) {unknown}; choose from {list(PEER_LABELS)}")
    report = {"machine": describe(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/train_cpu.py " + " ".join(sys.argv[1:]),
              "epochs": args.epochs, "threads": args.threads, "rounds": args.rounds,
              "samples": args.samples or 60000, "results": []}
    # Rounds repeat the whole sweep, so that each thread count and peer sees the machine at
    # several moments (this VM's speed drifts by up to 2x within minutes).
    runs = report["runs"] = []
    for rnd in range(args.rounds):
        for threads in args.threads:
            for peer in peers:
                print(f"round {rnd + 1}/{args.rounds}: {peer} ({args.epochs} epochs, "
                      f"{threads} threads)...", flush=True)
                r = {"peer": peer, "threads": threads, "round": rnd,
                     **run_peer(peer, threads, args)}
                runs.append(r)
                print("  " + (r["error"] if "error" in r else
                              f"{r['median_epoch_s']:.2f} s/epoch + {r['median_update_s']} s "
                              f"update, {r['peak_rss_mib']:.0f} MiB"), flush=True)
    report["results"] = merge_rounds(runs)
    report["loadavg_after"] = load_average()
    report["torch"] = next((r["torch"] for r in report["results"] if "torch" in r), None)
    report["ratios"] = ratios(report["results"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train-cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / "train-cpu.speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
