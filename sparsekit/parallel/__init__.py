"""Multi-process sparse training over MPI: WASAP-SGD (see :mod:`sparsekit.parallel.wasap`).

``sparsekit.train(..., parallel="wasap")`` dispatches here; run it under ``mpiexec``.  Importing
this package does not start MPI; :func:`train_wasap` does.
"""

from __future__ import annotations

import inspect

from .average import average_models, budget_keep_mask, prune_to_budget, remap_values, union_average
from .wasap import MODES, train_wasap

PARALLEL = ("wasap",)

__all__ = ["MODES", "PARALLEL", "agreed_time", "average_models", "budget_keep_mask",
           "prune_to_budget", "remap_values", "train_parallel", "train_wasap", "union_average",
           "world_rank"]


def train_parallel(parallel: str, model, data, **options):
    """Run :func:`sparsekit.train`'s arguments through a parallel trainer.

    ``options`` are :func:`sparsekit.train`'s keyword arguments; ``wasap_mode`` and
    ``phase1_fraction`` select WASAP's variant.  An option the parallel trainer does not know is
    refused unless it has ``train``'s default value.
    """
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be None or one of {PARALLEL}, got {parallel!r}")
    from ..training.loop import train

    mode = options.pop("wasap_mode", "sync")
    fraction = options.pop("phase1_fraction", 0.7)
    accepted = inspect.signature(train_wasap).parameters
    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()}
    for key in list(options):
        if key not in accepted:
            if key in defaults and options[key] == defaults[key]:
                del options[key]
            else:
                raise ValueError(f"{key} is not supported with parallel={parallel!r}")
    return train_wasap(model, data, mode=mode, phase1_fraction=fraction, **options)


def world_rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (starts MPI)."""
    from .comm import import_mpi

    return import_mpi().COMM_WORLD.Get_rank()


def agreed_time() -> float:
    """Rank 0's clock, broadcast to every rank, so that all ranks name the same run folder."""
    import time

    import numpy as np

    from .comm import Comm

    t = np.array([time.time()])
    Comm().bcast(t, 0, "start time")
    return float(t[0])
