"""Host (NumPy) helpers shared by the backends: absent-position sampling and the per-row
uniform sampler that is the NumPy twin of the CPU kernel ``sample_absent_uniform``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._streams import below, below_seq, row_blocks, stream_starts
from ..nn.csr import CSR


def select_args(xp, values, k):
    """``(keys, k)`` of a selection of ``k`` of ``values``, checked: the keys are ``values`` as
    1-D, finite floats (integers are exact in float64 up to 2**53, so larger ones, whose order
    float64 would lose, are refused, and so are complex and non-numeric values); ``k`` is a
    count in ``[0, len(values)]``."""
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    kind = values.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"values must be real numbers, got dtype {values.dtype}")
    if kind in "iu":
        if values.shape[0] and int(xp.abs(values).max()) > 2**53:
            raise ValueError("values holds integers beyond 2**53, which float64 cannot order")
        values = values.astype(xp.float64)
    elif kind == "b" or values.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        values = values.astype(xp.float64)
    if values.shape[0] and not bool(xp.all(xp.isfinite(values))):
        raise ValueError("values contains NaN or infinite entries")
    k = as_count("k", k)
    if not 0 <= k <= values.shape[0]:
        raise ValueError(f"k must lie in [0, {values.shape[0]}], got {k}")
    return values, k


def as_count(name: str, value) -> int:
    """``value`` as an int; refuses non-numbers and fractions rather than truncating them."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if count != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return count


def sample_absent_host(w: CSR, m: int, rng: np.random.Generator, row_weights, col_weights,
                       contains: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Host-side sampler shared by the backends; ``contains(rows, cols)`` tests membership."""
    n_rows, n_cols = w.shape
    m = as_count("m", m)
    total = n_rows * n_cols
    absent = total - w.nnz
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    if m > absent:
        raise ValueError(f"cannot sample m={m} absent positions: only {absent} are free")
    if m == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    p_row = _marginal("row_weights", row_weights, n_rows)
    p_col = _marginal("col_weights", col_weights, n_cols)
    weighted = p_row is not None or p_col is not None
    if weighted:
        _check_weighted_room(w, m, p_row, p_col)
    if not weighted and total > 4 * (w.nnz + m):
        host = w.to_scipy()
        return sample_uniform_rows(np.asarray(host.indptr, np.int64),
                                   np.asarray(host.indices, np.int64), n_cols, m, rng)
    if total <= 4 * (w.nnz + m):
        # Nearly full layer: rejection would stall, and the grid is at most 4 x (nnz + m)
        # positions, so listing the free ones keeps the O(nnz + m) bound.
        host = w.to_scipy()
        grid = np.ones(total, dtype=bool)
        rows_h = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(host.indptr))
        grid[rows_h * n_cols + host.indices] = False
        free = np.flatnonzero(grid)
        if weighted:
            # Successive draws proportional to the product weight: the distribution the
            # rejection loop below samples, without its stall when little mass is free.
            p = np.ones(free.shape[0])
            if p_row is not None:
                p *= p_row[free // n_cols]
            if p_col is not None:
                p *= p_col[free % n_cols]
            pick = np.sort(rng.choice(free.shape[0], size=m, replace=False, p=p / p.sum()))
        else:
            pick = np.sort(rng.choice(free.shape[0], size=m, replace=False))
        keys = free[pick]
        return keys // n_cols, keys % n_cols
    accepted = np.empty(0, np.int64)
    for _ in range(200):
        need = m - accepted.shape[0]
        draw = int(need * 1.25 * total / max(absent, 1)) + 64
        r = (rng.integers(0, n_rows, draw) if p_row is None
             else rng.choice(n_rows, size=draw, p=p_row))
        c = (rng.integers(0, n_cols, draw) if p_col is None
             else rng.choice(n_cols, size=draw, p=p_col))
        fresh = ~np.asarray(contains(r, c), dtype=bool)
        keys = np.concatenate([accepted, r[fresh] * n_cols + c[fresh]])
        # Keep first occurrences in draw order: the first m distinct draws are a uniform
        # sample without replacement.
        accepted = keys[_first_occurrences(keys)][:m]
        if accepted.shape[0] == m:
            keys = np.sort(accepted)
            return keys // n_cols, keys % n_cols
    raise ValueError(
        f"could not find {m} absent positions after 200 rounds: the sampling weights put "
        "almost all their mass on existing connections"
    )


# --- uniform sampling per row: the NumPy twin of sampling.sample_absent_uniform (Cython) ---------
# Both draw from the same counter-based streams (sparsekit._streams), so a seed gives the same
# positions on every backend; see the Cython kernel for the method.


def sample_uniform_rows(indptr: np.ndarray, indices: np.ndarray, n_cols: int, m: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``m`` distinct absent positions, uniform, sorted by (row, col) (int64, host arrays).

    Rounds of i.i.d. draws among the positions still free, deduplicated; the duplicates are
    drawn again.  O(n_rows + nnz + m) memory.
    """
    n_rows = indptr.shape[0] - 1
    free = n_cols - np.diff(indptr)
    pat_keys = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr)) * n_cols + indices
    chosen = np.empty(0, np.int64)  # sorted keys row * n_cols + col
    lens = np.zeros(n_rows, np.int64)
    need = m
    with np.errstate(over="ignore"):
        while need > 0:
            counts = _row_counts_host(free - lens, need, rng)
            key = np.uint64(rng.integers(0, 1 << 63, dtype=np.uint64))
            chosen = _grow_rows_host(pat_keys, chosen, free - lens, counts, key, n_cols, n_rows)
            lens = np.bincount(chosen // n_cols, minlength=n_rows)
            need = m - chosen.shape[0]
    return chosen // n_cols, chosen % n_cols


def _row_counts_host(avail: np.ndarray, need: int, rng: np.random.Generator) -> np.ndarray:
    """Twin of ``sampling._row_counts``: rows of ``need`` i.i.d. draws, by blocks of rows."""
    n_rows = avail.shape[0]
    counts = np.zeros(n_rows, np.int64)
    bounds, per_block, top = row_blocks(avail, need, rng)
    n_blocks = per_block.shape[0]
    key = np.uint64(rng.integers(0, 1 << 63, dtype=np.uint64))
    starts = stream_starts(key, np.arange(n_blocks))
    for b in np.flatnonzero(per_block):
        r0, n_b, top_b, left = int(bounds[b]), int(bounds[b + 1] - bounds[b]), int(top[b]), \
            int(per_block[b])
        mean = max(float(avail[r0:r0 + n_b].mean()), 1e-9)
        j0, got = 0, []
        bnd = np.array([n_b, top_b], np.uint64)
        while left > 0:
            pairs = int(left * top_b / mean * 1.1) + 16
            j = np.arange(j0 + 1, j0 + 2 * pairs + 1)
            vals, rejected = below(starts[b], j, np.tile(bnd, pairs))
            if rejected.any():  # pragma: no cover - probability below 2**-40 per draw
                return _row_counts_seq(avail, bounds, per_block, top, starts)
            rows = r0 + vals[0::2].astype(np.int64)
            ok = np.flatnonzero(vals[1::2].astype(np.int64) < avail[rows])[:left]
            got.append(rows[ok])
            left -= ok.shape[0]
            j0 += 2 * pairs
        counts += np.bincount(np.concatenate(got), minlength=n_rows)
    return counts


def _row_counts_seq(avail, bounds, per_block, top, starts):  # pragma: no cover - see caller
    counts = np.zeros(avail.shape[0], np.int64)
    for b in range(per_block.shape[0]):
        state, left = int(starts[b]), int(per_block[b])
        r0, n_b = int(bounds[b]), int(bounds[b + 1] - bounds[b])
        while left > 0:
            r, state = below_seq(state, n_b)
            a, state = below_seq(state, int(top[b]))
            if a < avail[r0 + r]:
                counts[r0 + r] += 1
                left -= 1
    return counts


def _grow_rows_host(pat_keys, chosen, avail, counts, key, n_cols: int, n_rows: int):
    """Twin of ``sampling._grow_rows``: per row, ``counts[r]`` draws among its free columns
    (ranks, deduplicated, mapped past the pattern and the chosen columns); new sorted keys."""
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(rows.shape[0], dtype=np.int64) - first[rows] + 1
    starts = stream_starts(key, np.arange(n_rows))
    ranks, rejected = below(starts[rows], j, avail[rows].astype(np.uint64))
    ranks = ranks.astype(np.int64)
    for r in np.unique(rows[rejected]):  # pragma: no cover - probability below 2**-40
        state, out = int(starts[r]), []
        for _ in range(int(counts[r])):
            v, state = below_seq(state, int(avail[r]))
            out.append(v)
        ranks[first[r]:first[r] + counts[r]] = out
    keys = rows * n_cols + ranks  # (row, rank) order = sorted ranks per row
    keys = np.unique(keys)
    rows, ranks = keys // n_cols, keys % n_cols
    # Rank q -> column q + #{excluded c_j with c_j - j <= q}, j the rank of c_j in its row.
    excl = np.sort(np.concatenate([pat_keys, chosen]))
    ex_rows = excl // n_cols
    ex_start = np.cumsum(np.bincount(ex_rows, minlength=n_rows)) - np.bincount(ex_rows,
                                                                               minlength=n_rows)
    adj = excl % n_cols - (np.arange(excl.shape[0]) - ex_start[ex_rows])
    stride = n_cols + 1
    pos = np.searchsorted(ex_rows * stride + adj, rows * stride + ranks, side="right")
    cols = ranks + pos - ex_start[rows]
    return np.sort(np.concatenate([chosen, rows * n_cols + cols]))


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Increasing indices of the first occurrence of each distinct key.

    The same answer as ``np.sort(np.unique(keys, return_index=True)[1])``, about 4x faster: an
    unstable sort, then the smallest index within each run of equal keys.
    """
    if keys.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    return np.sort(np.minimum.reduceat(order, starts))


def _marginal(name, weights, n):
    if weights is None:
        return None
    p = np.asarray(weights, dtype=np.float64).ravel()
    if p.shape != (n,):
        raise ValueError(f"{name} must have length {n}, got {p.shape[0]}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero")
    return p / p.sum()


def _check_weighted_room(w, m, p_row, p_col):
    """Refuse when fewer than m free positions have non-zero probability."""
    n_rows, n_cols = w.shape
    r_ok = np.ones(n_rows, bool) if p_row is None else p_row > 0
    c_ok = np.ones(n_cols, bool) if p_col is None else p_col > 0
    host = w.to_scipy()
    rows = np.repeat(np.arange(n_rows), np.diff(host.indptr))
    taken = int(np.count_nonzero(r_ok[rows] & c_ok[host.indices]))
    room = int(r_ok.sum()) * int(c_ok.sum()) - taken
    if room < m:
        raise ValueError(
            f"only {room} free positions have non-zero sampling weight, {m} requested"
        )
