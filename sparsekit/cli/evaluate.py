"""``sparsekit evaluate``: a checkpoint's test loss and accuracy on its run's data (or on
data named with ``--dataset``)."""

from __future__ import annotations

from pathlib import Path

from .main import read_run_config
from .options import EXIT_OK, UsageError


def cmd_evaluate(args) -> int:
    from ..backends import get_backend
    from ..io.checkpoint import load_checkpoint
    from ..io.datasets import load_dataset

    try:
        get_backend(args.backend)
    except ValueError as exc:  # an unknown name; an unavailable GPU is a runtime error
        raise UsageError(str(exc)) from None
    path = Path(args.run)
    ckpt_path = path / "checkpoint.npz" if path.is_dir() else path
    has_config = (ckpt_path.parent / "config.json").exists()
    if args.dataset is None and not has_config and ckpt_path.is_file():
        raise UsageError(f"{ckpt_path} has no config.json beside it to name its data; give "
                         "the data with --dataset")
    ckpt = load_checkpoint(ckpt_path, backend=args.backend)
    saved = read_run_config(ckpt_path.parent) if has_config else {}
    data = load_dataset(args.dataset or saved["dataset"],
                        data_dir=args.data_dir or saved.get("data_dir"))
    loss, acc = ckpt.model.evaluate(data.x_test, data.y_test)
    wasap = ckpt.train_state.get("wasap")
    # In WASAP-SGD's phase 2 every worker trains its own model until the final average; the
    # run folder's checkpoint is then rank 0's.
    whose = (", rank 0's model: the workers' are averaged when the run ends"
             if isinstance(wasap, dict) and wasap.get("stage") == "phase2" else "")
    print(f"{ckpt_path}: test loss {loss:.4f}, accuracy {100 * acc:.2f}% "
          f"({data.x_test.shape[0]} samples, epoch {ckpt.train_state.get('epoch', '?')}, "
          f"connections {sum(ckpt.model.n_connections)}{whose})")
    return EXIT_OK
