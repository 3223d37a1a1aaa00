"""Growth-method comparison on Fashion-MNIST: static, SET, GSE, Top-KAST, RigL, and a dense ceiling.

Every method trains the default network (784-1000-1000-1000-10, ε = 20, All-ReLU α = 0.6,
dropout 0.3, SGD lr 0.01 momentum 0.9 weight decay 2e-4, batch 128) for the same number of
epochs with the same seeds, each run in its own process with an explicit thread count.  Reported
per method (mean ± std over seeds): test accuracy after the last epoch, time per epoch including
topology updates (training + evolution, evaluation excluded), and connections at the end.  The
dense ceiling is the same recipe with dense weights in PyTorch (or sparsekit at ε large when
PyTorch is missing).  A second table times one topology update against one training step on the
same batch (the issue's "≤ 2x a step" target for GSE); a third times one training step of every
sparse method with the methods interleaved on the same batches (per-step overheads over SET, free
of the machine-load swings that epoch times on a shared machine suffer).

    python benchmarks/methods.py                       # full: 30 epochs, seeds 0 1 (hours)
    python benchmarks/methods.py --epochs 10 --seeds 0 1 2
    python benchmarks/methods.py --quick               # minutes: subset, small net, 2 epochs
    python benchmarks/methods.py --steps-only --threads 1   # add the lockstep table to a result

Writes ``benchmarks/results/methods.md`` and ``methods.json`` (``methods-quick.*`` with --quick,
so a smoke run never overwrites real results).
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

METHODS = ("static", "set", "gse", "topkast", "rigl", "dense")
HIDDEN = [1000, 1000, 1000]
QUICK = {"hidden": [256, 256], "n_train": 6000, "n_test": 2000, "epochs": 2, "seeds": [0]}
RECIPE = dict(batch_size=128, lr=0.01, momentum=0.9, weight_decay=2e-4, dropout=0.3,
              epsilon=20.0, alpha=0.6)


def load(n_train: int | None, n_test: int | None):
    from sparsekit import load_dataset

    d = load_dataset("fashion-mnist")
    n_tr, n_te = n_train or d.x_train.shape[0], n_test or d.x_test.shape[0]
    return d.x_train[:n_tr], d.y_train[:n_tr], d.x_test[:n_te], d.y_test[:n_te]


def run_sparsekit(method: str, seed: int, epochs: int, hidden, threads: int, n_train, n_test,
                  epsilon: float | None = None) -> dict:
    from sparsekit import train
    from sparsekit._cython.backend import CpuBackend

    data = load(n_train, n_test)
    sizes = [784, *hidden, 10]
    recipe = {**RECIPE, "epsilon": epsilon or RECIPE["epsilon"]}
    res = train(sizes, data, backend=CpuBackend(threads), method=method, epochs=epochs,
                seed=seed, **recipe)
    h = res.history
    return {"test_acc": h[-1]["test_acc"], "epoch_s": [r["time_train"] + r["time_evolve"]
                                                      for r in h],
            "evolve_s": [r["time_evolve"] for r in h],
            "connections": sum(res.model.n_connections)}


def run_torch_dense(seed: int, epochs: int, hidden, threads: int, n_train, n_test) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(np.asarray(a)) for a in load(n_train, n_test))
    sizes = [784, *hidden, 10]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(n_in, n_out)
        bound = (6 / n_in) ** 0.5
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound)
            lin.bias.zero_()
        layers.append(lin)
    params = [p for lin in layers for p in lin.parameters()]
    opt = torch.optim.SGD(params, lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                          weight_decay=RECIPE["weight_decay"])
    slopes = [(-RECIPE["alpha"] if i % 2 == 0 else RECIPE["alpha"])
              for i in range(len(layers) - 1)]
    drop = torch.nn.Dropout(RECIPE["dropout"])

    def forward(xb, training):
        h = xb
        for lin, s in zip(layers[:-1], slopes):
            z = lin(h)
            h = torch.where(z > 0, z, s * z)
            h = drop(h) if training else h
        return layers[-1](h)

    times, n, bs = [], x_tr.shape[0], RECIPE["batch_size"]
    for _ in range(epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for s in range(n // bs):
            idx = perm[s * bs:(s + 1) * bs]
            loss = torch.nn.functional.cross_entropy(forward(x_tr[idx], True), y_tr[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = (forward(x_te, False).argmax(1) == y_te.long()).float().mean().item()
    return {"test_acc": acc, "epoch_s": times, "evolve_s": [0.0] * epochs,
            "connections": sum(a * b for a, b in zip(sizes[:-1], sizes[1:])),
            "peer": f"torch {torch.__version__}"}


def update_cost(method: str, hidden, threads: int, reps: int = 40, warmup: int = 5) -> dict:
    """Median seconds of one training step and of one topology update on the same batch, and
    the median over repetitions of each update / its own step (the two run back to back, so a
    busy spell on the shared machine slows both and cancels in the ratio)."""
    import numpy as np

    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.model import SparseMLP
    from sparsekit.training.config import TrainConfig
    from sparsekit.training.step import Engine

    be = CpuBackend(threads)
    x_tr, y_tr, _, _ = load(2048, 1)
    model = SparseMLP([784, *hidden, 10], epsilon=RECIPE["epsilon"], backend=be, seed=0)
    cfg = TrainConfig(**RECIPE, method=method, epochs=1, **(
        {"evolve_every": 1, "method_params": {"t_end": 1.0}} if method != "set" else {}))
    engine = Engine(model, cfg, np.random.default_rng(0))
    engine.plan(10**6)  # every step due, α_t ≈ α
    rng = engine.rng
    step_s, update_s = [], []
    for r in range(warmup + reps):
        idx = rng.choice(x_tr.shape[0], RECIPE["batch_size"], replace=False)
        xb, yb = engine.batch(x_tr, y_tr, idx)
        t0 = time.perf_counter()
        _, _, grads, cache = engine.gradients(xb, yb, rng.integers(0, 2**63, len(hidden)))
        engine.apply(grads, cfg.lr)
        del grads
        step_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if method == "set":
            engine.growth.evolve(model, rng)
        else:
            engine.growth.after_step(model, r, 0, rng, cache)
        update_s.append(time.perf_counter() - t0)
    step_s, update_s = np.array(step_s[warmup:]), np.array(update_s[warmup:])
    return {"step_s": float(np.median(step_s)), "update_s": float(np.median(update_s)),
            "ratio": float(np.median(update_s / step_s)), "reps": reps}


def step_cost(hidden, threads: int, n_train, steps: int = 300, warmup: int = 15,
              methods=("static", "set", "gse", "topkast", "rigl")) -> dict:
    """Median seconds of one training step per method — the trainer's loop body (batch copy,
    forward, loss, backward, optimizer, the method's ``after_step``) — with the methods in
    lockstep on the same batches and their order rotated every step, so that load on the shared
    machine hits them alike.  No step is an update step (they happen once per epoch, timed in
    the update table), so this is each method's per-step overhead: epoch time is about
    steps_per_epoch x step + one update."""
    import numpy as np

    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.model import SparseMLP
    from sparsekit.training.config import TrainConfig
    from sparsekit.training.step import Engine

    be = CpuBackend(threads)
    x_tr, y_tr, _, _ = load(n_train, 1)
    x_host = np.ascontiguousarray(x_tr, dtype=np.float32)
    steps_per_epoch = x_tr.shape[0] // RECIPE["batch_size"]
    runs = {}
    for method in methods:
        model = SparseMLP([784, *hidden, 10], epsilon=RECIPE["epsilon"], alpha=RECIPE["alpha"],
                          dropout=RECIPE["dropout"], backend=be, seed=0)
        engine = Engine(model, TrainConfig(**RECIPE, method=method),
                        np.random.default_rng(1))
        engine.plan(steps_per_epoch)
        runs[method] = (engine, [])
    perm = np.random.default_rng(2).permutation(x_tr.shape[0])
    bs = RECIPE["batch_size"]
    for s in range(warmup + steps):
        idx = perm[(s % steps_per_epoch) * bs:(s % steps_per_epoch + 1) * bs]
        order = list(methods[s % len(methods):]) + list(methods[:s % len(methods)])
        for method in order:
            engine, times = runs[method]
            # Step indices that never fall on an update (each epoch's last step).
            engine.step = s % (steps_per_epoch - 1)
            t0 = time.perf_counter()
            engine.train_step(x_host, y_tr, idx, RECIPE["lr"])
            times.append(time.perf_counter() - t0)
    return {method: {"step_s": float(np.median(times[warmup:])), "steps": steps}
            for method, (_, times) in runs.items()}


def child(args) -> None:
    hidden = args.hidden
    if args.child == "cost":
        out = {m: update_cost(m, hidden, args.threads) for m in ("set", "gse", "topkast", "rigl")}
    elif args.child == "steps":
        out = step_cost(hidden, args.threads, args.n_train)
    elif args.child == "dense":
        try:
            out = run_torch_dense(args.seed, args.epochs, hidden, args.threads, args.n_train,
                                  args.n_test)
        except ImportError:  # no PyTorch: sparsekit with every layer fully connected
            out = run_sparsekit("static", args.seed, args.epochs, hidden, args.threads,
                                args.n_train, args.n_test, epsilon=1e6)
            out["peer"] = "sparsekit, ε = 10^6 (dense)"
    else:
        out = run_sparsekit(args.child, args.seed, args.epochs, hidden, args.threads,
                            args.n_train, args.n_test)
    print(json.dumps(out))


def _checked(result: dict, what: str) -> dict | None:
    if "error" in result:
        print(f"{what} failed:", result["error"])
        return None
    return result


def machine() -> dict:
    info = describe()
    info["loadavg_at_end"] = info.pop("loadavg")
    return info


def _mean_std(values):
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def report(results: dict, cost: dict | None, cfg: dict, info: dict,
           steps: dict | None = None) -> str:
    lines = ["# Growth methods on Fashion-MNIST", "",
             f"Command: `{cfg['command']}`  ",
             *([f"{cfg['label']}  "] if cfg.get("label") else []),
             f"Network 784-{'-'.join(map(str, cfg['hidden']))}-10, ε = 20, {cfg['epochs']} "
             f"epochs, seeds {cfg['seeds']}, {cfg['threads']} threads, "
             f"{cfg['n_train'] or 60000} training / {cfg['n_test'] or 10000} test samples.  ",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, load "
             f"average at the end {info['loadavg_at_end']}.", ""]
    if cfg["quick"]:
        lines += ["**Quick smoke run** (subset, small network): not a result.", ""]
    lines += ["| method | test accuracy (%) | s / epoch incl. topology | vs SET "
              "| of which topology (s) | connections |",
              "| --- | --- | --- | --- | --- | --- |"]
    import numpy as np

    def epoch_time(runs):
        # Median epoch per run (the first epoch pays warm-up), then mean over seeds.
        return _mean_std([np.median(r["epoch_s"]) for r in runs])

    set_ok = [r for r in results.get("set", []) if "error" not in r]
    set_epoch = epoch_time(set_ok)[0] if set_ok else None
    carried = set()
    for method, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append(f"| {method} | failed: {runs[0]['error']} | | | | |")
            continue
        acc_m, acc_s = _mean_std([100 * r["test_acc"] for r in ok])
        ep_m, ep_s = epoch_time(ok)
        vs_set = f"{100 * (ep_m / set_epoch - 1):+.0f} %" if set_epoch else ""
        evo = float(np.mean([np.mean(r["evolve_s"]) for r in ok]))
        name = method if method != "dense" else f"dense ceiling ({ok[0].get('peer', '')})"
        if "carried_over" in ok[0]:
            name += " *"
            carried.add(ok[0]["carried_over"])
        lines.append(f"| {name} | {acc_m:.2f} ± {acc_s:.2f} | {ep_m:.2f} ± {ep_s:.2f} | "
                     f"{vs_set} | {evo:.2f} | {ok[0]['connections']} |")
    for command in sorted(carried):
        lines += ["", f"\\* carried over from the earlier run `{command}` (not rerun)."]
    lines += ["", "GSE, Top-KAST and RigL update inside the training steps (every epoch's last "
              "step by default), so their topology time is part of the epoch time, not of the "
              "'topology' column; SET and static evolve after the epoch."]
    if cost:
        reps = next(iter(cost.values())).get("reps", 15)
        lines += ["", "## One topology update vs one training step (same batch of 128)", "",
                  f"Medians over {reps} repetitions (after warm-up); update / step is the median "
                  "of each update's ratio to the step just before it.", "",
                  "| method | training step (ms) | topology update (ms) | update / step |",
                  "| --- | --- | --- | --- |"]
        for m, c in cost.items():
            lines.append(f"| {m} | {1e3 * c['step_s']:.1f} | {1e3 * c['update_s']:.1f} | "
                         f"{c['ratio']:.2f} |")
    if steps:
        n = next(iter(steps.values()))["steps"]
        base = steps.get("set", {}).get("step_s")
        lines += ["", "## Per-step cost, methods in lockstep", "",
                  f"Median of {n} training steps (the trainer's loop body with the method's "
                  "after_step hook; no update step) with the methods interleaved on the same "
                  "batches, so machine load cancels out of the comparison; an epoch is about "
                  "steps per epoch x step, plus one update from the table above.", "",
                  "| method | step (ms) | vs SET |", "| --- | --- | --- |"]
        for m, c in steps.items():
            vs = f"{100 * (c['step_s'] / base - 1):+.1f} %" if base else ""
            lines.append(f"| {m} | {1e3 * c['step_s']:.2f} | {vs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default 30 (2 with --quick)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small net on a subset, 2 epochs")
    ap.add_argument("--no-cost", action="store_true", help="skip the update-cost table")
    ap.add_argument("--no-steps", action="store_true", help="skip the lockstep step-cost table")
    ap.add_argument("--steps-only", action="store_true",
                    help="only (re)measure the lockstep step costs and rewrite the report of the "
                         "existing results file with them")
    ap.add_argument("--label", default="",
                    help="a line for the report's header, e.g. the commit measured")
    ap.add_argument("--keep-previous", action="store_true",
                    help="copy the methods not run now (e.g. the slow dense ceiling) from the "
                         "existing results file, marked as carried over")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-test", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    q = QUICK if args.quick else {}
    cfg = {"epochs": args.epochs or q.get("epochs", 30), "seeds": args.seeds or
           q.get("seeds", [0, 1]), "hidden": q.get("hidden", HIDDEN), "threads": args.threads,
           "n_train": q.get("n_train"), "n_test": q.get("n_test"), "quick": args.quick,
           "label": args.label,
           "command": "python benchmarks/methods.py " + " ".join(sys.argv[1:])}
    env = {**os.environ, **{k: str(args.threads) for k in (
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    base = [sys.executable, __file__, "--epochs", str(cfg["epochs"]), "--threads",
            str(args.threads), "--hidden", *map(str, cfg["hidden"])]
    if cfg["n_train"]:
        base += ["--n-train", str(cfg["n_train"]), "--n-test", str(cfg["n_test"])]

    def call(extra):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, env=env)
        if proc.returncode:
            tail = proc.stderr.strip().splitlines() or ["no output"]
            return {"error": tail[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    out = Path(args.out)
    stem = "methods-quick" if args.quick else "methods"
    if args.steps_only:
        saved = json.loads((out / f"{stem}.json").read_text())
        if saved["config"]["hidden"] != cfg["hidden"] or saved["config"]["threads"] != args.threads:
            raise SystemExit(f"{out / stem}.json was measured with hidden "
                             f"{saved['config']['hidden']} and {saved['config']['threads']} "
                             "threads; pass the same --threads (and --quick) to add steps to it")
        steps = _checked(call(["--child", "steps"]), "step cost")
        saved["step_cost"] = steps
        (out / f"{stem}.json").write_text(json.dumps(saved, indent=1))
        text = report(saved["results"], saved["update_cost"], saved["config"], saved["machine"],
                      steps)
        (out / f"{stem}.md").write_text(text)
        print(text)
        return

    # Seed-major order: every method runs once per seed before any runs again, so a busy spell
    # on the shared machine spreads over the methods instead of landing on one of them.
    results: dict[str, list] = {method: [] for method in args.methods}
    for seed in cfg["seeds"]:
        for method in args.methods:
            print(f"{method} seed {seed} ({cfg['epochs']} epochs)...", flush=True)
            results[method].append(call(["--child", method, "--seed", str(seed)]))
            print("   ", results[method][-1], flush=True)
    previous = Path(args.out) / ("methods-quick.json" if args.quick else "methods.json")
    if args.keep_previous and previous.exists():
        old = json.loads(previous.read_text())
        for method, runs in old["results"].items():
            if method not in results and old["config"]["epochs"] == cfg["epochs"]:
                results[method] = [{**r, "carried_over": old["config"]["command"]} for r in runs]
    cost = None if args.no_cost else _checked(call(["--child", "cost"]), "update cost")
    steps = None if args.no_steps else _checked(call(["--child", "steps"]), "step cost")
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(
        {"config": cfg, "machine": info, "results": results, "update_cost": cost,
         "step_cost": steps}, indent=1))
    text = report(results, cost, cfg, info, steps)
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
