"""The largest network: a truly sparse MLP of at least 10 000 000 neurons trained on one machine.

Trains ``sparsekit.train`` (CPU backend, SET with one topology update in the middle of the
epoch, All-ReLU, dropout 0.3, momentum SGD) for one epoch on a Fashion-MNIST-shaped synthetic
task (784 features, 10 classes, Madelon-like clusters from ``sparsekit.io.synthetic.make_synthetic``)
and reports neurons, connections, the peak RSS of the process, the time of the epoch, the FLOPs
of the epoch beside a dense network's, and :func:`sparsekit.estimate_memory`'s prediction of the
peak before anything was allocated.  ``memory_limit`` is passed to ``train()``, so a
configuration that would not fit is refused up front instead of being killed mid-epoch.

    python benchmarks/largest.py                       # 784-2.5M-2.5M-2.5M-2.5M-10: 10 M neurons
    python benchmarks/largest.py --quick               # 784-50k-50k-10, seconds
    python benchmarks/largest.py --hidden 3000000 3000000 --epsilon 20 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
GIB = 2**30


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``period`` seconds (a profile beside the lifetime peak)."""

    def __init__(self, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self._halt = period, [], threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        from sparsekit.training.memory import resident_memory

        while not self._halt.wait(self.period):
            self.samples.append((time.perf_counter() - self.t0, resident_memory()))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[2_500_000] * 4)
    p.add_argument("--epsilon", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=1024, help="training samples (one epoch)")
    p.add_argument("--test-samples", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=64,
                   help="evaluation chunk; its activations are the widest transient")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fan-in", default="dense", choices=["dense", "actual"],
                   help="initial value scale: the paper's dense n_in (the recorded run; "
                        "weights ~U(±0.0015) at 2.5 M inputs, so a few steps hardly move the "
                        "loss) or each neuron's actual fan-in (learns from the first steps)")
    p.add_argument("--memory-limit", default="20GiB")
    p.add_argument("--quick", action="store_true", help="784-50000-50000-10, 512 samples")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.samples, args.test_samples = [50_000, 50_000], 512, 128
    import numpy as np

    import sparsekit
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.io.synthetic import make_synthetic
    from sparsekit.training.memory import estimate_memory, resident_memory

    n_total = args.samples + args.test_samples
    data = make_synthetic(n_samples=n_total, n_features=784, n_informative=10, n_classes=10,
                          n_clusters_per_class=2, seed=0,
                          test_fraction=args.test_samples / n_total)
    sizes = [784, *args.hidden, 10]
    steps = data.x_train.shape[0] // args.batch_size
    evolve_every = max(steps // 2, 1)  # one SET update mid-epoch, with the step's arrays alive
    base = resident_memory()
    est = estimate_memory(sizes, epsilon=args.epsilon, batch_size=args.batch_size,
                          eval_batch_size=args.eval_batch_size, evolve_every=evolve_every,
                          n_test=data.x_test.shape[0], baseline=base)
    print(f"layers {sizes}: predicted peak {est.peak / GIB:.2f} GiB ({est.describe()})",
          flush=True)
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    res = sparsekit.train(sizes, data, epochs=1, batch_size=args.batch_size, method="set",
                          evolve_every=evolve_every, epsilon=args.epsilon, fan_in=args.fan_in,
                          backend=CpuBackend(args.threads), eval_batch_size=args.eval_batch_size,
                          memory_limit=args.memory_limit, seed=0, log=print,
                          progress=True)
    wall = time.perf_counter() - t0
    sampler.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec = res.history[-1]
    model = res.model
    out = {
        "layers": sizes, "neurons": int(sum(sizes)), "hidden_neurons": int(sum(sizes[1:-1])),
        "connections": int(sum(model.n_connections)), "per_layer": model.n_connections,
        "epsilon": args.epsilon, "fan_in": args.fan_in, "batch_size": args.batch_size,
        "steps": steps,
        "train_samples": int(data.x_train.shape[0]), "test_samples": int(data.x_test.shape[0]),
        "threads": args.threads, "epoch_train_s": rec["time_train"],
        "evolve_every": evolve_every, "eval_s": rec["time_eval"], "wall_s": wall,
        "step_s": rec["time_train"] / steps,
        "ns_per_conn_sample": rec["time_train"] / steps / args.batch_size
        / sum(model.n_connections) * 1e9,
        "peak_rss": peak, "predicted_peak": est.peak, "estimate": est.parts(),
        "baseline_rss": base, "flops": rec["flops"], "flops_dense": rec["flops_dense"],
        "flops_topology": rec["flops_topology"], "train_loss": rec["train_loss"],
        "test_acc": rec.get("test_acc"), "growth_replaced": rec.get("growth_replaced"),
        "rss_profile": sampler.samples[:: max(len(sampler.samples) // 200, 1)],
        "loadavg_end": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/largest.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:]),
    }
    dest = Path(args.out) / ("quick" if args.quick else "")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "largest.json").write_text(json.dumps(out, indent=1))
    (dest / "largest.md").write_text(report(out))
    print(report(out))
    return 0 if np.isfinite(rec["train_loss"]) else 1


def report(r: dict) -> str:
    from scaling import machine

    ratio = r["predicted_peak"] / r["peak_rss"]
    return "\n".join([
        "# The largest network trained on this machine", "",
        f"`{r['command'].strip()}` on {machine()}, {r['date']} (load average at the end "
        f"{r['loadavg_end']:.1f}).", "",
        "| quantity | value |", "|---|---|",
        f"| layers | {'-'.join(f'{s:,}' for s in r['layers'])} |",
        f"| neurons (all layers / hidden) | **{r['neurons']:,}** / {r['hidden_neurons']:,} |",
        f"| connections (ε = {r['epsilon']:g}) | **{r['connections']:,}** "
        f"({', '.join(f'{c:,}' for c in r['per_layer'])}) |",
        f"| dense equivalent | {sum(a * b for a, b in zip(r['layers'][:-1], r['layers'][1:])):,}"
        " weights |",
        f"| training | one epoch of {r['train_samples']:,} samples (Madelon-like synthetic, 784 "
        f"features, 10 classes), batch {r['batch_size']}, {r['steps']} steps, SET update "
        f"every {r['evolve_every']} steps (replaced {r['growth_replaced']}), {r['threads']} "
        "threads |",
        f"| time of the epoch (training) | **{r['epoch_train_s'] / 60:.1f} min** "
        f"({r['step_s']:.1f} s per step, {r['ns_per_conn_sample']:.2f} ns per connection per "
        "sample) |",
        f"| evaluation of {r['test_samples']} samples | {r['eval_s']:.1f} s |",
        f"| peak RSS (measured, `ru_maxrss`) | **{r['peak_rss'] / GIB:.2f} GiB** |",
        f"| predicted by `estimate_memory` before allocating | {r['predicted_peak'] / GIB:.2f} "
        f"GiB (prediction / measured = {ratio:.2f}) |",
        f"| FLOPs of the epoch: sparse / dense network | {r['flops']:.3g} / "
        f"{r['flops_dense']:.3g} ({r['flops_dense'] / r['flops']:,.0f}× fewer) |",
        f"| train loss after the epoch; test accuracy | {r['train_loss']:.4f}; "
        f"{100 * (r['test_acc'] or 0):.1f} % (initial scale: {r.get('fan_in', 'dense')} "
        "fan-in; this run measures memory and time, not accuracy) |",
        "", "Estimate parts (GiB): " + ", ".join(
            f"{k} {v / GIB:.2f}" for k, v in r["estimate"].items() if k != "connections"),
        "", "Raw data (with an RSS profile sampled every second): `largest.json`.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
