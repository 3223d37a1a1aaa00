"""Backend protocol, registry and selection.

Shared code (layers, growth methods, training) talks only to a :class:`Backend`: its ``xp`` array
module and the methods below.  Activations are **feature-major**: an activation matrix has one
row per neuron and one column per sample (``x_ib``: inputs x batch, ``y_ob``: outputs x batch),
so with W of shape ``(n_out, n_in)``:

=====================================  ===================================================
``matmul(x_ib, w)``                    ``y_ob = W @ x_ib``   (forward)
``matmul_t(dy_ob, w)``                 ``dx_ib = W.T @ dy_ob``   (backward to inputs)
``weight_grad(x_ib, dy_ob, w)``        ``g[k] = sum_b dy_ob[row_k, b] x_ib[col_k, b]`` (SDDMM)
``backward(x_ib, dy_ob, w, need_dx)``  both of the above, fused where the backend can
``sampled_grad(x_ib, dy_ob, r, c)``    the SDDMM on an arbitrary candidate list
``select(values, k, largest)``         indices of the top/bottom k, O(n)
``sample_absent(w, m, rng, ...)``      m distinct positions not in W
``rebuild(w, keep, r, c, v, *states)`` W after drop + insert, states permuted alike
=====================================  ===================================================

The base class implements the topology methods generically with ``xp`` (so a new backend works
before it is fast); backends override the hot paths.  Arrays never cross devices silently:
:meth:`Backend.asarray` and :meth:`Backend.to_numpy` are the only ways across.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .csr import CSR, VALUE_DTYPES, array_module, index_dtype_for

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class Backend:
    """Base class of the kernel backends. See the module docstring for the contract."""

    name: str = "base"
    xp: Any = np

    # --- moving data ----------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """``x`` as a C-contiguous array on this backend's device (copies only if needed)."""
        if array_module(x) is not self.xp and array_module(x) is not np:
            raise TypeError(
                f"{self.name} backend got an array from another device "
                f"({type(x).__module__}); move it with to_numpy() first"
            )
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x) -> np.ndarray:
        """Copy (or view) ``x`` on the host as a NumPy array."""
        return np.asarray(x)

    def check_array(self, name: str, x) -> None:
        """Raise ``TypeError`` naming ``name`` unless ``x`` lives on this backend's device."""
        if array_module(x) is not self.xp:
            raise TypeError(
                f"{name} is a {type(x).__module__} array but the {self.name} backend needs "
                f"{self.xp.__name__} arrays; call backend.asarray({name}) first"
            )

    def _operand(self, name, x, dtype, n_rows=None):
        """A 2-D activation on this device with W's dtype (and ``n_rows`` rows), C-contiguous."""
        self.check_array(name, x)
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (features x batch), got shape {x.shape}")
        if x.dtype != dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the weights are {dtype}")
        if n_rows is not None and x.shape[0] != n_rows:
            raise ValueError(f"{name} has {x.shape[0]} rows, expected {n_rows}")
        return self.xp.ascontiguousarray(x)

    def _pair(self, x_ib, dy_ob, w: CSR):
        """Checked ``(x_ib, dy_ob)`` for a product with W: matching rows and batch."""
        x = self._operand("x_ib", x_ib, w.dtype, w.shape[1])
        dy = self._operand("dy_ob", dy_ob, w.dtype, w.shape[0])
        if x.shape[1] != dy.shape[1]:
            raise ValueError(f"x_ib has batch {x.shape[1]} but dy_ob has {dy.shape[1]}")
        return x, dy

    def _sampled_operands(self, x_ib, dy_ob, rows, cols):
        """Checked operands of :meth:`sampled_grad` and the index dtype to use."""
        self.check_array("rows", rows)
        self.check_array("cols", cols)
        for name, arr in (("rows", rows), ("cols", cols)):
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
        self.check_array("x_ib", x_ib)
        if x_ib.dtype not in (np.float32, np.float64):
            raise ValueError(f"x_ib must be float32 or float64, got {x_ib.dtype}")
        x = self._operand("x_ib", x_ib, x_ib.dtype)
        dy = self._operand("dy_ob", dy_ob, x.dtype)
        # Any other integer type goes to int64, where an out-of-range value stays out of range.
        idt = np.int32 if (rows.dtype == np.int32 and cols.dtype == np.int32) else np.int64
        return x, dy, idt

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    # --- products -------------------------------------------------------------------------
    def transpose_index(self, w: CSR):
        """W's column index ``(t_indptr, t_rows, t_perm)``, cached on the CSR.

        For input neuron i, ``t_rows[t_indptr[i]:t_indptr[i + 1]]`` are the output rows that
        read it, increasing, and ``t_perm`` their slots in ``w.data``.  The cache lives until the
        pattern changes (``rebuild`` returns a new CSR; ``with_data`` keeps it).
        """
        if w._transpose is None:
            xp = self.xp
            n_rows, n_cols = w.shape
            idt = w.indices.dtype
            # Column-major keys are unique, so the order does not depend on sort stability.
            keys = w.indices.astype(xp.int64) * max(n_rows, 1) + w.row_ids()
            perm = xp.argsort(keys)
            t_indptr = xp.zeros(n_cols + 1, dtype=idt)
            t_indptr[1:] = xp.cumsum(xp.bincount(w.indices, minlength=n_cols)).astype(idt)
            w._transpose = (t_indptr, w.row_ids()[perm].astype(idt), perm.astype(idt))
        return w._transpose

    def matmul(self, x_ib, w: CSR):
        """Forward product ``y_ob = W @ x_ib`` (x_ib: n_in x batch)."""
        raise NotImplementedError

    def matmul_t(self, dy_ob, w: CSR):
        """Backward product ``dx_ib = W.T @ dy_ob`` (dy_ob: n_out x batch)."""
        raise NotImplementedError

    def weight_grad(self, x_ib, dy_ob, w: CSR):
        """Gradient on W's pattern, in CSR order: ``g[k] = sum_b dy_ob[row_k, b] * x_ib[col_k, b]``."""
        raise NotImplementedError

    def sampled_grad(self, x_ib, dy_ob, rows, cols):
        """The same dot products at arbitrary positions ``(rows[j], cols[j])``."""
        raise NotImplementedError

    def backward(self, x_ib, dy_ob, w: CSR, need_dx: bool = True):
        """``(dx_ib or None, grad)``; backends may fuse the two passes."""
        dx = self.matmul_t(dy_ob, w) if need_dx else None
        return dx, self.weight_grad(x_ib, dy_ob, w)

    # --- elementwise ------------------------------------------------------------------------
    def bias_act_dropout(self, z_ob, bias, slope: float, rate: float, seed: int):
        """Add bias, apply ``x if x > 0 else slope * x`` and inverted dropout.

        Returns ``(a_ob, d_ob)``: activations and their derivative with respect to z.  The
        dropout mask is a counter-based hash of ``seed`` and the element index, identical on
        every backend and thread count.
        """
        xp = self.xp
        self.check_array("z_ob", z_ob)
        self.check_array("bias", bias)
        if z_ob.ndim != 2 or z_ob.dtype not in VALUE_DTYPES:
            raise ValueError(f"z_ob must be a 2-D float32 or float64 array, got {z_ob.dtype} "
                             f"of shape {z_ob.shape}")
        if bias.shape != (z_ob.shape[0],):
            raise ValueError(f"bias has shape {bias.shape}, expected ({z_ob.shape[0]},)")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # the same key the CPU kernel takes
        z = z_ob + bias.astype(z_ob.dtype, copy=False)[:, None]
        d = xp.where(z > 0, z.dtype.type(1), z.dtype.type(slope)).astype(z.dtype)
        a = d * z
        if rate > 0:
            n_out, n_batch = z.shape
            o = xp.arange(n_out, dtype=xp.uint64)[:, None]
            j = xp.arange(n_batch, dtype=xp.uint64)[None, :]
            key = xp.uint64(seed) + o * xp.uint64(n_batch) * _GOLDEN
            draw = _splitmix(xp, key + j * _GOLDEN) >> xp.uint64(40)
            keep = draw >= xp.uint64(int(rate * 16777216.0))
            scale = z.dtype.type(1.0 / (1.0 - rate))
            d = xp.where(keep, d * scale, 0).astype(z.dtype)
            a = xp.where(keep, a * scale, 0).astype(z.dtype)
        return a, d

    # --- topology -------------------------------------------------------------------------
    def select(self, values, k: int, largest: bool = True):
        """Indices (int64, increasing) of the ``k`` largest or smallest values.

        Ties at the threshold go to the lowest indices, so the result is deterministic.
        """
        xp = self.xp
        self.check_array("values", values)
        if values.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {values.shape}")
        n = values.shape[0]
        k = as_count("k", k)
        if not 0 <= k <= n:
            raise ValueError(f"k must lie in [0, {n}], got {k}")
        if values.dtype not in VALUE_DTYPES:
            values = values.astype(xp.float64)
        if n and not bool(xp.all(xp.isfinite(values))):
            raise ValueError("values contains NaN or infinite entries")
        if k == 0:
            return xp.empty(0, dtype=xp.int64)
        if k == n:
            return xp.arange(n, dtype=xp.int64)
        keys = -values if largest else values
        t = xp.partition(keys, k - 1)[k - 1]
        mask = keys < t
        n_tie = k - int(xp.count_nonzero(mask))
        mask[xp.flatnonzero(keys == t)[:n_tie]] = True
        return xp.flatnonzero(mask).astype(xp.int64)

    def sign_prune_keep(self, values, zeta: float):
        """SET's keep mask: drop the fraction ``zeta`` of the negative and of the positive
        ``values`` closest to zero (exact zeros too), by one selection per sign.

        Ties go to the lowest indices (:meth:`select`), so every backend gives the same mask.
        """
        xp = self.xp
        self.check_array("values", values)
        if not 0 <= zeta <= 1:
            raise ValueError(f"zeta must lie in [0, 1], got {zeta}")
        keep = values != 0
        for sign_mask, largest in ((values < 0, True), (values > 0, False)):
            idx = xp.flatnonzero(sign_mask)
            k = int(zeta * idx.shape[0])
            if k:
                # Negatives closest to zero are the largest ones, positives the smallest.
                keep[idx[self.select(values[idx], k, largest=largest)]] = False
        return keep

    def contains(self, w: CSR, rows, cols):
        """Boolean mask: is ``(rows[j], cols[j])`` a stored position of W?"""
        xp = self.xp
        keys = w.row_ids().astype(xp.int64) * w.shape[1] + w.indices
        q = xp.asarray(rows, dtype=xp.int64) * w.shape[1] + xp.asarray(cols, dtype=xp.int64)
        pos = xp.searchsorted(keys, q)
        pos = xp.minimum(pos, max(keys.shape[0] - 1, 0))
        return (keys[pos] == q) if keys.shape[0] else xp.zeros(q.shape[0], dtype=bool)

    def sample_absent(self, w: CSR, m: int, rng: np.random.Generator, row_weights=None,
                      col_weights=None):
        """``m`` distinct positions not stored in W, sorted by (row, col).

        Uniform over all absent positions, or, with ``row_weights``/``col_weights``, drawn from
        the product of those (non-negative) marginals.  Costs O(nnz + m) memory: candidates are
        drawn in rounds and filtered, never by materialising the n_out x n_in grid.  Draws come
        from ``rng`` on the host, so a seed gives the same positions on every backend.
        """
        rows, cols = sample_absent_host(w, m, rng, row_weights, col_weights,
                                        lambda r, c: self.to_numpy(self.contains(
                                            w, self.asarray(r), self.asarray(c))))
        idt = w.indices.dtype
        return self.asarray(rows.astype(idt)), self.asarray(cols.astype(idt))

    def rebuild(self, w: CSR, keep_mask, new_rows, new_cols, new_vals, *states):
        """W with the entries where ``keep_mask`` is false dropped and new ones inserted.

        Returns ``(w_new, [state_new, ...])``: every state array (aligned with ``w.data``) is
        permuted like the values, with 0 at inserted positions.  Raises ``ValueError`` when an
        inserted position is already kept or repeats.
        """
        xp = self.xp
        n_rows, n_cols = w.shape
        keep_mask, new_rows, new_cols, new_vals = _check_rebuild_args(
            self, w, keep_mask, new_rows, new_cols, new_vals, states)
        old_keys = (w.row_ids().astype(xp.int64) * n_cols + w.indices)[keep_mask]
        new_keys = new_rows.astype(xp.int64) * n_cols + new_cols.astype(xp.int64)
        keys = xp.concatenate([old_keys, new_keys])
        src = xp.concatenate([xp.flatnonzero(keep_mask).astype(xp.int64),
                              -1 - xp.arange(new_keys.shape[0], dtype=xp.int64)])
        order = xp.argsort(keys, kind="stable")
        keys, src = keys[order], src[order]
        if keys.shape[0] > 1 and bool(xp.any(keys[1:] == keys[:-1])):
            raise ValueError("rebuild: a new position is already present or repeats")
        nnz = keys.shape[0]
        idt = index_dtype_for(nnz, w.shape)
        rows = keys // n_cols
        indptr = xp.zeros(n_rows + 1, dtype=idt)
        indptr[1:] = xp.cumsum(xp.bincount(rows, minlength=n_rows)).astype(idt)
        indices = (keys % n_cols).astype(idt)
        new_w = CSR(indptr, indices, _take(xp, src, w.data, new_vals), w.shape, check=False)
        return new_w, [_take(xp, src, s, None) for s in states]


def as_count(name: str, value) -> int:
    """``value`` as an int; refuses non-numbers and fractions rather than truncating them."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if count != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return count


def _take(xp, src, old, new_vals):
    out = xp.zeros(src.shape[0], dtype=old.dtype)
    kept = src >= 0
    out[kept] = old[src[kept]]
    if new_vals is not None:
        out[~kept] = new_vals[-1 - src[~kept]]
    return out


def _splitmix(xp, z):
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return z ^ (z >> xp.uint64(31))


def _check_rebuild_args(backend, w, keep_mask, new_rows, new_cols, new_vals, states):
    xp = backend.xp
    for name, arr in (("keep_mask", keep_mask), ("new_rows", new_rows),
                      ("new_cols", new_cols), ("new_vals", new_vals)):
        backend.check_array(name, arr)
    if keep_mask.dtype != bool or keep_mask.shape != (w.nnz,):
        raise ValueError(f"keep_mask must be a bool array of length nnz={w.nnz}")
    for name, arr in (("new_rows", new_rows), ("new_cols", new_cols)):
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be an integer array, got {arr.dtype}")
    m = new_rows.shape[0]
    if new_cols.shape != (m,) or new_vals.shape != (m,):
        raise ValueError("new_rows, new_cols and new_vals must have the same length")
    for i, s in enumerate(states):
        backend.check_array(f"states[{i}]", s)
        if s.shape != (w.nnz,):
            raise ValueError(f"states[{i}] has shape {s.shape}, expected ({w.nnz},)")
    if m:
        if int(new_rows.min()) < 0 or int(new_rows.max()) >= w.shape[0]:
            raise ValueError(f"new_rows must lie in [0, {w.shape[0]})")
        if int(new_cols.min()) < 0 or int(new_cols.max()) >= w.shape[1]:
            raise ValueError(f"new_cols must lie in [0, {w.shape[1]})")
        if not bool(xp.all(xp.isfinite(new_vals))):
            raise ValueError("new_vals contains NaN or infinite values")
    return keep_mask, new_rows, new_cols, new_vals.astype(w.data.dtype, copy=False)


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


# --- uniform sampling per row: the NumPy twin of topology.sample_absent_uniform (Cython) ---------
# Both draw from the same counter-based streams (splitmix64, Lemire's exact bounded integers),
# so a seed gives the same positions on every backend; see the Cython kernel for the method.
_M32 = np.uint64(0xFFFFFFFF)


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


def _mulhi_lo(x: np.ndarray, n) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64 bits of the 128-bit products ``x * n`` (uint64)."""
    n = np.asarray(n, dtype=np.uint64)
    xh, xl, nh, nl = x >> np.uint64(32), x & _M32, n >> np.uint64(32), n & _M32
    lh, hl = xl * nh, xh * nl
    mid = ((xl * nl) >> np.uint64(32)) + (lh & _M32) + (hl & _M32)
    return xh * nh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32)), x * n


def _below(state0: np.ndarray, j: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``j`` (1-based) of each stream, bounded: ``(value, rejected)``.  A rejected draw
    (Lemire's test, probability < bound / 2**64) shifts its stream: the caller redoes it."""
    hi, lo = _mulhi_lo(_splitmix(np, state0 + j.astype(np.uint64) * _GOLDEN), bound)
    return hi, lo < (np.uint64(0) - bound) % bound


def _below_seq(state: int, bound: int) -> tuple[int, int]:
    """One bounded draw of a stream, sequentially (the rare fallback): ``(value, new state)``."""
    while True:
        state = (state + int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF
        z = int(_splitmix(np, np.array([state], np.uint64))[0])
        p = z * bound
        if (p & 0xFFFFFFFFFFFFFFFF) >= (-bound) % bound:
            return p >> 64, state


def _stream_starts(key: np.uint64, ids: np.ndarray) -> np.ndarray:
    return _splitmix(np, key ^ _splitmix(np, ids.astype(np.uint64) + np.uint64(1)))


def row_blocks(avail: np.ndarray, need: int, rng: np.random.Generator):
    """The block split of ``need`` draws over rows with ``avail`` free positions each, shared by
    ``topology._row_counts`` and its host twin: ``(bounds, per_block, top)`` = at most 64 row
    blocks fixed by the sizes, the draws per block (one multinomial on the free mass) and each
    block's largest ``avail``."""
    n_rows = avail.shape[0]
    n_blocks = min(n_rows, 64, max(1, need // 1024))
    bounds = (np.arange(n_blocks + 1, dtype=np.int64) * n_rows) // n_blocks
    if n_blocks > 1:
        mass = np.add.reduceat(avail, bounds[:n_blocks])
        per_block = rng.multinomial(need, mass / mass.sum()).astype(np.int64)
        top = np.maximum.reduceat(avail, bounds[:n_blocks]).astype(np.int64)
    else:
        per_block = np.array([need], np.int64)
        top = np.array([avail.max()], np.int64)
    return bounds, per_block, top


def _row_counts_host(avail: np.ndarray, need: int, rng: np.random.Generator) -> np.ndarray:
    """Twin of ``topology._row_counts``: rows of ``need`` i.i.d. draws, by blocks of rows."""
    n_rows = avail.shape[0]
    counts = np.zeros(n_rows, np.int64)
    bounds, per_block, top = row_blocks(avail, need, rng)
    n_blocks = per_block.shape[0]
    key = np.uint64(rng.integers(0, 1 << 63, dtype=np.uint64))
    starts = _stream_starts(key, np.arange(n_blocks))
    for b in np.flatnonzero(per_block):
        r0, n_b, top_b, left = int(bounds[b]), int(bounds[b + 1] - bounds[b]), int(top[b]), \
            int(per_block[b])
        mean = max(float(avail[r0:r0 + n_b].mean()), 1e-9)
        j0, got = 0, []
        bnd = np.array([n_b, top_b], np.uint64)
        while left > 0:
            pairs = int(left * top_b / mean * 1.1) + 16
            j = np.arange(j0 + 1, j0 + 2 * pairs + 1)
            vals, rejected = _below(starts[b], j, np.tile(bnd, pairs))
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
            r, state = _below_seq(state, n_b)
            a, state = _below_seq(state, int(top[b]))
            if a < avail[r0 + r]:
                counts[r0 + r] += 1
                left -= 1
    return counts


def _grow_rows_host(pat_keys, chosen, avail, counts, key, n_cols: int, n_rows: int):
    """Twin of ``topology._grow_rows``: per row, ``counts[r]`` draws among its free columns
    (ranks, deduplicated, mapped past the pattern and the chosen columns); new sorted keys."""
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(rows.shape[0], dtype=np.int64) - first[rows] + 1
    starts = _stream_starts(key, np.arange(n_rows))
    ranks, rejected = _below(starts[rows], j, avail[rows].astype(np.uint64))
    ranks = ranks.astype(np.int64)
    for r in np.unique(rows[rejected]):  # pragma: no cover - probability below 2**-40
        state, out = int(starts[r]), []
        for _ in range(int(counts[r])):
            v, state = _below_seq(state, int(avail[r]))
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


# --- registry and selection -----------------------------------------------------------------
_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "sparsekit_backend", default=None)


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``get_backend(name)`` build a backend with ``factory()`` (once, lazily)."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def available_backends() -> list[str]:
    """Names of the registered backends that can run here."""
    from ._compat import has_cupy_gpu

    return [n for n in _FACTORIES if n != "gpu" or has_cupy_gpu]


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return a backend by name: ``"cpu"``, ``"gpu"`` or ``"auto"``.

    ``None`` means the backend selected by :func:`use_backend`, else the ``SPARSEKIT_BACKEND``
    environment variable, else ``"cpu"``.  ``"auto"`` picks the GPU when one is usable.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        current = _current.get()
        if current is not None:
            return current
        name = os.environ.get("SPARSEKIT_BACKEND", "cpu")
    name = str(name).lower()
    if name == "auto":
        from ._compat import has_cupy_gpu

        name = "gpu" if has_cupy_gpu and "gpu" in _FACTORIES else "cpu"
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {sorted(_FACTORIES) + ['auto']}"
        )
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Context manager: make ``name`` the default backend inside the block."""
    backend = get_backend(name)
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def _make_cpu() -> Backend:
    from ._cython.backend import CpuBackend

    return CpuBackend()


def _make_gpu() -> Backend:
    from ._compat import gpu_unavailable_reason, has_cupy_gpu

    if not has_cupy_gpu:
        raise RuntimeError(
            f"the gpu backend is unavailable: {gpu_unavailable_reason}. Install CuPy for your "
            "CUDA version (pip install 'sparsekit[gpu-cuda12]' or 'sparsekit[gpu-cuda13]') on a "
            "machine with an NVIDIA GPU, or use backend='cpu'"
        )
    from ._cuda.backend import GpuBackend  # pragma: no cover - needs a GPU

    return GpuBackend()  # pragma: no cover


register_backend("cpu", _make_cpu)
register_backend("gpu", _make_gpu)

__all__ = ["Backend", "available_backends", "get_backend", "register_backend", "use_backend"]
