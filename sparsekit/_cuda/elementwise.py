"""Fused elementwise kernels for hidden layers, on the GPU.

The twin of :mod:`sparsekit._cython.elementwise`: ``bias_act_dropout`` adds the bias, applies a
piecewise-linear activation and inverted dropout in one pass.  The dropout draw of element
(o, j) is the same counter-based splitmix64 hash of (seed, o * n_batch + j) as on the CPU, and
the arithmetic is the same in the same order, so masks and values are bit-identical across
backends.
"""

from __future__ import annotations

import numpy as np

from ..nn.csr import array_module
from . import _module as km
from ._checks import check_batch_operand, check_vector


def bias_act_dropout(z_ob, bias, slope: float, rate: float, seed: int):
    """Return ``(a_ob, d_ob)``: activations and d(a)/d(z), for z = z_ob + bias[:, None].

    Parameters
    ----------
    z_ob : cupy.ndarray of shape (n_out, n_batch)
        Pre-activations without bias, feature-major, C-contiguous.  Not modified.
    bias : cupy.ndarray of shape (n_out,), same dtype as ``z_ob``
    slope : float
        Slope for non-positive inputs (0 for ReLU, +/-alpha for All-ReLU).
    rate : float
        Dropout probability in [0, 1); 0 disables dropout.
    seed : int
        Key of this draw (one per layer and step), taken modulo 2**64.
    """
    n_batch = z_ob.shape[1] if getattr(z_ob, "ndim", 0) == 2 else -1
    check_batch_operand("z_ob", z_ob, None, n_batch)
    value_t = km.c_type(km.VALUE_TYPES, z_ob.dtype, "z_ob")
    n_out = z_ob.shape[0]
    check_vector("bias", bias, (z_ob.dtype,), n_out)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    xp = array_module(z_ob)
    a = xp.empty((n_out, n_batch), dtype=z_ob.dtype)
    d = xp.empty((n_out, n_batch), dtype=z_ob.dtype)
    if n_out == 0 or n_batch == 0:
        return a, d
    scalar = z_ob.dtype.type
    # The CPU kernel rounds the slope and 1 / (1 - rate) (computed in double) to the value type,
    # and keeps an element when its 24-bit draw is >= floor(rate * 2**24).
    fn = km.get_kernel("elementwise.cu", "sk_bias_act_dropout", value_t)
    km.launch(fn, n_out * n_batch, km.BLOCK,
              (z_ob, bias, a, d, scalar(slope), scalar(1.0 / (1.0 - rate)),
               np.uint64(int(rate * 16777216.0)), np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF),
               np.int64(n_out), np.int64(n_batch)))
    return a, d
