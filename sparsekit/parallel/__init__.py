"""Multi-process sparse training over MPI: WASAP-SGD (see :mod:`sparsekit.parallel.wasap`).

``sparsekit.train(..., parallel="wasap")`` calls :func:`train_wasap` with its config; run it
under ``mpiexec``.  Importing this package does not start MPI; :func:`train_wasap` does.
"""

from __future__ import annotations

from .average import average_models, budget_keep_mask, prune_to_budget, remap_values, union_average
from .wasap import MODES, train_wasap

__all__ = ["MODES", "agreed_time", "average_models", "budget_keep_mask",
           "prune_to_budget", "remap_values", "train_wasap", "union_average",
           "world_rank", "world_size"]


def world_rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (starts MPI)."""
    from .comm import import_mpi

    return import_mpi().COMM_WORLD.Get_rank()


def world_size() -> int:
    """The number of ranks in ``MPI.COMM_WORLD`` (starts MPI)."""
    from .comm import import_mpi

    return import_mpi().COMM_WORLD.Get_size()


def agreed_time() -> float:
    """Rank 0's clock, broadcast to every rank, so that all ranks name the same run folder."""
    import time

    import numpy as np

    from .comm import Comm

    t = np.array([time.time()])
    Comm().bcast(t, 0, "start time")
    return float(t[0])
