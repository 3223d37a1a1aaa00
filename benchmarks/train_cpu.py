"""End-to-end CPU training benchmark: sparsekit vs PyTorch dense-weights-times-mask.

Each peer trains the paper's Fashion-MNIST network (784-1000-1000-1000-10, ε = 20, All-ReLU
α = 0.6, dropout 0.3, SGD lr 0.01 momentum 0.9 weight decay 2e-4, batch 128) for a few epochs
in its own process with an explicit thread count; we report the median training time per epoch
(60 000 samples, training only: no evaluation) and the process's peak RSS.

    python benchmarks/train_cpu.py [--epochs 3] [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe

SIZES = [784, 1000, 1000, 1000, 10]


def peak_rss_mib() -> float:
    from sparsekit.training.memory import peak_resident_memory

    return peak_resident_memory() / 2**20


def run_sparsekit(epochs: int, threads: int) -> dict:
    import numpy as np

    from sparsekit import load_dataset, train
    from sparsekit._cython.backend import CpuBackend

    data = load_dataset("fashion-mnist")
    times = []
    res = train(SIZES, (data.x_train, data.y_train), backend=CpuBackend(threads),
                epochs=epochs, seed=0, callbacks=[lambda r, m: times.append(r["time_train"])])
    return {"peer": "sparsekit", "epoch_s": times, "median_epoch_s": float(np.median(times)),
            "connections": sum(res.model.n_connections), "peak_rss_mib": peak_rss_mib(),
            "train_acc_last": res.history[-1]["train_acc"]}


def run_torch_masked(epochs: int, threads: int) -> dict:
    import numpy as np
    import torch

    from sparsekit import load_dataset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    layers, masks = [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        lin = torch.nn.Linear(n_in, n_out)
        density = min(1.0, 20 * (n_in + n_out) / (n_in * n_out))
        mask = (torch.rand(n_out, n_in) < density).float()
        bound = (6 / n_in) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound).mul_(mask)
            lin.bias.zero_()
        layers.append(lin)
        masks.append(mask)
    params = [p for lin in layers for p in lin.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=2e-4)
    slopes = [-0.6, 0.6, -0.6]
    drop = torch.nn.Dropout(0.3)

    def forward(xb):
        h = xb
        for lin, mask, s in zip(layers[:-1], masks[:-1], slopes):
            z = torch.nn.functional.linear(h, lin.weight * mask, lin.bias)
            h = drop(torch.where(z > 0, z, s * z))
        return torch.nn.functional.linear(h, layers[-1].weight * masks[-1], layers[-1].bias)

    times = []
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(n // 128):
            idx = perm[s * 128:(s + 1) * 128]
            loss = torch.nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return {"peer": "torch-masked-dense", "epoch_s": times,
            "median_epoch_s": float(np.median(times)),
            "connections": int(sum(m.sum().item() for m in masks)),
            "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}


PEERS = {"sparsekit": run_sparsekit, "torch-masked-dense": run_torch_masked}


def child(peer: str, epochs: int, threads: int) -> None:
    print(json.dumps(PEERS[peer](epochs, threads)))


def machine() -> dict:
    return describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.epochs, args.threads)
        return
    env = {**os.environ, **{k: str(args.threads) for k in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    results = []
    for peer in PEERS:
        print(f"running {peer} ({args.epochs} epochs, {args.threads} threads)...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", peer, "--epochs",
                               str(args.epochs), "--threads", str(args.threads)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            results.append({"peer": peer, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    info = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train-cpu.json").write_text(json.dumps({"machine": info, "results": results},
                                                   indent=1))
    ok = {r["peer"]: r for r in results if "error" not in r}
    lines = [f"- `{r['peer']}`: median {r['median_epoch_s']:.2f} s/epoch "
             f"(epochs: {', '.join(f'{t:.2f}' for t in r['epoch_s'])}), peak RSS "
             f"{r['peak_rss_mib']:.0f} MiB, {r['connections']} connections"
             for r in ok.values()]
    if len(ok) == 2:
        ratio = ok["torch-masked-dense"]["median_epoch_s"] / ok["sparsekit"]["median_epoch_s"]
        lines.append(f"- sparsekit is {ratio:.1f}x faster per training epoch than PyTorch "
                     "masked-dense")
    print("\n".join(lines))
    (out / "train-cpu.latest.txt").write_text(
        f"machine: {info}\ncommand: python benchmarks/train_cpu.py --epochs {args.epochs} "
        f"--threads {args.threads}\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
