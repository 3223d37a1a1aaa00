"""``kill -9`` a training run many times, then check it ends bit-identical to an uninterrupted one.

Half the kills land at a random moment (startup, training, evaluation), half inside a
checkpoint write (as soon as ``.checkpoint.npz.tmp-<pid>`` appears).  After the last kill the
run is resumed to the end and compared with a reference run of the same seed: every weight,
index, bias and optimizer-state array, and the history without its timings.  Heavy: run it
under ``flock /tmp/bench.lock``::

    flock /tmp/bench.lock python benchmarks/kill_resume.py --kills 20 --optimizer adam
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

JOB = """
import sys, time
import numpy as np
from sparsekit import train
from sparsekit.nn.model import SparseMLP
_backward = SparseMLP.backward  # a pause per step (arithmetic untouched): kills land mid-epoch
SparseMLP.backward = lambda self, *a, **k: (time.sleep(0.003), _backward(self, *a, **k))[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((4000, 64)).astype(np.float32)
y = (x[:, :8].sum(1) > 0).astype(np.int64) + (x[:, 8] > 0.5)
data = (x, y, x[:500], y[:500])
if sys.argv[2] == "1":
    train([64, 600, 600, 3], data, run_dir=sys.argv[1], resume=True)
else:
    train([64, 600, 600, 3], data, run_dir=sys.argv[1], epochs=40, batch_size=32, seed=5,
          optimizer=sys.argv[3], prune_start=3, prune_every=5, epsilon=30)
"""


def main() -> int:
    from sparsekit.io.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="kill-resume-")
    script = os.path.join(root, "job.py")
    with open(script, "w") as fh:
        fh.write(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = [sys.executable, script]
    subprocess.run([*job, f"{root}/ref", "0", args.optimizer], check=True, env=env)
    run, rng = f"{root}/killed", random.Random(0)
    in_write = epochs = 0
    for i in range(args.kills):
        resume = os.path.exists(f"{run}/checkpoint.npz")
        proc = subprocess.Popen([*job, run, "1" if resume else "0", args.optimizer], env=env)
        if i % 2 == 0:
            time.sleep(rng.uniform(0.5, 3.0))
        else:  # inside a checkpoint write: kill as soon as the temporary file exists
            deadline = time.time() + 30
            while (not glob.glob(f"{run}/.checkpoint.npz.tmp-*") and proc.poll() is None
                   and time.time() < deadline):
                time.sleep(0.0005)
            in_write += bool(glob.glob(f"{run}/.checkpoint.npz.tmp-*"))
        if proc.poll() is not None:
            print(f"the run finished before kill {i + 1}; use more epochs", file=sys.stderr)
            return 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if os.path.exists(f"{run}/checkpoint.npz"):
            epochs = load_checkpoint(f"{run}/checkpoint.npz").train_state["epoch"]
    resume = os.path.exists(f"{run}/checkpoint.npz")
    subprocess.run([*job, run, "1" if resume else "0", args.optimizer], check=True, env=env)
    ref = load_checkpoint(f"{root}/ref/checkpoint.npz")
    got = load_checkpoint(f"{run}/checkpoint.npz")

    def strip(history):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]

    same = strip(ref.train_state["history"]) == strip(got.train_state["history"]) and all(
        all(np.array_equal(x, y) for x, y in [(a.w.data, b.w.data), (a.w.indices, b.w.indices),
                                              (a.b, b.b)])
        and all(np.array_equal(a.state_w[s], b.state_w[s]) for s in a.state_w)
        for a, b in zip(ref.model.layers, got.model.layers))
    left = glob.glob(f"{run}/.*.tmp-*")
    print(f"{args.kills} kills ({in_write} inside a checkpoint write; epoch {epochs} of 40 "
          f"reached by the last one), optimizer {args.optimizer}: bit-identical {same}, "
          f"temporaries left {left}")
    shutil.rmtree(root)
    return 0 if same and not left else 1


if __name__ == "__main__":
    sys.exit(main())
