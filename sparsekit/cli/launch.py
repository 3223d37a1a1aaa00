"""The command line under ``mpiexec``: which rank this is, the start time all ranks agree on,
how many ranks the launcher started, and the start-up checks every rank must pass together."""

from __future__ import annotations

import sys
import time

from .options import EXIT_ERROR, UsageError


def rank(parallel) -> int:
    """MPI rank of this process for a parallel run, else 0."""
    if not parallel:
        return 0
    from ..parallel import world_rank

    return world_rank()


def start_time(parallel) -> float:
    """Now, as rank 0 sees it in a parallel run, so all ranks pick one run folder."""
    if not parallel:
        return time.time()
    from ..parallel import agreed_time

    return agreed_time()


def check_launch(parallel) -> None:
    """A run that is not WASAP-SGD but was started as several MPI ranks: UsageError."""
    ranks = launched_ranks()
    if not parallel and ranks > 1:
        raise UsageError(f"started as {ranks} MPI ranks, but the run is not --parallel wasap: "
                         "each rank would train its own copy; add --parallel wasap, or run one "
                         "process")


def launched_ranks() -> int:
    """How many ranks the MPI launcher started (its environment; 1 outside mpiexec)."""
    import os

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):  # MPICH's and Open MPI's
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def ranks_agree(error) -> None:
    """Under mpiexec, tell every rank whether any failed to start (data missing on one node, a
    missing GPU): each ends at once, instead of the others waiting in the next collective
    until the communication timeout.  The failing rank raises its own error."""
    import numpy as np

    from ..parallel.comm import Comm

    try:
        comm = Comm()
    except Exception:  # no usable MPI here: nobody to tell, the error stands as it is
        return
    failed = comm.allreduce(np.array([error is not None], np.int64), comm.MPI.MAX,
                            "start-up checks")
    if error is None and failed[0]:
        print(f"sparsekit[rank {comm.rank}/{comm.size}]: error: another rank could not start "
              "(its message says why)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def check_shards(config, n_train: int) -> None:
    """WASAP's shards (one per worker) must each hold a batch."""
    from ..parallel import world_size
    from ..parallel.wasap import check_shards as check

    check(n_train, world_size(), config.wasap_mode, config.batch_size)
