"""Erdős–Rényi sparse initialisation, drawn without any dense mask."""

from __future__ import annotations

import numpy as np

from .backend import Backend, get_backend
from .csr import CSR, index_dtype_for

INITS = ("he_uniform", "xavier_uniform", "normal")
FAN_INS = ("dense", "actual")


def er_connections(n_out: int, n_in: int, epsilon: float) -> int:
    """Connections of an ER layer: ``min(n_in * n_out, round(epsilon * (n_in + n_out)))``."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f"layer shape must be positive, got ({n_out}, {n_in})")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    return int(min(n_in * n_out, round(epsilon * (n_in + n_out))))


def init_values(rows, w_shape: tuple[int, int], rng: np.random.Generator, dtype,
                init: str = "he_uniform", fan_in: str = "dense", row_counts=None) -> np.ndarray:
    """Initial values for connections in ``rows`` (output neurons) of a layer.

    Parameters
    ----------
    init : {"he_uniform", "xavier_uniform", "normal"}
        ``U(±sqrt(6 / fan_in))``, ``U(±sqrt(6 / (fan_in + fan_out)))`` or ``N(0, 1) / 10``.
    fan_in : {"dense", "actual"}
        ``"dense"`` uses n_in, as the paper does; ``"actual"`` uses each output neuron's number
        of incoming connections (``row_counts``), which keeps activations from shrinking ~5x per
        layer at ε = 20 and speeds up the start of training.
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
    if fan_in == "dense":
        fin = np.full(m, float(n_in))
    else:
        if row_counts is None:
            raise ValueError("fan_in='actual' needs row_counts")
        fin = np.maximum(np.asarray(row_counts, dtype=np.float64)[rows], 1.0)
    denom = fin if init == "he_uniform" else fin + (n_out if fan_in == "dense" else fin)
    limit = np.sqrt(6.0 / denom)
    return (rng.uniform(-1.0, 1.0, m) * limit).astype(dtype)


def erdos_renyi(n_out: int, n_in: int, epsilon: float = 20.0, *, rng=None, backend=None,
                dtype=np.float32, init: str = "he_uniform", fan_in: str = "dense") -> CSR:
    """A random sparse layer of shape ``(n_out, n_in)`` with :func:`er_connections` entries.

    Positions are a uniform sample without replacement, drawn in O(nnz) memory; with the
    default ε = 20 a 784 x 1000 layer gets 35 680 connections (4.6 %) and a 1000 x 10 output
    layer is fully connected.
    """
    be: Backend = get_backend(backend)
    rng = np.random.default_rng(rng)
    dtype = np.dtype(dtype)
    m = er_connections(n_out, n_in, epsilon)
    idt = index_dtype_for(0, (n_out, n_in))
    empty = CSR(be.asarray(np.zeros(n_out + 1, idt)), be.asarray(np.zeros(0, idt)),
                be.asarray(np.zeros(0, dtype)), (n_out, n_in), check=False)
    rows, cols = be.sample_absent(empty, m, rng)
    rows_h = be.to_numpy(rows)
    counts = np.bincount(rows_h, minlength=n_out)
    vals = init_values(rows_h, (n_out, n_in), rng, dtype, init, fan_in, counts)
    w, _ = be.rebuild(empty, be.asarray(np.zeros(0, bool)), rows, cols, be.asarray(vals))
    return w
