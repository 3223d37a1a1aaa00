"""Tabular data: sparsekit's estimators against scikit-learn's MLP and gradient boosting.

Every data set available offline — scikit-learn's bundled ones, a Fashion-MNIST subset, two
``make_classification`` problems with many redundant and noise features, Friedman #1 with noise
features, the tables of Debian's ``python3-vega-datasets`` (``cars``, ``seattle-weather``) and
thirteen UCI tables of R's ``mlbench`` (``uci_*``, see ``MLBENCH``; read with ``pyreadr``) when
installed — is split 75/25 (stratified for classification) with each seed.  On each split
three models are fitted, **each fit in its own process** with the same explicit thread count
(``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``, and
``OMP_WAIT_POLICY=passive`` for every model, as sparsekit sets it for itself):

* ``SparseMLPClassifier()`` / ``SparseMLPRegressor()`` with their defaults (or ``--params``);
* ``MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=50)`` / ``MLPRegressor`` (same);
* ``HistGradientBoostingClassifier()`` / ``HistGradientBoostingRegressor()``.

Inputs are given as they come (no scaling: what a new user does first) unless ``--scale``
standardises them for every model.  Reported: held-out accuracy (R² for regression) and fit
seconds, medians over the seeds, side by side, in ``benchmarks/results/tabular.md`` and
``.json`` with the machine and the command.

    flock /tmp/bench.lock python benchmarks/tabular.py                 # the full sweep
    flock /tmp/bench.lock python benchmarks/tabular.py --scale --seeds 1 --models sparsekit mlp \
        --out benchmarks/results/tabular.scaled                         # standardised inputs
    python benchmarks/tabular.py --quick --params '{"dropout": 0.1}' --out /tmp/try
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SPARSEKIT_BENCH_CACHE", "/tmp/sparsekit-tabular"))
FMNIST = Path("/usr/share/datasets/fashion-mnist")
VEGA = Path("/usr/lib/python3/dist-packages/vega_datasets/_data")
MODELS = ("sparsekit", "mlp", "hgb")
TASKS = {"iris": "clf", "wine": "clf", "breast_cancer": "clf", "digits": "clf",
         "fashion_mnist_6k": "clf", "redundant_noise": "clf", "many_features": "clf",
         "vega_cars": "clf", "vega_seattle_weather": "clf",
         "diabetes": "reg", "friedman1_noise": "reg", "vega_cars_mpg": "reg",
         # UCI tables of R's mlbench (see MLBENCH)
         **{f"uci_{n}": "clf" for n in ("glass", "ionosphere", "pima", "sonar", "vehicle",
                                        "vowel", "satellite", "breast_cancer_wisc",
                                        "house_votes", "zoo", "letter")},
         "uci_boston": "reg", "uci_ozone": "reg"}
#: R's mlbench data (Debian's r-cran-mlbench, or its .deb unpacked without R:
#: ``apt-get download r-cran-mlbench && dpkg-deb -x r-cran-mlbench_*.deb DIR``, then
#: ``SPARSEKIT_MLBENCH=DIR/usr/lib/R/site-library/mlbench/data``), read with ``pyreadr``.
MLBENCH = Path(os.environ.get("SPARSEKIT_MLBENCH", "/usr/lib/R/site-library/mlbench/data"))


# --- data -------------------------------------------------------------------------------------
def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _vega_cars():
    rows = [r for r in json.loads((VEGA / "cars.json").read_text())
            if all(r[k] is not None for k in ("Miles_per_Gallon", "Horsepower"))]
    cols = ("Miles_per_Gallon", "Cylinders", "Displacement", "Horsepower", "Weight_in_lbs",
            "Acceleration")
    x = np.array([[float(r[c]) for c in cols] + [float(r["Year"][:4])] for r in rows])
    origin = np.array([r["Origin"] for r in rows])
    return x, origin


def _vega_weather():
    lines = (VEGA / "seattle-weather.csv").read_text().splitlines()[1:]
    x, y = [], []
    for line in lines:
        date, *vals, weather = line.split(",")
        month = int(date.split("/")[1])
        x.append([float(v) for v in vals] + [np.cos(2 * np.pi * month / 12),
                                             np.sin(2 * np.pi * month / 12)])
        y.append(weather)
    return np.array(x), np.array(y)


def available() -> list[str]:
    """Names of the data sets this machine has."""
    out = []
    for name in TASKS:
        if name.startswith("fashion") and not (FMNIST / "train-images-idx3-ubyte.gz").exists():
            continue
        if name.startswith("vega") and not VEGA.exists():
            continue
        if name.startswith("uci_") and not (MLBENCH.exists() and _has("pyreadr")):
            continue
        out.append(name)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


#: mlbench data set -> (table, target column, columns to drop)
_MLBENCH = {"glass": ("Glass", "Type", ()), "ionosphere": ("Ionosphere", "Class", ("V2",)),
            "pima": ("PimaIndiansDiabetes", "diabetes", ()), "sonar": ("Sonar", "Class", ()),
            "vehicle": ("Vehicle", "Class", ()), "vowel": ("Vowel", "Class", ("V1",)),
            "satellite": ("Satellite", "classes", ()),
            "breast_cancer_wisc": ("BreastCancer", "Class", ("Id",)),
            "house_votes": ("HouseVotes84", "Class", ()), "zoo": ("Zoo", "type", ()),
            "letter": ("LetterRecognition", "lettr", ()), "boston": ("BostonHousing", "medv", ()),
            "ozone": ("Ozone", "V4", ())}


def _mlbench(name: str):
    """``(X, y)`` of an mlbench table: rows with a missing value dropped (HouseVotes84's
    unanswered votes are 0.5 instead: most rows have one), ordinal and numeric factors as
    numbers, yes/no as 1/0, the V2 of Ionosphere (constant) and the speaker of Vowel left out."""
    import pyreadr

    table, target, drop = _MLBENCH[name]
    df = next(iter(pyreadr.read_r(str(MLBENCH / f"{table}.rda")).values()))
    df = df.drop(columns=list(drop))
    if name == "house_votes":
        votes = df.columns.drop(target)
        df[votes] = df[votes].apply(lambda c: c.map({"y": 1.0, "n": 0.0}).astype(float))
        df[votes] = df[votes].fillna(0.5)
    df = df.dropna()
    y = df.pop(target)
    x = df.apply(lambda c: c.astype(str).astype(float) if str(c.dtype) == "category"
                 else c.astype(float)).to_numpy(dtype=np.float64)
    task = TASKS[f"uci_{name}"]
    return x, (y.to_numpy(dtype=np.float64) if task == "reg" else y.astype(str).to_numpy(dtype=str))


def load(name: str):
    """``(X, y)`` of a data set (floats as they come; class labels or float targets)."""
    from sklearn import datasets as d

    if name in ("iris", "wine", "breast_cancer", "digits", "diabetes"):
        return getattr(d, f"load_{name}")(return_X_y=True)
    if name == "fashion_mnist_6k":  # a fixed 8 000-image subset of the 60 000 training images
        x = _idx(FMNIST / "train-images-idx3-ubyte.gz").reshape(-1, 784)
        y = _idx(FMNIST / "train-labels-idx1-ubyte.gz")
        pick = np.random.default_rng(0).choice(len(x), 8000, replace=False)
        return x[pick].astype(np.float32), y[pick].astype(np.int64)
    if name == "redundant_noise":  # 10 informative, 30 redundant, 60 noise features
        return d.make_classification(5000, 100, n_informative=10, n_redundant=30,
                                     n_classes=4, n_clusters_per_class=2, flip_y=0.02,
                                     random_state=0)
    if name == "many_features":  # 1 000 features, 980 of them redundant or noise
        return d.make_classification(2000, 1000, n_informative=20, n_redundant=80,
                                     n_classes=3, flip_y=0.02, random_state=1)
    if name == "friedman1_noise":  # 5 relevant features among 50
        return d.make_friedman1(3000, 50, noise=1.0, random_state=0)
    if name == "vega_cars":
        x, origin = _vega_cars()
        return x, origin
    if name == "vega_cars_mpg":
        x, _ = _vega_cars()
        return x[:, 1:], x[:, 0]
    if name == "vega_seattle_weather":
        return _vega_weather()
    if name.startswith("uci_"):
        return _mlbench(name[4:])
    raise ValueError(f"unknown data set {name!r}")


def cached(name: str) -> Path:
    path = CACHE / f"{name}.npz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        x, y = load(name)
        np.savez(path, x=np.asarray(x), y=np.asarray(y))
    return path


# --- one fit (the child process) ----------------------------------------------------------------
def make_model(kind: str, task: str, seed: int, params: dict):
    if kind == "sparsekit":
        from sparsekit import SparseMLPClassifier, SparseMLPRegressor

        cls = SparseMLPClassifier if task == "clf" else SparseMLPRegressor
        return cls(random_state=seed, **params)
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if task == "clf" else MLPRegressor
        return cls(hidden_layer_sizes=(256, 256), max_iter=50, random_state=seed)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingClassifier if task == "clf" else HistGradientBoostingRegressor
    return cls(random_state=seed)


def child(spec: dict) -> dict:
    import warnings

    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore")  # ConvergenceWarning at max_iter, by design of the peer
    data = np.load(spec["path"], allow_pickle=False)
    x, y = data["x"], data["y"]
    task = TASKS[spec["dataset"]]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=spec["seed"],
                                              stratify=y if task == "clf" else None)
    if spec["scale"]:
        scaler = StandardScaler().fit(x_tr)
        x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    model = make_model(spec["model"], task, spec["seed"], spec["params"])
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(x_tr, y_tr)
    fit_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {"score": float(model.score(x_te, y_te)), "fit_s": fit_s, "cpu_s": cpu_s,
            "n_iter": int(getattr(model, "n_iter_", 0) or 0)}


def run_child(spec: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT),
           # sparsekit sets this itself; the peers get it too, so that no model's threads spin
           # on a machine that other processes share (README: Threads)
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{spec}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the sweep --------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="*", help="default: every one available")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", action="store_true", help="standardise inputs for every model")
    p.add_argument("--params", default="{}", help="JSON: sparsekit estimator parameters")
    p.add_argument("--quick", action="store_true", help="one seed, classification only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tabular"),
                   help="output prefix (.md and .json are added)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    params = json.loads(args.params)
    names = args.datasets or available()
    seeds = 1 if args.quick else args.seeds
    if args.quick and not args.datasets:
        names = [n for n in names if TASKS[n] == "clf"]
    runs: dict = {}
    machine, t_start = describe(), time.time()
    for name in names:
        path = str(cached(name))
        for seed in range(seeds):
            for model in args.models:
                spec = {"dataset": name, "model": model, "seed": seed, "path": path,
                        "scale": args.scale, "params": params if model == "sparsekit" else {}}
                r = run_child(spec, args.threads)
                runs.setdefault(name, {}).setdefault(model, []).append(r)
                print(f"{name:22s} seed {seed} {model:9s} score {r['score']:.4f}  "
                      f"fit {r['fit_s']:7.2f} s  epochs {r['n_iter']}", flush=True)
    summary = {name: {m: {"score": statistics.median(r["score"] for r in rs),
                          "fit_s": statistics.median(r["fit_s"] for r in rs),
                          "cpu_s": statistics.median(r["cpu_s"] for r in rs)}
                      for m, rs in per.items()} for name, per in runs.items()}
    command = " ".join(["python benchmarks/tabular.py", *sys.argv[1:]])
    report = {"command": command, "loadavg_end": describe()["loadavg"],
              "date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": machine, "platform": platform.platform(), "threads": args.threads,
              "seeds": seeds, "scale": args.scale, "params": params,
              "versions": versions(), "wall_s": round(time.time() - t_start, 1),
              "summary": summary, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(report))
    print(markdown(report))


def versions() -> dict:
    import sklearn

    import sparsekit

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"sparsekit": getattr(sparsekit, "__version__", "?"), "commit": commit,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def markdown(report: dict) -> str:
    s = report["summary"]
    m = report["machine"]
    lines = [f"# Tabular data: sparsekit against scikit-learn ({report['date']})", "",
             f"Command: `{report['command']}` — {report['seeds']} seed(s), "
             f"{report['threads']} threads per fit, each fit in its own process; inputs "
             f"{'standardised' if report['scale'] else 'as they come (no scaling)'}.",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, load average "
             f"{m['loadavg']} at the start, {report['loadavg_end']} at the end; versions {report['versions']}; sweep wall time "
             f"{report['wall_s']} s.",
             f"sparsekit parameters: defaults{' + ' + json.dumps(report['params']) if report['params'] else ''}."
             " Peers: `MLPClassifier/MLPRegressor(hidden_layer_sizes=(256, 256), "
             "max_iter=50)`, `HistGradientBoostingClassifier/Regressor()`.", "",
             "Held-out accuracy (R² for regression) and fit seconds, medians over seeds.", "",
             "| data set | task | sparsekit | MLP (256,256) | HGB | sparsekit − MLP | "
             "fit s sparsekit | fit s MLP | fit s HGB | time sparsekit / MLP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    diffs, ratios = {"clf": [], "reg": []}, {"clf": [], "reg": []}
    for name, per in s.items():
        g = {k: per.get(k, {}) for k in MODELS}
        sc = {k: g[k].get("score") for k in MODELS}
        ts = {k: g[k].get("fit_s") for k in MODELS}
        diff = sc["sparsekit"] - sc["mlp"] if None not in (sc["sparsekit"], sc["mlp"]) else None
        ratio = ts["sparsekit"] / ts["mlp"] if None not in (ts["sparsekit"], ts["mlp"]) else None
        task = TASKS[name]
        if diff is not None:
            diffs[task].append(diff)
            ratios[task].append(ratio)

        def f(v, fmt):
            return "—" if v is None else format(v, fmt)

        lines.append(f"| {name} | {task} | {f(sc['sparsekit'], '.4f')} | {f(sc['mlp'], '.4f')} | "
                     f"{f(sc['hgb'], '.4f')} | {f(diff, '+.4f')} | {f(ts['sparsekit'], '.2f')} | "
                     f"{f(ts['mlp'], '.2f')} | {f(ts['hgb'], '.2f')} | {f(ratio, '.2f')} |")
    lines.append("")
    for task, label in (("clf", "classification"), ("reg", "regression")):
        if diffs[task]:
            lines.append(f"- {label}: mean sparsekit − MLP {np.mean(diffs[task]):+.4f} "
                         f"(worst {min(diffs[task]):+.4f}); fit time sparsekit / MLP: median "
                         f"{np.median(ratios[task]):.2f}, worst {max(ratios[task]):.2f}; "
                         f"summed {sum_time(s, task):.2f}")
    return "\n".join(lines) + "\n"


def sum_time(s: dict, task: str) -> float:
    a = sum(per["sparsekit"]["fit_s"] for n, per in s.items()
            if TASKS[n] == task and "sparsekit" in per and "mlp" in per)
    b = sum(per["mlp"]["fit_s"] for n, per in s.items()
            if TASKS[n] == task and "sparsekit" in per and "mlp" in per)
    return a / b if b else float("nan")


if __name__ == "__main__":
    main()
