"""GPU benchmark: sparsekit's CUDA kernels and GPU training side by side with their peers.

    python benchmarks/gpu.py            # full: four layers, 5 training epochs per peer
    python benchmarks/gpu.py --quick    # two small layers, 2 epochs on a subset (about a minute)

Needs an NVIDIA GPU with CuPy (and, for the torch peers, a CUDA build of torch); without a GPU it
stops at once with exit status 2.  All peers run in one process on the same device and the same
arrays (activations feature-major, batch 128), except the CPU backend's epoch, which runs in a
subprocess pinned to ``--cpu-threads`` threads.  Times are CUDA-event medians
(``cupyx.profiler.benchmark``) after warm-up; every result is checked against sparsekit's answer
before it is timed.  Per layer and kernel:

* forward ``W @ x``: sparsekit's row-per-warp kernel vs ``cupyx.cusparse.spmm`` (cuSPARSE SpMM,
  given ``x.T`` with ``transb`` so it needs no input copy, output left column-major),
  ``torch.sparse.mm`` (CSR) and dense cuBLAS (``cupy.matmul`` on the densified W);
* backward to the inputs ``W.T @ dy``: sparsekit (transposed index) vs cuSPARSE ``transa``;
* weight gradient (SDDMM): sparsekit vs ``torch.sparse.sampled_addmm`` (cuSPARSE SDDMM);
* fused backward (dx and gradient in one pass) vs cuSPARSE SpMM + torch SDDMM;
* the efficiency of each sparsekit kernel: effective bandwidth over the compulsory traffic
  Q_min of ``shared/research/performance-anchors.md`` section 2.2, as a share of the measured
  device-to-device copy bandwidth.

Epoch time of the default Fashion-MNIST network (784-1000-1000-1000-10, ε = 20, SET, batch 128):
sparsekit on the GPU, PyTorch masked-dense on the same GPU, and sparsekit's CPU backend.  The real
Fashion-MNIST is used when ``load_dataset`` finds it, else random data of its shape (the table
says which).  Writes ``benchmarks/results/gpu.md`` and ``gpu.json`` (``gpu-quick.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "sparsekit").is_dir():  # benchmark the checkout, not another installed copy
    sys.path.insert(0, str(ROOT))

BATCH = 128
SIZES = [784, 1000, 1000, 1000, 10]
LAYERS = [  # ER with these ε gives 4.6 %, 5 %, 1 % and 0.1 %
    {"name": "784x1000", "n_in": 784, "n_out": 1000, "epsilon": 20.0},
    {"name": "4096x4096", "n_in": 4096, "n_out": 4096, "epsilon": 102.4},
    {"name": "10000x10000", "n_in": 10_000, "n_out": 10_000, "epsilon": 50.0},
    {"name": "100000x100000", "n_in": 100_000, "n_out": 100_000, "epsilon": 50.0},
]
FULL = {"layers": 4, "repeats": 50, "warmup": 5, "epochs": 5, "n_train": None}
QUICK = {"layers": 2, "repeats": 10, "warmup": 2, "epochs": 2, "n_train": 12_800}


def fail(message: str) -> None:
    print(f"benchmarks/gpu.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_gpu():
    from sparsekit import _compat

    if not _compat.has_cupy_gpu:
        fail(f"needs an NVIDIA GPU with CuPy: {_compat.gpu_unavailable_reason}")
    return _compat.cupy


def gpu_time(fn, cfg) -> dict:
    """Median and min CUDA-event time of ``fn()`` in milliseconds."""
    import numpy as np
    from cupyx.profiler import benchmark

    res = benchmark(fn, (), n_repeat=cfg["repeats"], n_warmup=cfg["warmup"])
    t = res.gpu_times[0] * 1e3
    return {"median_ms": float(np.median(t)), "min_ms": float(np.min(t))}


def copy_bandwidth(cp, cfg) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written)."""
    src = cp.ones(1 << 28, dtype=cp.float32)  # 1 GiB
    dst = cp.empty_like(src)
    t = gpu_time(lambda: cp.copyto(dst, src), cfg)["median_ms"] / 1e3
    return 2 * src.nbytes / t / 1e9


def q_min(kind: str, n_in: int, n_out: int, nnz: int, b: int = BATCH) -> int:
    """Compulsory bytes (performance-anchors.md §2.2), fp32 values, int32 indices."""
    if kind == "forward":
        return nnz * 8 + (n_out + 1) * 4 + 4 * b * (n_in + n_out)
    if kind == "backward_dx":
        return nnz * 8 + (n_in + 1) * 4 + 4 * b * (n_in + n_out)
    if kind == "sddmm":
        return nnz * 8 + (n_out + 1) * 4 + 4 * b * (n_in + n_out)
    return nnz * 12 + (n_in + 1) * 4 + 4 * b * (2 * n_in + n_out)  # fused backward


def torch_cuda():
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not installed ({exc})"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA device"
    return torch, ""


def bench_layer(spec, cp, cfg, bandwidth) -> dict:
    import cupyx.cusparse
    import numpy as np

    from sparsekit import erdos_renyi, get_backend
    from sparsekit._cuda import fallback

    be = get_backend("gpu")
    n_in, n_out = spec["n_in"], spec["n_out"]
    w = erdos_renyi(n_out, n_in, spec["epsilon"], rng=0, backend=be)
    rng = cp.random.default_rng(1)
    x = rng.standard_normal((n_in, BATCH), dtype=cp.float32)
    dy = rng.standard_normal((n_out, BATCH), dtype=cp.float32)
    out: dict = {"n_in": n_in, "n_out": n_out, "nnz": w.nnz,
                 "density": w.nnz / (n_in * n_out), "kernels": {}}
    be.transpose_index(w)  # built once per pattern, not part of a product
    m = fallback.cusparse_matrix(w)

    def check(got, want, what):
        got, want = cp.asnumpy(got), cp.asnumpy(want)
        scale = np.abs(want).max() + 1e-30
        if np.abs(got - want).max() > 1e-3 * scale:
            raise AssertionError(f"{spec['name']} {what}: differs from sparsekit")

    y = be.matmul(x, w)
    dx, g = be.backward(x, dy, w)
    check(cupyx.cusparse.spmm(m, x.T, transb=True), y, "cuSPARSE forward")
    check(cupyx.cusparse.spmm(m, dy.T, transa=True, transb=True), dx, "cuSPARSE backward")
    k = out["kernels"]
    k["forward"] = {"sparsekit": gpu_time(lambda: be.matmul(x, w), cfg),
                    "cusparse_spmm": gpu_time(lambda: cupyx.cusparse.spmm(m, x.T, transb=True),
                                              cfg)}
    k["backward_dx"] = {"sparsekit": gpu_time(lambda: be.matmul_t(dy, w), cfg),
                        "cusparse_spmm": gpu_time(
                            lambda: cupyx.cusparse.spmm(m, dy.T, transa=True, transb=True), cfg)}
    k["sddmm"] = {"sparsekit": gpu_time(lambda: be.weight_grad(x, dy, w), cfg)}
    k["fused_backward"] = {"sparsekit": gpu_time(lambda: be.backward(x, dy, w), cfg)}
    torch, why = torch_cuda()
    if torch is None:
        out["torch"] = why
    else:
        crow, col = torch.from_dlpack(w.indptr), torch.from_dlpack(w.indices)
        vals = torch.from_dlpack(w.data)
        w_t = torch.sparse_csr_tensor(crow, col, vals, size=(n_out, n_in))
        x_t, dy_t = torch.from_dlpack(x), torch.from_dlpack(dy)
        pattern = torch.sparse_csr_tensor(crow, col, torch.zeros_like(vals), size=(n_out, n_in))

        def sddmm():
            return torch.sparse.sampled_addmm(pattern, dy_t, x_t.t(), beta=0.0, alpha=1.0)

        check(cp.from_dlpack(sddmm().values()), g, "torch sampled_addmm")
        check(cp.from_dlpack(torch.sparse.mm(w_t, x_t)), y, "torch sparse.mm")
        k["forward"]["torch_sparse_mm"] = gpu_time(lambda: torch.sparse.mm(w_t, x_t), cfg)
        k["sddmm"]["torch_sampled_addmm"] = gpu_time(sddmm, cfg)

        def peers_backward():
            cupyx.cusparse.spmm(m, dy.T, transa=True, transb=True)
            sddmm()

        k["fused_backward"]["cusparse_spmm+torch_sddmm"] = gpu_time(peers_backward, cfg)
    free, _ = cp.cuda.runtime.memGetInfo()
    if 4 * n_in * n_out < free // 4:
        dense = cp.zeros((n_out, n_in), dtype=cp.float32)
        rows = cp.searchsorted(w.indptr[1:], cp.arange(w.nnz), side="right")
        dense[rows, w.indices] = w.data
        check(dense @ x, y, "cuBLAS")
        k["forward"]["cublas_dense"] = gpu_time(lambda: cp.matmul(dense, x), cfg)
        del dense
    else:
        out["cublas_dense"] = "skipped: the dense matrix would take over a quarter of free memory"
    for kind, peers in k.items():
        t = peers["sparsekit"]["median_ms"] / 1e3
        gbs = q_min(kind, n_in, n_out, w.nnz) / t / 1e9
        peers["sparsekit"].update(gb_s=gbs, roofline_pct=100 * gbs / bandwidth)
    cp.get_default_memory_pool().free_all_blocks()
    return out


def dataset(cfg):
    import numpy as np

    from sparsekit import load_dataset

    try:
        data = load_dataset("fashion-mnist")
        x, y, source = data.x_train, data.y_train, "Fashion-MNIST"
    except (FileNotFoundError, ValueError, OSError) as exc:
        rng = np.random.default_rng(0)
        x = rng.random((60_000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60_000)
        source = f"random data of Fashion-MNIST's shape ({type(exc).__name__}: not found)"
    if cfg["n_train"]:
        x, y = x[:cfg["n_train"]], y[:cfg["n_train"]]
    return np.ascontiguousarray(x), y, source


def epoch_sparsekit(backend, cfg) -> dict:
    import numpy as np

    from sparsekit import train

    x, y, source = dataset(cfg)
    times: list[float] = []
    train(SIZES, (x, y), backend=backend, epochs=cfg["epochs"], seed=0,
          callbacks=[lambda r, m: times.append(r["time_train"])])
    steady = times[1:] or times  # epoch 1 includes kernel compilation
    return {"epoch_s": times, "median_epoch_s": float(np.median(steady)), "data": source,
            "samples": int(x.shape[0])}


def epoch_torch_masked(cfg) -> dict:
    """The same network as PyTorch dense weights times a fixed mask, on the GPU."""
    import numpy as np

    torch, why = torch_cuda()
    if torch is None:
        return {"error": why}
    x_np, y_np, source = dataset(cfg)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x, y = torch.from_numpy(x_np).to(dev), torch.from_numpy(y_np).to(dev)
    layers, masks = [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        lin = torch.nn.Linear(n_in, n_out).to(dev)
        density = min(1.0, 20 * (n_in + n_out) / (n_in * n_out))
        mask = (torch.rand(n_out, n_in, device=dev) < density).float()
        bound = (6 / n_in) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound).mul_(mask)
            lin.bias.zero_()
        layers.append(lin)
        masks.append(mask)
    opt = torch.optim.SGD([p for lin in layers for p in lin.parameters()], lr=0.01,
                          momentum=0.9, weight_decay=2e-4)
    slopes, drop = [-0.6, 0.6, -0.6], torch.nn.Dropout(0.3)

    def forward(xb):
        h = xb
        for lin, mask, s in zip(layers[:-1], masks[:-1], slopes):
            z = torch.nn.functional.linear(h, lin.weight * mask, lin.bias)
            h = drop(torch.where(z > 0, z, s * z))
        return torch.nn.functional.linear(h, layers[-1].weight * masks[-1], layers[-1].bias)

    n = x.shape[0]
    times = []
    for _ in range(cfg["epochs"]):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        for s in range(n // BATCH):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            loss = torch.nn.functional.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {"epoch_s": times, "median_epoch_s": float(np.median(steady)), "data": source,
            "torch": torch.__version__}


def epoch_cpu_subprocess(cfg, threads: int, quick: bool) -> dict:
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                     "OPENBLAS_NUM_THREADS")}}
    cmd = [sys.executable, __file__, "--worker-cpu", str(threads)] + (["--quick"] if quick else [])
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(results: dict) -> str:
    dev = results["device"]
    lines = [f"# GPU benchmark ({'quick' if results['quick'] else 'full'})", "",
             f"Device: **{dev['name']}** ({dev['memory_gib']:.1f} GiB, compute capability "
             f"{dev['cc']}), CUDA runtime {dev['cuda_runtime']}, CuPy {dev['cupy']}; "
             f"measured copy bandwidth {results['copy_gb_s']:.0f} GB/s.",
             f"Host: {results['host']}. Command: `{results['command']}`. Date: {results['date']}.",
             "", "Times are CUDA-event medians in ms (batch 128, float32, int32 indices); "
             "ratio = peer time / sparsekit time (> 1: sparsekit faster); roofline = effective "
             "bandwidth over the compulsory traffic Q_min, as a share of the copy bandwidth.", ""]
    for name, layer in results["layers"].items():
        lines += [f"## {name} (nnz {layer['nnz']:,}, density {100 * layer['density']:.2f} %)",
                  "", "| kernel | sparsekit ms | roofline | peer | peer ms | ratio |",
                  "| --- | ---: | ---: | --- | ---: | ---: |"]
        for kind, peers in layer["kernels"].items():
            sk = peers["sparsekit"]
            others = [(p, v) for p, v in peers.items() if p != "sparsekit"] or [("-", None)]
            for i, (peer, v) in enumerate(others):
                head = (f"| {kind} | {sk['median_ms']:.4f} | {sk['roofline_pct']:.0f} % "
                        if i == 0 else "| | | ")
                tail = (f"| {peer} | {v['median_ms']:.4f} | {v['median_ms'] / sk['median_ms']:.2f} |"
                        if v else "| - | - | - |")
                lines.append(head + tail)
        for note in ("torch", "cublas_dense"):
            if note in layer:
                lines.append(f"\n{note}: {layer[note]}")
        lines.append("")
    ep = results["epochs"]
    lines += ["## Epoch time, default Fashion-MNIST network (784-1000-1000-1000-10, ε = 20, SET)",
              "", "| peer | median s / epoch | sparsekit GPU speed-up |", "| --- | ---: | ---: |"]
    base = ep["sparsekit_gpu"]["median_epoch_s"]
    for peer, r in ep.items():
        if "error" in r:
            lines.append(f"| {peer} | {r['error']} | - |")
        else:
            lines.append(f"| {peer} | {r['median_epoch_s']:.3f} | "
                         f"{r['median_epoch_s'] / base:.1f}x |")
    lines += ["", f"Data: {ep['sparsekit_gpu']['data']} ({ep['sparsekit_gpu']['samples']:,} "
              "samples per epoch); the first epoch (kernel compilation) is excluded from the "
              f"medians. The CPU backend ran on {results['cpu_threads']} threads of this host."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small layers, 2 epochs on a subset")
    p.add_argument("--cpu-threads", type=int, default=2, help="threads of the CPU-backend run")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--worker-cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.worker_cpu is not None:
        from sparsekit._cython.backend import CpuBackend

        print(json.dumps(epoch_sparsekit(CpuBackend(args.worker_cpu), cfg)))
        return 0
    cp = require_gpu()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    results = {
        "quick": args.quick, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.platform(),
        "cpu_threads": args.cpu_threads,
        "device": {"name": name, "memory_gib": props["totalGlobalMem"] / 2**30,
                   "cc": f"{props['major']}.{props['minor']}",
                   "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "cupy": cp.__version__},
    }
    results["copy_gb_s"] = copy_bandwidth(cp, cfg)
    results["layers"] = {}
    for spec in LAYERS[:cfg["layers"]]:
        print(f"layer {spec['name']} ...", flush=True)
        results["layers"][spec["name"]] = bench_layer(spec, cp, cfg, results["copy_gb_s"])
    print("epochs ...", flush=True)
    results["epochs"] = {"sparsekit_gpu": epoch_sparsekit("gpu", cfg),
                         "torch_masked_dense_gpu": epoch_torch_masked(cfg),
                         "sparsekit_cpu": epoch_cpu_subprocess(cfg, args.cpu_threads, args.quick)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-quick" if args.quick else "gpu"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
