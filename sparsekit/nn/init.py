"""Erdős–Rényi sparse initialisation, drawn without any dense mask."""

from __future__ import annotations

import numbers
import threading

import numpy as np

from ..backends import Backend, get_backend
from .csr import CSR, index_dtype_for

INITS = ("he_uniform", "xavier_uniform", "normal")
FAN_INS = ("dense", "actual")


def check_init_options(init: str, fan_in: str) -> None:
    """Refuse an ``init`` or ``fan_in`` that :func:`init_values` does not know (checked when a
    model or a growth method is made, not at its first regrowth)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if fan_in not in FAN_INS:
        raise ValueError(f"fan_in must be one of {FAN_INS}, got {fan_in!r}")


def er_connections(n_out: int, n_in: int, epsilon: float) -> int:
    """Connections of an ER layer: ``min(n_in * n_out, round(epsilon * (n_in + n_out)))``."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f"layer shape must be positive, got ({n_out}, {n_in})")
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon > 0:
        raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}")  # NaN too
    wanted = float(epsilon) * (n_in + n_out)  # inf for a huge epsilon: then the layer is dense
    count = int(n_in * n_out if wanted >= n_in * n_out else round(wanted))
    if count < 1:  # a layer without connections passes nothing on: never what was meant
        raise ValueError(f"epsilon={epsilon} gives a {n_out} x {n_in} layer no connections "
                         f"(epsilon * (n_in + n_out) = {wanted:.3g}); raise epsilon")
    return count


def init_values(rows, w_shape: tuple[int, int], rng: np.random.Generator, dtype,
                init: str = "he_uniform", fan_in: str = "dense", row_counts=None,
                num_threads: int = 1) -> np.ndarray:
    """Initial values for connections in ``rows`` (output neurons) of a layer.

    Parameters
    ----------
    init : {"he_uniform", "xavier_uniform", "normal"}
        ``U(±sqrt(6 / fan_in))``, ``U(±sqrt(6 / (fan_in + fan_out)))`` or ``N(0, 1) / 10``.
    fan_in : {"dense", "actual"}
        ``"dense"`` uses n_in, as the paper does; ``"actual"`` uses each output neuron's number
        of incoming connections (``row_counts``), which keeps activations from shrinking ~5x per
        layer at ε = 20 and speeds up the start of training.
    num_threads : int, default 1
        Threads that may draw the uniform values (a backend's
        :meth:`~sparsekit.backends.Backend.host_threads`).  The values and the state ``rng``
        is left in are the same for every count.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if fan_in not in FAN_INS:
        raise ValueError(f"fan_in must be one of {FAN_INS}, got {fan_in!r}")
    n_out, n_in = w_shape
    rows = np.asarray(rows)
    m = rows.shape[0]
    if init == "normal":
        return (rng.standard_normal(m) / 10).astype(dtype)
    if fan_in == "dense":  # one limit for every value: a scalar, not m copies of it
        fin = float(n_in)
    else:
        if row_counts is None:
            raise ValueError("fan_in='actual' needs row_counts")
        fin = np.maximum(np.asarray(row_counts, dtype=np.float64)[rows], 1.0)
    denom = fin if init == "he_uniform" else fin + (n_out if fan_in == "dense" else fin)
    return _scaled_uniform(rng, m, np.sqrt(6.0 / denom), np.dtype(dtype), num_threads)


#: Bit generators whose ``advance`` jumps over a given number of 64-bit draws: one uniform
#: double takes one, so a chunk of draws can start from an advanced copy.
_JUMPABLE = (np.random.PCG64, np.random.PCG64DXSM)
#: The fewest values a thread of :func:`_scaled_uniform` draws: starting a thread took about
#: 120 µs on a 2-core virtual machine, where 2^16 values take about 220 µs.
MIN_CHUNK = 1 << 16


def _scaled_uniform(rng, m: int, limit, dtype, num_threads: int) -> np.ndarray:
    """``(rng.uniform(-1, 1, m) * limit).astype(dtype)`` bit for bit, leaving ``rng`` where
    that leaves it, in up to ``num_threads`` chunks drawn at once when the bit generator can
    jump ahead (NumPy releases the GIL while it fills an array).  Chunk i draws from a copy
    advanced to its first value, and ``rng`` ends where the last copy ended; ``advance``
    clears a bit generator's buffered 32-bit half, which the serial draw would keep, so it is
    put back.  ``random`` times 2 minus 1 is what ``uniform(-1, 1)`` computes (the product is
    exact, so a fused multiply-add gives the same)."""
    out = np.empty(m, dtype=dtype)
    bg = getattr(rng, "bit_generator", None)  # a legacy RandomState has none: serial
    n_chunks = (max(1, min(int(num_threads), m // MIN_CHUNK)) if type(bg) in _JUMPABLE
                else 1)
    bounds = [m * i // n_chunks for i in range(n_chunks + 1)]
    gens = [rng]
    start = bg.state if n_chunks > 1 else None
    for lo in bounds[1:-1]:
        copy = type(bg)()
        copy.state = start
        copy.advance(lo)
        gens.append(np.random.Generator(copy))
    errors = []

    def fill(i: int) -> None:
        try:
            lo, hi = bounds[i], bounds[i + 1]
            vals = gens[i].random(hi - lo)
            vals *= 2.0
            vals -= 1.0
            vals *= limit if np.ndim(limit) == 0 else limit[lo:hi]
            out[lo:hi] = vals
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    helpers = [threading.Thread(target=fill, args=(i,), daemon=True)
               for i in range(1, n_chunks)]
    for t in helpers:
        t.start()
    fill(0)
    for t in helpers:
        t.join()
    if errors:
        raise errors[0]
    if n_chunks > 1:
        end = gens[-1].bit_generator.state
        end["has_uint32"], end["uinteger"] = start["has_uint32"], start["uinteger"]
        bg.state = end
    return out


def erdos_renyi(n_out: int, n_in: int, epsilon: float = 20.0, *, rng=None, backend=None,
                dtype=np.float32, init: str = "he_uniform", fan_in: str = "dense") -> CSR:
    """A random sparse layer of shape ``(n_out, n_in)`` with :func:`er_connections` entries.

    Positions are a uniform sample without replacement (:func:`uniform_pattern`), built straight
    into the CSR arrays on the host in O(nnz) memory (about 8 bytes per connection plus
    row-block scratch); with the default ε = 20 a 784 x 1000 layer gets 35 680 connections
    (4.6 %) and a 1000 x 10 output layer is fully connected.
    """
    be: Backend = get_backend(backend)
    rng = np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    m = er_connections(n_out, n_in, epsilon)
    indptr, indices = uniform_pattern(n_out, n_in, m, rng)
    counts = np.diff(indptr) if fan_in == "actual" else None
    data = np.empty(m, dtype=dtype)
    for r0, r1 in _row_blocks(indptr):
        lo, hi = int(indptr[r0]), int(indptr[r1])
        rows = np.repeat(np.arange(r0, r1), np.diff(indptr[r0:r1 + 1]))
        data[lo:hi] = init_values(rows, (n_out, n_in), rng, dtype, init, fan_in, counts,
                                  be.host_threads(hi - lo))
    return CSR(be.asarray(indptr), be.asarray(indices), be.asarray(data), (n_out, n_in),
               check=False)


#: Entries drawn per block of rows by :func:`uniform_pattern` (bounds its scratch memory).
BLOCK = 1 << 20


def uniform_pattern(n_rows: int, n_cols: int, m: int, rng: np.random.Generator,
                    block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of a uniformly random m-subset of the ``n_rows x n_cols`` grid.

    Exact and without any global sort.  Row counts: every cell is first kept independently with
    a probability p chosen so that the kept set has at least m cells with overwhelming
    probability (a binomial count per row; redrawn in the rare case it falls short); given its
    size S that set is uniform, and removing a uniform random (S - m)-subset of its cells leaves
    a uniform m-subset.  The removed cells are S - m distinct ranks in ``[0, S)``, O(sqrt(m))
    of them, mapped to rows through the cumulative counts.  (NumPy's multivariate
    hypergeometric would give the counts directly but refuses grids of 10**9 cells or more.)
    Given its count, each row holds a uniform subset of the columns, drawn independently.  Rows are
    filled in blocks of about ``block`` entries: columns are drawn with replacement, sorted
    within their row and repeats redrawn until distinct (the result's law is invariant under
    any relabelling of the columns, hence uniform); rows holding more than a quarter of the
    columns are drawn without replacement directly.  Memory: ``indptr`` and ``indices`` (int32
    where they fit) plus O(n_rows + block) scratch, so about 4 bytes per entry.
    """
    n_rows, n_cols, m = int(n_rows), int(n_cols), int(m)
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"grid shape must be positive, got ({n_rows}, {n_cols})")
    if not 0 <= m <= n_rows * n_cols:
        raise ValueError(f"m must lie in [0, {n_rows * n_cols}], got {m}")
    idt = index_dtype_for(m, (n_rows, n_cols))
    counts = _row_counts(n_rows, n_cols, m, rng)
    indptr = np.zeros(n_rows + 1, dtype=idt)
    np.cumsum(counts, out=indptr[1:])
    del counts
    indices = np.empty(m, dtype=idt)
    for r0, r1 in _row_blocks(indptr, block):
        lo, hi = int(indptr[r0]), int(indptr[r1])
        k = np.diff(indptr[r0:r1 + 1]).astype(np.int64)
        dense = 4 * k > n_cols
        out = indices[lo:hi]
        if dense.any():  # rejection would stall on these rows
            starts = np.asarray(indptr[r0:r1], dtype=np.int64) - lo
            for j in np.flatnonzero(dense):
                out[starts[j]:starts[j] + k[j]] = np.sort(
                    rng.choice(n_cols, size=int(k[j]), replace=False))
            k = np.where(dense, 0, k)
        total = int(k.sum())
        if total:
            keys = np.repeat(np.arange(r1 - r0, dtype=np.int64) * n_cols, k)
            keys += rng.integers(0, n_cols, size=total)
            while True:
                keys.sort()
                again = np.flatnonzero(keys[1:] == keys[:-1]) + 1
                if again.shape[0] == 0:
                    break
                keys[again] -= keys[again] % n_cols  # same row, a fresh column
                keys[again] += rng.integers(0, n_cols, size=again.shape[0])
            sparse_pos = np.repeat(~dense, np.diff(indptr[r0:r1 + 1]))
            out[sparse_pos] = keys % n_cols
    return indptr, indices


def _row_counts(n_rows: int, n_cols: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Per-row counts of a uniform m-subset of the grid (see :func:`uniform_pattern`)."""
    total = n_rows * n_cols
    p = min(1.0, (m + 6.0 * np.sqrt(m) + 16.0) / total)
    while True:
        counts = rng.binomial(n_cols, p, size=n_rows).astype(np.int64)
        surplus = int(counts.sum()) - m
        if surplus >= 0:
            break
    if surplus:
        ends = np.cumsum(counts)
        drop = rng.choice(int(ends[-1]), size=surplus, replace=False)
        counts -= np.bincount(np.searchsorted(ends, drop, side="right"), minlength=n_rows)
    return counts


def _row_blocks(indptr: np.ndarray, block: int = BLOCK):
    """``(r0, r1)`` row ranges of about ``block`` entries each (at least one row)."""
    n_rows = indptr.shape[0] - 1
    r0 = 0
    while r0 < n_rows:
        r1 = int(np.searchsorted(indptr, int(indptr[r0]) + block, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n_rows)
        yield r0, r1
        r0 = r1
