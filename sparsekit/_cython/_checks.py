"""Argument checks run by every kernel wrapper before it releases the GIL.

They are O(1) or O(rows): index contents are validated once, when a
:class:`sparsekit.nn.csr.CSR` is built, not on every product.
"""

import os


def check_threads(num_threads: int) -> int:
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = OpenMP default), got {num_threads}")
    return num_threads if num_threads else default_threads()


def default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def check_pattern(indptr, indices, data) -> int:
    """Cheap structural checks of CSR arrays; returns the number of rows."""
    n_rows = indptr.shape[0] - 1
    if n_rows < 0:
        raise ValueError("indptr must have at least one element")
    nnz = indices.shape[0]
    if data is not None and data.shape[0] != nnz:
        raise ValueError(f"data has {data.shape[0]} values but indices has {nnz}")
    if indptr[0] != 0 or indptr[n_rows] != nnz:
        raise ValueError(f"indptr must start at 0 and end at nnz={nnz}")
    return n_rows


def check_batch_operand(name, arr, n_rows, n_batch) -> None:
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n_rows}")
    if arr.shape[1] != n_batch:
        raise ValueError(f"{name} has batch size {arr.shape[1]}, expected {n_batch}")
