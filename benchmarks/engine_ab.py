"""A/B of training speed between two commits: the default Fashion-MNIST network, side by side.

Builds ``--old`` (a commit) in a temporary git worktree, then trains the paper's network
(784-1000-1000-1000-10, SET, SGD, batch 128) for ``--epochs`` epochs with each tree, every run
in its own process with an explicit thread count, the two trees alternating within each round
so that load on a shared machine hits both alike.  Reports the median training seconds per
epoch (evaluation excluded) of each tree and their ratio.

    python benchmarks/engine_ab.py --old 7ad9080 [--epochs 3] [--threads 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
from sparsekit import load_dataset, train
from sparsekit._cython.backend import CpuBackend
data = load_dataset("fashion-mnist")
times = []
train([784, 1000, 1000, 1000, 10], (data.x_train, data.y_train), backend=CpuBackend({threads}),
      epochs={epochs}, seed=0, callbacks=[lambda r, m: times.append(r["time_train"])])
import sparsekit
print(json.dumps({{"file": sparsekit.__file__, "epoch_s": times}}))
"""


def build(commit: str, where: Path) -> Path:
    tree = where / commit
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"], cwd=tree,
                   check=True, capture_output=True)
    return tree


def run(tree: Path, threads: int, epochs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads, epochs=epochs)],
                         env=env, capture_output=True, text=True, check=True, cwd=tree)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["file"].startswith(str(tree)):
        raise RuntimeError(f"the child imported {result['file']}, not the tree {tree}")
    return result["epoch_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, help="the commit to compare with")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="sparsekit-ab-") as tmp:
        old = build(args.old, Path(tmp))
        try:
            trees = {"old": old, "new": ROOT}
            times: dict = {(k, t): [] for k in trees for t in args.threads}
            for r in range(args.rounds):
                for t in args.threads:
                    order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
                    for k in order:
                        times[k, t] += run(trees[k], t, args.epochs)
                        print(f"round {r + 1} threads {t} {k}: {times[k, t][-args.epochs:]}",
                              flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT,
                           capture_output=True)
    rows = []
    for t in args.threads:
        o, n = statistics.median(times["old", t]), statistics.median(times["new", t])
        rows.append({"threads": t, "old_s": o, "new_s": n, "new_over_old": n / o,
                     "old_all": times["old", t], "new_all": times["new", t]})
    command = " ".join(["python", "benchmarks/engine_ab.py", *sys.argv[1:]])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    m = describe()
    machine = (f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, load average "
               f"{' / '.join(m['loadavg'] or ['?'])} at the end")
    lines = [f"# Training speed A/B: {args.old} vs {head}", "",
             f"`{command}` on {machine}, {stamp}. Default Fashion-MNIST network, "
             f"{args.epochs} epochs x {args.rounds} rounds per tree and thread count, each run "
             "in its own process, trees alternating; median seconds of training per epoch "
             "(evaluation excluded).", "",
             f"| threads | {args.old} s/epoch | {head} s/epoch | new / old |",
             "|---|---|---|---|"]
    lines += [f"| {r['threads']} | {r['old_s']:.3f} | {r['new_s']:.3f} | "
              f"{r['new_over_old']:.3f} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine-ab.md").write_text("\n".join(lines) + "\n")
    (out / "engine-ab.json").write_text(json.dumps({"command": command, "old": args.old,
                                                    "new": head, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
