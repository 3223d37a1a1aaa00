"""Typed-buffer MPI for WASAP-SGD: timed waits, device staging, accounting and fault handling.

Every message is a NumPy (or CuPy) array handed to mpi4py's uppercase, buffer-based API
(``Isend``/``Irecv``/``Iallreduce``/``Ibcast``/``Igather``); nothing is pickled.  Small metadata
(model configuration, RNG states) travels as UTF-8 JSON in a ``uint8`` array.

No call blocks inside MPI.  Each operation is started non-blocking and completed by
:meth:`Comm.wait`, which polls ``Request.Test`` (back to back, yielding the core between polls,
then, for long waits, sleeping with a short back-off so idle ranks leave the CPU to busy ones)
and raises :class:`CommTimeout` naming the operation and the peer once ``timeout`` seconds pass
without completion.  :func:`guarded` turns any exception on any rank into a message naming the rank and
the cause followed by ``MPI_Abort``, which ends every rank of the job with a non-zero status, so
a failure can never leave the other ranks waiting.  A rank killed by a signal is detected by the
launcher (MPICH's hydra, Open MPI's prterun), which then ends the job.

GPU ranks: :func:`select_gpu` binds rank ``i`` of a node to GPU ``i mod n_gpus``.  CuPy arrays
are staged through host memory after synchronising the current stream; with a CUDA-aware MPI,
set ``SPARSEKIT_CUDA_AWARE_MPI=1`` to pass device pointers directly (the stream is synchronised
before every MPI call either way, since MPI knows nothing of CUDA streams).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import numpy as np

from .._errors import EXPECTED_ERRORS

TIMEOUT_ENV = "SPARSEKIT_MPI_TIMEOUT"
CUDA_AWARE_ENV = "SPARSEKIT_CUDA_AWARE_MPI"
DEFAULT_TIMEOUT = 300.0
# Poll back to back (yielding the core between polls) this long before sleeping: covers the
# waits of a step in a balanced job without adding latency; sleeps are short for the same reason.
SPIN_SECONDS = 0.05
MAX_SLEEP = 2e-4
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # as the command line's exit code for Ctrl-C (cli/options.py)
# MPI_Abort makes the launcher kill every rank at once, and hydra may stop forwarding a rank's
# stderr before it has read what the rank wrote just before; this pause lets the message out.
ABORT_GRACE_SECONDS = 1.0
# If MPI_Abort has not ended this process by then, it ends itself (a rank that ends abnormally
# makes the launcher end the others): the job must never hang on its way down.
ABORT_DEADLINE_SECONDS = 10


class CommTimeout(RuntimeError):
    """A peer did not take part in an operation within the timeout."""


def import_mpi():
    """``mpi4py.MPI``, or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            f"parallel training needs mpi4py and an MPI library ({exc}); install them with "
            "pip install 'sparsekit[mpi]' (mpi4py + the mpich wheel, which brings mpiexec)"
        ) from None
    return MPI


def _is_device(arr) -> bool:
    return type(arr).__module__.startswith("cupy")


def _sync_stream(arr) -> None:  # pragma: no cover - needs a GPU
    import cupy

    cupy.cuda.get_current_stream().synchronize()


class Comm:
    """A communicator whose operations are typed, timed, counted and bounded in time.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    timeout : float, optional
        Seconds an operation may wait for its peers; default ``$SPARSEKIT_MPI_TIMEOUT`` or 300.

    Attributes
    ----------
    bytes_sent : int
        Payload bytes this rank handed to MPI (sends, its allreduce contribution, broadcasts as
        root); the wire volume of a collective depends on the MPI algorithm.
    time_comm : float
        Seconds spent inside communication calls (waiting included).
    """

    def __init__(self, comm=None, timeout: float | None = None) -> None:
        self.MPI = import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if timeout is None:
            text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
            try:
                timeout = float(text)
            except ValueError:
                raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got "
                                 f"{text!r}") from None
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self.cuda_aware = os.environ.get(CUDA_AWARE_ENV, "0") == "1"
        self.bytes_sent = 0
        self.time_comm = 0.0

    # --- completion ------------------------------------------------------------------------
    def _poll(self, done, what: str) -> None:
        """Call ``done()`` until it returns True; raise :class:`CommTimeout` at the deadline.

        Polls back to back, yielding the core between polls (a message that is being pipelined
        needs both sides to poll, so sleeping there would stretch the transfer), then, once the
        wait is clearly long, sleeps with a back-off so idle ranks leave the CPU to busy ones.
        """
        start = time.perf_counter()
        deadline, spin_until, delay = start + self.timeout, start + SPIN_SECONDS, 2e-5
        while not done():
            now = time.perf_counter()
            if now > deadline:
                raise CommTimeout(f"rank {self.rank}: {what} did not complete within "
                                  f"{self.timeout:.0f} s (a peer is stuck or gone)")
            if now < spin_until:
                os.sched_yield()
            else:
                time.sleep(delay)
                delay = min(delay * 1.5, MAX_SLEEP)
        self.time_comm += time.perf_counter() - start

    def wait(self, req, what: str, status=None) -> None:
        """Complete ``req`` or raise :class:`CommTimeout` after ``self.timeout`` seconds."""
        self._poll(lambda: req.Test(status), what)

    # --- staging ---------------------------------------------------------------------------
    def _out(self, buf):
        """The object to hand MPI for an outgoing buffer (host copy of device data)."""
        if _is_device(buf):  # pragma: no cover - needs a GPU
            _sync_stream(buf)
            return buf if self.cuda_aware else buf.get()
        if not buf.flags.c_contiguous:
            raise ValueError("MPI buffers must be C-contiguous")
        return buf

    def _in(self, buf):
        """``(mpi_buffer, finish)`` for an incoming buffer; ``finish()`` moves staged data."""
        if _is_device(buf) and not self.cuda_aware:  # pragma: no cover - needs a GPU
            _sync_stream(buf)
            host = np.empty(buf.shape, dtype=buf.dtype)
            return host, lambda: buf.set(host)
        if _is_device(buf):  # pragma: no cover - needs a GPU
            _sync_stream(buf)
        elif not buf.flags.c_contiguous:
            raise ValueError("MPI buffers must be C-contiguous")
        return buf, lambda: None

    # --- point to point --------------------------------------------------------------------
    def send(self, buf, dest: int, tag: int, what: str = "send") -> None:
        out = self._out(buf)
        req = self.comm.Isend(out, dest=dest, tag=tag)
        self.wait(req, f"{what} to rank {dest}")
        self.bytes_sent += buf.nbytes

    def recv(self, buf, source: int, tag: int, what: str = "receive"):
        """Receive into ``buf``; returns the ``MPI.Status`` (source, tag, count)."""
        mpi_buf, finish = self._in(buf)
        status = self.MPI.Status()
        req = self.comm.Irecv(mpi_buf, source=source, tag=tag)
        peer = "any rank" if source == self.MPI.ANY_SOURCE else f"rank {source}"
        self.wait(req, f"{what} from {peer}", status)
        finish()
        return status

    def probe(self, source: int, tag: int, what: str = "message"):
        """Wait (polling ``Iprobe``) until a message matches; returns its ``MPI.Status``."""
        status = self.MPI.Status()
        peer = "any rank" if source == self.MPI.ANY_SOURCE else f"rank {source}"
        self._poll(lambda: self.comm.Iprobe(source=source, tag=tag, status=status),
                   f"{what} from {peer}")
        return status

    def recv_new(self, source: int, tag: int, dtype, what: str = "receive") -> np.ndarray:
        """Receive a host array whose length the receiver does not know in advance."""
        dtype = np.dtype(dtype)
        status = self.probe(source, tag, what)
        out = np.empty(status.Get_count(self.MPI.BYTE) // dtype.itemsize, dtype=dtype)
        self.recv(out, status.Get_source(), tag, what)
        return out

    # --- collectives -----------------------------------------------------------------------
    def allreduce(self, buf, op=None, what: str = "allreduce"):
        """In-place allreduce (default: sum) of ``buf`` over all ranks; returns ``buf``."""
        op = self.MPI.SUM if op is None else op
        mpi_buf, finish = self._in(buf)
        if mpi_buf is not buf:  # pragma: no cover - staged device buffer
            mpi_buf[...] = buf.get()
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, mpi_buf, op=op)
        self.wait(req, what)
        finish()
        self.bytes_sent += buf.nbytes
        return buf

    def bcast(self, buf, root: int = 0, what: str = "broadcast"):
        """In-place broadcast of ``buf`` from ``root``; returns ``buf``."""
        mpi_buf, finish = self._in(buf)
        if self.rank == root and mpi_buf is not buf:  # pragma: no cover - staged device buffer
            mpi_buf[...] = buf.get()
        req = self.comm.Ibcast(mpi_buf, root=root)
        self.wait(req, f"{what} from rank {root}")
        if self.rank != root:
            finish()
        else:
            self.bytes_sent += buf.nbytes
        return buf

    def gather(self, row: np.ndarray, root: int = 0, what: str = "gather"):
        """Stack every rank's equal-length 1-D host ``row``; the table on ``root``, else None."""
        row = np.ascontiguousarray(row)
        table = np.empty((self.size, row.shape[0]), row.dtype) if self.rank == root else None
        req = self.comm.Igather(row, table, root=root)
        self.wait(req, what)
        self.bytes_sent += row.nbytes
        return table

    def barrier(self, what: str = "barrier") -> None:
        self.wait(self.comm.Ibarrier(), what)

    # --- small metadata ----------------------------------------------------------------------
    def bcast_json(self, obj=None, root: int = 0, what: str = "metadata"):
        """Broadcast a JSON-serialisable object from ``root`` as a ``uint8`` buffer."""
        data = (np.frombuffer(json.dumps(obj).encode(), np.uint8).copy() if self.rank == root
                else None)
        n = self.bcast(np.array([0 if data is None else data.size], np.int64), root, what)
        if data is None:
            data = np.empty(int(n[0]), np.uint8)
        self.bcast(data, root, what)
        return json.loads(data.tobytes().decode())

    def send_json(self, obj, dest: int, tag: int, what: str = "metadata") -> None:
        self.send(np.frombuffer(json.dumps(obj).encode(), np.uint8).copy(), dest, tag, what)

    def recv_json(self, source: int, tag: int, what: str = "metadata"):
        return json.loads(self.recv_new(source, tag, np.uint8, what).tobytes().decode())

    def abort(self, code: int = EXIT_FAILURE) -> None:  # pragma: no cover - ends the process
        self.comm.Abort(code)


@contextlib.contextmanager
def guarded(comm: Comm) -> Iterator[Comm]:
    """Run a block so that a failure on any rank ends the whole job, never hangs it.

    On an exception (``KeyboardInterrupt`` and ``SystemExit`` included) with more than one
    rank, print ``sparsekit[rank r/N]: <Type>: <message>`` to stderr (after the traceback, for
    an exception that is not one of :data:`sparsekit._errors.EXPECTED_ERRORS` or with the
    ``sparsekit`` logger at DEBUG), then call ``MPI_Abort``: every rank exits non-zero.  Should ``MPI_Abort`` return, raise or block
    (seen rarely on a loaded machine), the rank ends itself at once, or after
    ``ABORT_DEADLINE_SECONDS``, and the launcher ends the others.  With a single rank the
    exception propagates normally (there is nobody to wait for it).
    """
    try:
        yield comm
    except BaseException as exc:
        if comm.size == 1:
            raise
        if (not isinstance(exc, EXPECTED_ERRORS + (KeyboardInterrupt, SystemExit))
                or logging.getLogger("sparsekit").isEnabledFor(logging.DEBUG)):
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            sys.stderr.write("".join(lines))
        interrupted = isinstance(exc, KeyboardInterrupt)
        code = EXIT_INTERRUPTED if interrupted else EXIT_FAILURE
        what = ("interrupted (the run folder continues with --resume)" if interrupted
                else f"{type(exc).__name__}: {exc}")
        sys.stderr.write(f"sparsekit[rank {comm.rank}/{comm.size}]: {what}; aborting all "
                         "ranks\n")
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_SECONDS)
        _exit_after(ABORT_DEADLINE_SECONDS)
        try:  # pragma: no cover - ends the process
            comm.abort(code)
        finally:
            # MPI_Abort has been seen to return (or raise) under load; falling through to the
            # interpreter's exit would then block in MPI_Finalize while the peers wait for us.
            os._exit(code)


def _exit_after(seconds: int) -> None:
    """End this process abnormally after ``seconds``, whatever it is doing then."""
    if threading.current_thread() is threading.main_thread():
        # SIGALRM's default action ends the process in the kernel: no Python code (and no GIL)
        # is needed, so it works even if MPI_Abort blocks inside the MPI library.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(seconds)
    else:
        timer = threading.Timer(seconds, os._exit, (EXIT_FAILURE,))
        timer.daemon = True
        timer.start()


def node_rank(comm: Comm) -> tuple[int, int]:
    """``(index, count)`` of this rank among the ranks sharing its node."""
    node = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED, key=comm.rank)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def share_cores(comm: Comm, backend) -> int | None:
    """Split a node's cores evenly between its ranks, unless a thread count was chosen.

    A CPU backend left at its default (every usable core) with ``OMP_NUM_THREADS`` unset gets
    ``cores // ranks_on_node`` threads (at least 1), so N ranks do not run N x cores threads.
    Returns the new count, or None when nothing changed.
    """
    if "OMP_NUM_THREADS" in os.environ or not hasattr(backend, "num_threads"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _, on_node = node_rank(comm)
    if on_node < 2 or backend.num_threads != cores:
        return None
    backend.num_threads = max(1, cores // on_node)
    return backend.num_threads


def select_gpu(comm: Comm) -> int:  # pragma: no cover - needs a GPU
    """Bind this rank to GPU ``local_rank mod n_gpus`` (round-robin on the node)."""
    import cupy

    n = cupy.cuda.runtime.getDeviceCount()
    if n < 1:
        raise RuntimeError(f"rank {comm.rank}: no CUDA device is visible")
    device = node_rank(comm)[0] % n
    cupy.cuda.Device(device).use()
    return device


def rank_map(comm: Comm) -> str | None:
    """``"rank 0: pid 4242 on node-a, rank 1: ..."`` on rank 0 (None elsewhere); collective.

    A launcher reports a rank killed by a signal by its process id and host only, so printing
    this table at start-up is what names the rank in that message.
    """
    name = comm.MPI.Get_processor_name().encode()[:64].ljust(64, b"\0")
    row = np.frombuffer(int(os.getpid()).to_bytes(8, "little") + name, np.uint8).copy()
    table = comm.gather(row, what="rank map")
    if table is None:
        return None
    return ", ".join(f"rank {r}: pid {int.from_bytes(t[:8].tobytes(), 'little')} on "
                     f"{t[8:].tobytes().rstrip(bytes(1)).decode(errors='replace')}"
                     for r, t in enumerate(table))
