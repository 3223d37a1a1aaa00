"""Run folders: one writer at a time, stale temporary files cleared, small files written whole.

A run folder (``checkpoint.npz``, ``history.json``, ``config.json``, ...) is owned by the one
process that holds an OS lock on its ``.lock`` file (``flock`` on POSIX, ``msvcrt.locking``
on Windows).  The lock ends with the process, however it ends (``kill -9`` included), so a
crashed run never leaves a folder locked; a second writer gets an error naming the holder's
PID instead of silently interleaving its results with the first one's.  Under MPI rank 0 holds
it for the whole job.  Locks are re-entrant within a process: ``sparsekit train`` takes the
lock before writing ``config.json`` and :func:`~sparsekit.training.loop.train` takes it again.

``flock`` locks are advisory and may not reach across machines on some network file systems
(see ``docs/guarantees.rst``).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"
#: Temporary files of the atomic writers (``.<name>.tmp-<pid>-<thread>``) and of
#: ``wasap-workers``.
_TEMP = re.compile(r"^\..+\.tmp-\d+(-\d+)?$")

# path -> [open file, depth, owning thread, allow_nested]: the locks this process holds.
_HELD: dict[str, list] = {}


def temporary_name(path: Path) -> Path:
    """Where an atomic writer puts ``path``'s new contents before renaming them over it:
    unique to this process and thread."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


def prepare_run_dir(run_dir, name: str = "run_dir") -> Path:
    """Create ``run_dir`` (and its parents), or fail at once with a one-line error.

    A component of the path that is a regular file is named in the message, so a bad folder
    fails before any training rather than at the first checkpoint.
    """
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), path)
        raise NotADirectoryError(f"{name} {path} cannot be created: {blocker} is a file, "
                                 "not a folder") from None
    except OSError as exc:
        raise OSError(f"{name} {path} cannot be created: {exc.strerror or exc}") from None
    return path


def _try_lock(fh) -> bool:
    """Take an exclusive, non-blocking lock on ``fh``; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(lock_path: Path) -> str:
    """``process 1234 on host`` as written by the holder, or a vaguer phrase."""
    try:
        text = lock_path.read_text().split()
    except OSError:
        text = []
    if len(text) >= 1 and text[0].isdigit():
        host = f" on {text[1]}" if len(text) > 1 else ""
        return f"process {text[0]}{host}"
    return "another process"


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` files left in ``run_dir`` (and ``wasap-workers``) by a
    writer that was killed mid-write; call it only while holding the folder's lock, when no
    other writer can exist.  Returns what was removed."""
    root = Path(run_dir)
    removed = []
    folders = [root]
    workers = root / "wasap-workers"
    if workers.is_dir():
        folders += [workers, *(p for p in workers.iterdir() if p.is_dir())]
    for folder in folders:
        for p in folder.iterdir():
            if _TEMP.match(p.name) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def run_folder_lock(run_dir, name: str = "run_dir", *,
                    allow_nested: bool = False) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block (creating the folder first).

    ``allow_nested``: the same thread may take the lock again inside the block (the command
    line holds the folder, then calls :func:`sparsekit.train`, which takes it too); otherwise
    a second taker -- another process, another thread, or a run started from this run's own
    callbacks -- is refused.

    Raises
    ------
    RunFolderBusy
        Another process (the message names its PID) or another taker in this one holds it.
    NotADirectoryError, OSError
        The folder cannot be created.
    """
    path = prepare_run_dir(run_dir, name)
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is not None:
        if held[2] != threading.get_ident() or not held[3]:
            raise RunFolderBusy(f"run folder {path} is in use by this process (another thread, "
                                "or a run whose callbacks started this one); choose another "
                                "folder")
        held[1] += 1
        try:
            yield path
        finally:
            held[1] -= 1
        return
    lock_path = path / LOCK_FILE
    fh = open(lock_path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        if not _try_lock(fh):
            raise RunFolderBusy(f"run folder {path} is in use by {_holder(lock_path)}; wait for "
                                "it to finish or choose another folder")
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        fh.flush()
        remove_stale_temporaries(path)
        _HELD[key] = [fh, 1, threading.get_ident(), allow_nested]
        try:
            yield path
        finally:
            _HELD.pop(key, None)
    finally:
        fh.close()  # closing the file releases the lock


def refuse_existing_run(run_dir, hint: str, names=("checkpoint.npz",)) -> None:
    """Raise ``FileExistsError`` when ``run_dir`` already holds a run (any of ``names``).

    A fresh run into such a folder would replace the other run's checkpoint and history at its
    first epoch; ``hint`` says how to continue that run instead (the option's name differs
    between :func:`sparsekit.train` and the command line).
    """
    path = Path(run_dir)
    found = [name for name in names if (path / name).exists()]
    if found:
        raise FileExistsError(f"{path} already holds a run ({found[0]}); {hint}")


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it over ``path``: a kill leaves the old file or
    the new one, never half of one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
