"""The ``sparsekit`` command line: ``train``, ``evaluate``.

Defaults of ``sparsekit train`` are the Fashion-MNIST setup of Curci et al. (2021):
784-1000-1000-1000-10, ε 20, SET ζ 0.3, All-ReLU α 0.6, dropout 0.3, lr 0.01, momentum 0.9,
weight decay 2e-4, batch 128.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import types
from pathlib import Path

from . import launch
from .options import UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="sparsekit", description=__doc__.split("\n")[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a sparse MLP and write a run folder")
    t.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, digits, synthetic, or a .npz path (default fashion-mnist)")
    t.add_argument("--data-dir", default=None, help="folder with the dataset's files")
    t.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000, 1000])
    t.add_argument("--method", default="set",
                   help="set, static, gse, topkast or rigl (default set)")
    t.add_argument("--backend", default="cpu", help="cpu, gpu or auto (default cpu)")
    t.add_argument("--gpu-memory-limit", default=None, metavar="SIZE",
                   help="cap GPU memory, e.g. 4GiB or 80%% (gpu backend; default: free memory)")
    t.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="host memory the run may use, e.g. 16GiB or 80%%; a run estimated not "
                        "to fit is refused before it starts (default: available memory)")
    t.add_argument("--epochs", type=int, default=None, help="default 100 (or the resumed run's)")
    t.add_argument("--batch-size", type=int, default=None, help="default 128")
    t.add_argument("--optimizer", default=None, choices=["sgd", "adam", "adamw"],
                   help="momentum SGD (default), Adam or AdamW")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 0.01 for sgd, 0.001 for adam and adamw)")
    t.add_argument("--lr-schedule", default=None, help="constant (default), step, cosine, linear")
    t.add_argument("--warmup-epochs", type=float, default=None,
                   help="ramp the learning rate linearly from 0.1x to 1x over this many epochs")
    t.add_argument("--lr-step-size", type=int, default=None,
                   help="step schedule: epochs between decays (default 30)")
    t.add_argument("--lr-gamma", type=float, default=None,
                   help="step schedule: factor of each decay (default 0.1)")
    t.add_argument("--momentum", type=float, default=None, help="sgd: default 0.9")
    t.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    t.add_argument("--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
                   help="adam/adamw: moment decay rates (default 0.9 0.999)")
    t.add_argument("--adam-eps", type=float, default=None, help="adam/adamw: default 1e-8")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="default 2e-4 for sgd, 0 for adam, 0.01 for adamw")
    t.add_argument("--decay", default=None,
                   help="sgd: coupled (L2, as PyTorch; default) or decoupled (reference code)")
    t.add_argument("--dropout", type=float, default=None, help="default 0.3")
    t.add_argument("--epsilon", type=float, default=None,
                   help="Erdős–Rényi density: connections per (n_in + n_out) (default 20)")
    t.add_argument("--zeta", type=float, default=None, help="set: fraction replaced (0.3)")
    t.add_argument("--alpha", type=float, default=None, help="All-ReLU slope (default 0.6)")
    t.add_argument("--activation", default=None, help="default allrelu")
    t.add_argument("--init", default=None, help="he_uniform (default), xavier_uniform, normal")
    t.add_argument("--fan-in", default=None,
                   help="scale of the initial weights: dense (paper; default) or each neuron's "
                        "actual fan-in; regrown weights use the dense scale")
    t.add_argument("--evolve-every", type=int, default=None, help="steps between updates")
    # Growth-method parameters: passed on only when given (method_params of train()).
    t.add_argument("--drop-fraction", type=float, default=None,
                   help="gse/topkast/rigl: largest fraction replaced per update (default 0.3)")
    t.add_argument("--t-end", type=float, default=None,
                   help="gse/topkast/rigl: stop updating after this fraction of training (0.75)")
    t.add_argument("--gamma", type=float, default=None,
                   help="gse/topkast: candidates sampled per update, times nnz (default 1)")
    t.add_argument("--sampler", default=None, help="gse: uniform, grabo or graest")
    t.add_argument("--forward-density", type=float, default=None,
                   help="topkast: density of the forward set (default: the ER budget)")
    t.add_argument("--backward-density", type=float, default=None,
                   help="topkast: density of the backward set (default: 2x forward)")
    t.add_argument("--prune-start", type=int, default=None,
                   help="first epoch of importance pruning (off by default)")
    t.add_argument("--prune-every", type=int, default=None, help="default 10")
    t.add_argument("--prune-percentile", type=float, default=None, help="default 10")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    t.add_argument("--out", default=None, help="run folder (default runs/<dataset>-<method>-<time>); an existing run is "
                        "refused (continue it with --resume)")
    t.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN from its last checkpoint, with its "
                        "configuration; other flags must match it, except --epochs, "
                        "--threads, --backend, --data-dir, the memory limits and output flags")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    t.add_argument("--no-plot", action="store_true", help="do not write plot.png")
    t.add_argument("--parallel", default=None, choices=["wasap"],
                   help="wasap: WASAP-SGD over MPI; start with mpiexec -n N sparsekit train ...")
    t.add_argument("--wasap-mode", default=None, choices=["sync", "async"],
                   help="phase 1: allreduce (sync) or a parameter server on rank 0 (async)")
    t.add_argument("--phase1-fraction", type=float, default=None,
                   help="fraction of the epochs before local training (default 0.7)")
    e = sub.add_parser("evaluate", help="evaluate a run's checkpoint on its test data")
    e.add_argument("run", help="run folder (or checkpoint .npz)")
    e.add_argument("--backend", default="cpu")
    e.add_argument("--dataset", default=None,
                   help="data whose test split to use: a dataset name or an .npz file (default: "
                        "the run's, from the config.json beside the checkpoint)")
    e.add_argument("--data-dir", default=None)
    return p


#: Growth-method parameters: passed on (as method_params) only when given.
METHOD_KEYS = ("drop_fraction", "t_end", "gamma", "sampler", "forward_density",
               "backward_density")
#: The paper's run length: the command line's default, where train() defaults to 10 epochs.
CLI_EPOCHS = 100



def train_config(args):
    """The :class:`~sparsekit.training.config.TrainConfig` of the flags given (the others keep
    their defaults); a bad value raises :class:`UsageError`."""
    from ..training.config import TrainConfig

    options = {k: getattr(args, k) for k in TrainConfig.options()
               if getattr(args, k, None) is not None}
    options["method_params"] = {k: getattr(args, k) for k in METHOD_KEYS
                                if getattr(args, k) is not None}
    options.setdefault("epochs", CLI_EPOCHS)
    options.pop("backend", None)  # resolved by the command (a Backend, with --threads)
    from ..training.step import make_growth

    try:
        config = TrainConfig(**options)
        # The growth method's own parameters (--gamma, --drop-fraction, ...) are checked when
        # it is set up: set it up once now, through the one set-up path, so they exit 2 too.
        make_growth(config, types.SimpleNamespace(init=config.init))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return config


#: Flags ``--resume`` lets differ from the run's: how long it runs, where and how it computes,
#: and what it prints; never what a step computes.
RESUME_MAY_CHANGE = ("epochs", "threads", "backend", "data_dir", "memory_limit",
                     "gpu_memory_limit", "no_progress", "no_plot", "resume", "config")


def check_flags(args) -> None:
    """Values train_config does not see (network, threads, sizes, backend): UsageError."""
    # Registered names, usable here or not (available_backends() leaves out a GPU this machine
    # lacks, and asking for one is then a runtime error, exit 1, not a usage error).
    from ..backends.registry import _FACTORIES as registered_backends
    from ..training.memory import parse_bytes

    try:
        if args.hidden is not None and min(args.hidden) < 1:
            raise ValueError(f"--hidden sizes must be >= 1, got {' '.join(map(str, args.hidden))}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        for flag, value in (("--memory-limit", args.memory_limit),
                            ("--gpu-memory-limit", args.gpu_memory_limit)):
            if value is not None:
                parse_bytes(value, flag)
        names = [*sorted(registered_backends), "auto"]
        if args.backend is not None and args.backend.lower() not in names:
            raise ValueError(f"unknown backend {args.backend!r} for --backend; choose one of "
                             f"{names}")
        if args.parallel is None and not args.resume:
            wasap_only = sorted({"wasap_mode", "phase1_fraction"} & set(getattr(args, "given",
                                                                             ())))
            if wasap_only:
                raise ValueError(f"--{wasap_only[0].replace('_', '-')} applies to --parallel "
                                 "wasap only")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def read_run_config(run_dir: Path) -> dict:
    """``run_dir/config.json``, checked; every problem is a ValueError naming the file."""
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a sparsekit run folder (no config.json)")
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    keys = ("dataset", "data_dir", "hidden", "backend", "train")
    if not isinstance(saved, dict) or any(k not in saved for k in keys):
        raise ValueError(f"{path} lacks some of the keys {', '.join(keys)}")
    for key, optional in (("dataset", False), ("data_dir", True), ("backend", False)):
        if not (isinstance(saved[key], str) or (optional and saved[key] is None)):
            raise ValueError(f"{path}: {key} must be a string, got {saved[key]!r}")
    return saved


def resume_differences(args, saved: dict, config) -> list[str]:
    """The flags given with ``--resume`` whose values differ from the run's."""
    given = set(getattr(args, "given", ())) - set(RESUME_MAY_CHANGE)
    diffs = []
    if "out" in given and Path(args.out).resolve() != Path(args.resume).resolve():
        diffs.append(f"out: the run's folder is {args.resume}, given {args.out}")
    for key in ("dataset", "hidden"):
        value = getattr(args, key)
        same = value == saved[key] or (key == "dataset"
                                       and _absolute(value, dataset=True) == saved[key])
        if key in given and not same:
            diffs.append(f"{key}: run has {saved[key]!r}, given {value!r}")
    from ..training.config import TrainConfig
    from ..training.loop import config_differences

    options = {k: getattr(args, k) for k in TrainConfig.options() if k in given}
    params = {k: getattr(args, k) for k in METHOD_KEYS if k in given}
    if params:
        options["method_params"] = {**config.method_params, **params}
    try:
        wanted = config.replace(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return diffs + config_differences(config, wanted, ())


def cmd_train(args) -> int:
    # Under mpiexec every rank runs this.  A rank that fails before training (its run folder
    # or data missing on its node) tells the others, which end too instead of waiting for it
    # in the next collective.
    several = launch.launched_ranks() > 1
    try:
        config, run_dir, saved, data, sizes, run_config = _prepare(args)
    except Exception as exc:
        if several:
            launch.ranks_agree(launch.failure_of(args.command, exc))
        raise
    if several:
        launch.ranks_agree(None)
    with contextlib.ExitStack() as stack:
        _own_run_dir(stack, run_dir, saved, fresh=not args.resume, parallel=config.parallel)
        return _run(args, config, run_config, saved, run_dir, data, sizes)


def _prepare(args):
    """Everything a run checks and loads before its folder is made: the config (a resumed
    run's, with the flags that may change), the folder's name, the data, the layer sizes."""
    from ..io.datasets import load_dataset
    from ..training.config import TrainConfig
    from ..training.loop import check_run

    if args.resume:
        run_dir = Path(args.resume)
        saved = read_run_config(run_dir)
        try:
            config = TrainConfig.from_dict(saved["train"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{run_dir / 'config.json'}: {exc}") from None
        check_flags(args)
        launch.check_launch(config.parallel)
        diffs = resume_differences(args, saved, config)
        if diffs:
            raise UsageError(f"--resume {run_dir}: flags differ from the run's configuration: "
                             f"{'; '.join(diffs)}; only --"
                             f"{', --'.join(k.replace('_', '-') for k in RESUME_MAY_CHANGE[:6])}"
                             " and output flags may change")
        if args.epochs is not None:
            config = config.replace(epochs=args.epochs)
            saved["train"] = config.to_dict()
            _check_extendable(run_dir, config.epochs)
        given = getattr(args, "given", ())
        if "backend" in given:
            saved["backend"] = args.backend
        if "data_dir" in given:
            saved["data_dir"] = _absolute(args.data_dir)
    else:
        config = train_config(args)  # before any folder or data: bad values exit 2
        check_flags(args)
        launch.check_launch(config.parallel)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(launch.start_time(config.parallel)))
        run_dir = Path(args.out or f"runs/{Path(args.dataset).stem}-{config.method_name}-{stamp}")
        saved = {"dataset": _absolute(args.dataset, dataset=True),
                 "data_dir": _absolute(args.data_dir),
                 "hidden": args.hidden,
                 "backend": args.backend or "cpu", "train": config.to_dict()}
    args.run_dir = run_dir  # named by the message of an interrupted run
    if config.parallel and config.wasap_mode == "async":
        from ..parallel import world_size
        from ..parallel.wasap import check_ranks

        try:  # train_wasap checks it too, but only after the folder is made
            check_ranks(config.wasap_mode, world_size())
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    # Data errors, a batch larger than the data (or a WASAP shard) and a run too large for the
    # memory exit before any folder is made; then the folder is locked (rank 0 under MPI).
    data = load_dataset(saved["dataset"], data_dir=saved["data_dir"])
    sizes, run_config = _run_config(args, config, saved, data)
    if config.parallel:  # rank 0 checks the memory in train_wasap
        launch.check_shards(config, data.x_train.shape[0])
    elif not args.resume:
        check_run(sizes, run_config, data.x_train.shape[0], data.x_test.shape[0])
    return config, run_dir, saved, data, sizes, run_config


def _run_config(args, config, saved: dict, data):
    """The layer sizes and the :class:`TrainConfig` the run trains with (the backend, its
    threads, the progress bar and memory limits of this command)."""
    from ..backends import get_backend

    backend = get_backend(saved["backend"])
    if args.threads and hasattr(backend, "num_threads"):
        backend.num_threads = args.threads
    progress = not args.no_progress and sys.stderr.isatty()
    return [data.n_features, *saved["hidden"], data.n_classes], config.replace(
        backend=backend, progress=progress, gpu_memory_limit=args.gpu_memory_limit,
        memory_limit=args.memory_limit)


def _check_extendable(run_dir: Path, epochs: int) -> None:
    """Refuse ``--epochs`` a finished WASAP-SGD run cannot reach, before its folder changes
    (train_wasap refuses it too, but under mpiexec an error there ends every rank at once)."""
    from ..io.checkpoint import peek_train_state
    from ..training.history import CHECKPOINT

    try:
        state = peek_train_state(run_dir / CHECKPOINT)
    except Exception:  # noqa: BLE001 - missing or damaged: the run's own load reports it
        return
    wasap = state.get("wasap")
    if isinstance(wasap, dict) and wasap.get("stage") == "final" and \
            epochs > int(state.get("epoch", 0)):
        from ..parallel.wasap import finished_run_error

        raise ValueError(finished_run_error(run_dir, int(state["epoch"]), epochs))


def _absolute(path, *, dataset: bool = False):
    """A dataset file or data folder as an absolute path, so that ``evaluate`` and ``--resume``
    from another working directory read the same data.  A dataset name stays a name, even
    where the working directory holds a folder of that name (the data itself, say)."""
    if path is None or not Path(path).exists():
        return path
    if dataset:
        from ..io.datasets import is_dataset_name

        if is_dataset_name(path):
            return path
    return str(Path(path).resolve())


def _keep_config_unless_trained(stack, run_dir: Path, checkpoint: str, write) -> None:
    """Put a resumed run's ``config.json`` back if this command fails before it saves a
    checkpoint (say ``--epochs`` the run cannot reach): the folder then describes what it
    holds."""
    config, ckpt = run_dir / "config.json", run_dir / checkpoint

    def stamp():
        st = ckpt.stat() if ckpt.exists() else None
        return None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino)

    before, text = stamp(), config.read_text()

    def restore(exc_type, exc, tb) -> bool:
        if exc_type is not None and stamp() == before:
            write(config, text)
        return False  # the error goes on

    stack.push(restore)


def _own_run_dir(stack, run_dir: Path, saved: dict, fresh: bool, parallel) -> None:
    """Lock ``run_dir`` for the rest of the command and write its ``config.json``; under MPI
    rank 0 does it, and a failure there ends every rank."""
    from ..io.runfolder import refuse_existing_run, run_folder_lock, write_text_atomic
    from ..training.history import CHECKPOINT

    def own():
        stack.enter_context(run_folder_lock(run_dir, "run folder", allow_nested=True))
        if fresh:  # a folder whose run never finished an epoch has nothing to lose
            refuse_existing_run(run_dir, f"continue it with --resume {run_dir} or choose "
                                "another --out", (CHECKPOINT,))
        else:
            _keep_config_unless_trained(stack, run_dir, CHECKPOINT, write_text_atomic)
        write_text_atomic(run_dir / "config.json", json.dumps(saved, indent=1))

    if not parallel:
        own()
        return
    from ..parallel.comm import Comm, guarded

    comm = Comm()
    error = None
    with guarded(comm):  # anything unexpected still ends every rank
        if comm.rank == 0:
            try:
                own()
            except (OSError, RuntimeError, ValueError) as exc:
                error = exc
        failed = comm.bcast_json(error is not None, 0, "run folder state")
    if error is not None:  # rank 0 reports it once, as a one-line error
        raise error
    if failed:
        raise SystemExit(EXIT_ERROR)


def _run(args, config, run_config, saved: dict, run_dir: Path, data, sizes) -> int:
    """Train ``run_config`` in the held ``run_dir`` and write the plot."""
    from ..training.history import CHECKPOINT
    from ..training.loop import train

    rank = launch.rank(config.parallel)  # under mpiexec every rank runs this; 0 writes
    backend = run_config.backend
    if rank == 0:
        print(f"sparsekit: {saved['dataset']} ({data.x_train.shape[0]} train, "
              f"{data.x_test.shape[0]} test), layers {sizes}, backend {backend.name}, "
              f"optimizer {config.optimizer}, run folder {run_dir}", flush=True)
    resume = bool(args.resume) and (run_dir / CHECKPOINT).exists()
    result = train(sizes, data, run_config, run_dir=run_dir, resume=resume,
                   log=_epoch_log(config))
    if not args.no_plot and result.history and rank == 0:
        from .plot import plot_history

        plot_history(result.history, run_dir / "plot.png", result.model, data.image_shape)
    last = result.history[-1] if result.history else {}
    if "test_acc" in last:
        print(f"done: test accuracy {100 * last['test_acc']:.2f}% after {last['epoch']} epochs; "
              f"results in {run_dir}")
    elif last:
        print(f"done: {last['epoch']} epochs (no test set); results in {run_dir}")
    return EXIT_OK


def _epoch_log(config):
    """``log=`` for train(): None, as train() puts its epoch lines on the "sparsekit" logger
    (which the CLI prints); a parallel run reports through ``log=``, so it gets the logger."""
    if config.parallel:
        from .options import logger

        return logger.info
    return None


def main(argv=None) -> int:
    """Run a sub-command; the exit codes are documented in :mod:`sparsekit.cli.options`."""
    from .._errors import EXPECTED_ERRORS
    from .options import EXIT_INTERRUPTED, logger, parse_args, quiet_stdout, setup_logging

    if argv is None and hasattr(signal, "SIGPIPE"):
        # Like any Unix filter: output piped into a reader that stops (`| head`) ends the
        # command quietly instead of a traceback per line.  A run killed so loses at most its
        # current epoch, as with any kill; `--resume` continues it.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Every rank under mpiexec parses the same command line: rank 0 alone prints its usage
    # errors and help.
    with launch.hushed_unless_rank_0():
        args = parse_args(_parser(), argv)  # adds --quiet/--verbose and train's --config; exits 2
    setup_logging(args.quiet, args.verbose)
    logger.debug("arguments: %s", vars(args))
    try:
        with quiet_stdout(args.quiet):
            if args.command == "evaluate":
                from .evaluate import cmd_evaluate

                return cmd_evaluate(args)
            return cmd_train(args)
    except UsageError as exc:
        print(f"sparsekit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EXPECTED_ERRORS as exc:
        logger.debug("traceback of the error below", exc_info=True)
        print(f"sparsekit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        started = run_dir is not None and (Path(run_dir) / "config.json").is_file()
        resume = f"; resume with sparsekit train --resume {run_dir}" if started else ""
        print(f"sparsekit: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
