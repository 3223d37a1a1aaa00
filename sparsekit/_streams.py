"""Counter-based random streams, the NumPy side of ``_cython/streams.hh``.

A stream is a splitmix64 sequence: its state advances by the golden-ratio constant and each draw
is the finaliser of the new state.  The Cython sampler draws from these streams one value at a
time; the host twins here draw many at once (draw ``j`` of a stream started at ``s`` is
``splitmix(s + j * GOLDEN)``), so a seed gives the same positions on every backend and thread
count.  Bounded draws are Lemire's multiply-shift with rejection, so they are exactly uniform.

A leaf module: it imports nothing from sparsekit, so both the kernels and the dispatch layer
above them can use it.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M32 = np.uint64(0xFFFFFFFF)


def splitmix(xp, z):
    """The splitmix64 finaliser of the uint64 array ``z`` (``xp``: NumPy or CuPy)."""
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return z ^ (z >> xp.uint64(31))


def stream_starts(key: np.uint64, ids: np.ndarray) -> np.ndarray:
    """Start states of the streams ``ids`` (rows or row blocks) under ``key``."""
    return splitmix(np, key ^ splitmix(np, ids.astype(np.uint64) + np.uint64(1)))


def mulhi_lo(x: np.ndarray, n) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64 bits of the 128-bit products ``x * n`` (uint64)."""
    n = np.asarray(n, dtype=np.uint64)
    xh, xl, nh, nl = x >> np.uint64(32), x & _M32, n >> np.uint64(32), n & _M32
    lh, hl = xl * nh, xh * nl
    mid = ((xl * nl) >> np.uint64(32)) + (lh & _M32) + (hl & _M32)
    return xh * nh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32)), x * n


def below(state0: np.ndarray, j: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``j`` (1-based) of each stream, bounded: ``(value, rejected)``.  A rejected draw
    (Lemire's test, probability < bound / 2**64) shifts its stream: the caller redoes it."""
    hi, lo = mulhi_lo(splitmix(np, state0 + j.astype(np.uint64) * GOLDEN), bound)
    return hi, lo < (np.uint64(0) - bound) % bound


def below_seq(state: int, bound: int) -> tuple[int, int]:
    """One bounded draw of a stream, sequentially (the rare fallback): ``(value, new state)``."""
    while True:
        state = (state + int(GOLDEN)) & 0xFFFFFFFFFFFFFFFF
        z = int(splitmix(np, np.array([state], np.uint64))[0])
        p = z * bound
        if (p & 0xFFFFFFFFFFFFFFFF) >= (-bound) % bound:
            return p >> 64, state


def row_blocks(avail: np.ndarray, need: int, rng: np.random.Generator):
    """The block split of ``need`` draws over rows with ``avail`` free positions each, shared by
    the Cython ``sampling._row_counts`` and its host twin: ``(bounds, per_block, top)`` = at most
    64 row blocks fixed by the sizes, the draws per block (one multinomial on the free mass) and
    each block's largest ``avail``."""
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
