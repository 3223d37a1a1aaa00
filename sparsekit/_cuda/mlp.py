"""Whole-pass helpers on the GPU: the twin of :mod:`sparsekit._cython.mlp`.

On the CPU the fused passes exist because every OpenMP region wakes sleeping threads; a GPU
stream has no such cost per kernel, so the GPU backend runs the generic passes of
:class:`sparsekit.backends.base.Backend` (one kernel per product, launched asynchronously) and
only the bias-gradient reduction is shared here by name.  A CUDA-graph capture of the step is
the GPU's counterpart of the fused pass; it is not written.
"""

from __future__ import annotations

from ..nn.csr import array_module
from ._checks import check_batch_operand


def row_sums(z_ob):
    """``z_ob.sum(axis=1)``: the bias gradient of a feature-major output gradient (CuPy's
    reduction order, which is not NumPy's: GPU and CPU agree to rounding, not bit for bit)."""
    n_batch = z_ob.shape[1] if getattr(z_ob, "ndim", 0) == 2 else -1
    check_batch_operand("z_ob", z_ob, None, n_batch)
    return array_module(z_ob).sum(z_ob, axis=1)
