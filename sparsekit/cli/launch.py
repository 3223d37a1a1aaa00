"""The command line under ``mpiexec``: which rank this is, the start time all ranks agree on,
how many ranks the launcher started, and the start-up checks every rank must pass together."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

from .options import EXIT_ERROR, EXIT_USAGE, UsageError


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
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):  # MPICH's and Open MPI's
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as the MPI launcher numbered it (its environment; 0 outside
    mpiexec), known before MPI starts."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):  # MPICH's and Open MPI's
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@contextlib.contextmanager
def hushed_unless_rank_0():
    """Under mpiexec, every rank parses the same command line: ranks other than 0 do so with
    their output discarded, so that a usage error or ``--help`` prints once."""
    if launched_ranks() > 1 and launched_rank() > 0:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            yield
    else:
        yield


def failure_of(command: str, exc: Exception) -> tuple[str, str, int]:
    """``(program, message, exit status)`` of an error, as :func:`main` would report it; a
    bug's traceback is printed here, since the ranks then end together."""
    from .._errors import EXPECTED_ERRORS

    if isinstance(exc, UsageError):
        return f"sparsekit {command}", str(exc), EXIT_USAGE
    if isinstance(exc, EXPECTED_ERRORS):
        return "sparsekit", str(exc), EXIT_ERROR
    traceback.print_exc()
    return "sparsekit", f"{type(exc).__name__}: {exc} (traceback above)", EXIT_ERROR


#: Tag of a start-up error sent to rank 0 (clear of the training messages' tags).
TAG_START_ERROR = 51


def ranks_agree(failure: tuple[str, str, int] | None) -> None:
    """Under mpiexec, tell every rank whether any failed to start (its data or run folder
    missing on its node, a missing GPU, a bad option).

    ``failure`` is this rank's ``(program, message, exit status)``, or None when it started.
    When every rank started, return.  Else every rank ends at once, instead of the others
    waiting in the next collective until the communication timeout, and the user reads each
    distinct message once: rank 0 prints it, naming the ranks unless all of them share it.
    A rank that failed exits with its own status, one that did not with rank 0's first failure's.
    """
    import numpy as np

    from ..parallel.comm import Comm

    try:
        comm = Comm()
    except Exception:  # no usable MPI here: nobody to tell, the error stands as it is
        return
    flag = np.array([failure is not None], np.int64)
    if not comm.allreduce(flag.copy(), comm.MPI.MAX, "start-up checks")[0]:  # in place
        return
    failed = comm.gather(flag, 0, "start-up checks")
    if comm.rank == 0:
        reports = {}
        for r in np.flatnonzero(failed[:, 0]):
            reports[int(r)] = (failure if r == 0 else
                               tuple(comm.recv_json(int(r), TAG_START_ERROR, "start-up error")))
        for line in failure_lines(reports, comm.size):
            print(line, file=sys.stderr)
        status = failure[2] if failure is not None else next(iter(reports.values()))[2]
    else:
        if failure is not None:
            comm.send_json(list(failure), 0, TAG_START_ERROR, "start-up error")
        status = failure[2] if failure is not None else EXIT_ERROR
    raise SystemExit(status)


def failure_lines(reports: dict[int, tuple[str, str, int]], size: int) -> list[str]:
    """One line per distinct ``(program, message)`` of ``reports`` (rank -> failure): as a
    single process prints it when all ``size`` ranks failed alike, else tagged with the ranks."""
    groups: dict[tuple[str, str], list[int]] = {}
    for r in sorted(reports):
        groups.setdefault(tuple(reports[r][:2]), []).append(r)
    if len(groups) == 1 and len(reports) == size:
        (prog, message), = groups
        return [f"{prog}: error: {message}"]
    lines = []
    for (prog, message), ranks in groups.items():
        who = (f"rank {ranks[0]}" if len(ranks) == 1
               else f"ranks {','.join(map(str, ranks))}")
        lines.append(f"sparsekit[{who}/{size}]{prog[len('sparsekit'):]}: error: {message}")
    return lines


def check_shards(config, n_train: int) -> None:
    """WASAP's shards (one per worker) must each hold a batch."""
    from ..parallel import world_size
    from ..parallel.wasap import check_shards as check

    check(n_train, world_size(), config.wasap_mode, config.batch_size)
