"""The GPU backend: the protocol of :mod:`sparsekit.backends` on CuPy and the kernels of kernels/.

Mirror of :mod:`sparsekit._cython.backend`: every method checks its arguments (device, shape,
dtype) the same way and calls the function of the same name in ``spmm``, ``sddmm``, ``select``,
``sampling``, ``rebuild`` or ``elementwise``; what a GPU has no kernel for, and the
``products="cupy"`` reference mode, take the generic ``xp`` code of the base class.  Arrays
never cross the host/device boundary implicitly: a NumPy array handed to a method is refused
with a TypeError that says to call ``backend.asarray``.
"""

from __future__ import annotations

import os

import numpy as np

from .. import _compat
from ..backends.base import Backend, _check_rebuild_args, select_args
from ..nn.csr import CSR, VALUE_DTYPES, index_dtype_for
from . import elementwise, fallback, rebuild, sampling, sddmm, select, spmm

PRODUCTS = ("kernels", "cusparse", "cupy")


class GpuBackend(Backend):
    """CUDA kernels (CuPy ``RawModule``) on CuPy arrays of the current device.

    Parameters
    ----------
    products : {"kernels", "cusparse", "cupy"}, optional
        Who computes the products.  ``"kernels"`` (default): sparsekit's CUDA kernels, including
        the fused backward pass.  ``"cusparse"``: cuSPARSE SpMM (through ``cupyx``) for the
        forward and input-gradient products, the custom SDDMM for weight gradients.
        ``"cupy"``: no custom kernel at all (cuSPARSE SpMM, a gathered dot product for the
        SDDMM, and the generic ``xp`` topology/elementwise code of :class:`~sparsekit.Backend`),
        the reference the kernels are A/B-tested against.  The default can be set with the
        ``SPARSEKIT_GPU_PRODUCTS`` environment variable.

    Notes
    -----
    Kernels compile with NVRTC the first time they run on a device (a few seconds, then cached
    by CuPy on disk).  Every product is computed by one warp per output row, so results do not
    depend on the launch configuration; they may differ from the CPU backend's in the last bits
    (another summation order), except ``bias_act_dropout``, ``select``, ``sample_absent`` and
    ``rebuild``, which agree bit for bit.
    """

    name = "gpu"
    xp = _compat.cupy

    def __init__(self, products: str | None = None) -> None:
        if not _compat.has_cupy_gpu:
            raise RuntimeError(f"the gpu backend is unavailable: {_compat.gpu_unavailable_reason}")
        products = products or os.environ.get("SPARSEKIT_GPU_PRODUCTS", "kernels")
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}")
        self.products = products
        self.device = int(self.xp.cuda.Device().id)

    def __repr__(self) -> str:
        return f"GpuBackend(device={getattr(self, 'device', '?')}, products={self.products!r})"

    # --- moving data ----------------------------------------------------------------------
    def to_numpy(self, x) -> np.ndarray:
        """An explicit device-to-host copy of ``x`` (NumPy input is returned as is)."""
        if isinstance(x, np.ndarray):
            return x
        if hasattr(x, "get"):
            return x.get()
        return np.asarray(x)

    def synchronize(self) -> None:
        """Wait for the work queued on the current stream."""
        self.xp.cuda.get_current_stream().synchronize()

    # --- products -------------------------------------------------------------------------
    def transpose_index(self, w: CSR):
        """W's column index (cached on the CSR until its pattern changes)."""
        if w._transpose is None:
            w._transpose = spmm.transpose_index(w.indptr, w.indices, w.shape[1])
        return w._transpose

    def matmul(self, x_ib, w: CSR):
        x = self._operand("x_ib", x_ib, w.dtype, w.shape[1])
        if self.products != "kernels":
            return fallback.matmul(w, x)
        return spmm.matmul(w.indptr, w.indices, w.data, x, w.shape[1])

    def matmul_t(self, dy_ob, w: CSR):
        dy = self._operand("dy_ob", dy_ob, w.dtype, w.shape[0])
        if self.products != "kernels":
            return fallback.matmul_t(w, dy)
        t_indptr, t_rows, t_perm = self.transpose_index(w)
        return spmm.matmul_t(t_indptr, t_rows, t_perm, w.data, dy, w.shape[0])

    def weight_grad(self, x_ib, dy_ob, w: CSR):
        if self.products == "cupy":
            return super().weight_grad(x_ib, dy_ob, w)
        x, dy = self._pair(x_ib, dy_ob, w)
        return sddmm.weight_grad(w.indptr, w.indices, x, dy, w.shape[1])

    def backward(self, x_ib, dy_ob, w: CSR, need_dx: bool = True):
        if self.products != "kernels" or not need_dx:
            # matmul_t then weight_grad; without dx (the first layer) the row-wise SDDMM needs
            # no transposed index.
            return super().backward(x_ib, dy_ob, w, need_dx)
        x, dy = self._pair(x_ib, dy_ob, w)
        t_indptr, t_rows, t_perm = self.transpose_index(w)
        return spmm.backward(t_indptr, t_rows, t_perm, w.data, x, dy, w.shape[0], True)

    def sampled_grad(self, x_ib, dy_ob, rows, cols):
        if self.products == "cupy":
            return super().sampled_grad(x_ib, dy_ob, rows, cols)
        x, dy, idt = self._sampled_operands(x_ib, dy_ob, rows, cols)
        r, c = self._candidates(x, dy, rows, cols, idt)
        return sddmm.sampled_grad(x, dy, r, c)

    # --- elementwise ------------------------------------------------------------------------
    def bias_act_dropout(self, z_ob, bias, slope: float, rate: float, seed: int):
        if self.products == "cupy":
            return super().bias_act_dropout(z_ob, bias, slope, rate, seed)
        self.check_array("z_ob", z_ob)
        self.check_array("bias", bias)
        if z_ob.dtype not in VALUE_DTYPES:
            raise ValueError(f"z_ob must be float32 or float64, got {z_ob.dtype}")
        z = self._operand("z_ob", z_ob, z_ob.dtype)
        if bias.shape != (z.shape[0],):
            raise ValueError(f"bias has shape {bias.shape}, expected ({z.shape[0]},)")
        b = self.xp.ascontiguousarray(bias.astype(z.dtype, copy=False))
        return elementwise.bias_act_dropout(z, b, float(slope), float(rate),
                                            int(seed) & 0xFFFFFFFFFFFFFFFF)

    # --- topology -------------------------------------------------------------------------
    def select(self, values, k: int, largest: bool = True):
        if self.products == "cupy":
            return super().select(values, k, largest)
        xp = self.xp
        self.check_array("values", values)
        v, k = select_args(xp, values, k)
        v = xp.ascontiguousarray(v)
        return select.select(v, k, bool(largest))

    def contains(self, w: CSR, rows, cols):
        if self.products == "cupy":
            return super().contains(w, rows, cols)
        xp = self.xp
        self.check_array("rows", rows)
        self.check_array("cols", cols)
        return sampling.contains(w.indptr, w.indices,
                                 xp.ascontiguousarray(rows.astype(xp.int64, copy=False)),
                                 xp.ascontiguousarray(cols.astype(xp.int64, copy=False)))

    def rebuild(self, w: CSR, keep_mask, new_rows, new_cols, new_vals, *states):
        if self.products == "cupy":
            return super().rebuild(w, keep_mask, new_rows, new_cols, new_vals, *states)
        xp = self.xp
        keep_mask, new_rows, new_cols, new_vals = _check_rebuild_args(
            self, w, keep_mask, new_rows, new_cols, new_vals, states)
        new_rows = xp.ascontiguousarray(new_rows.astype(xp.int64, copy=False))
        new_cols = xp.ascontiguousarray(new_cols.astype(xp.int64, copy=False))
        m = new_rows.shape[0]
        if m > 1 and bool(xp.any((new_rows[1:] < new_rows[:-1]) | (
                (new_rows[1:] == new_rows[:-1]) & (new_cols[1:] <= new_cols[:-1])))):
            # Row-major keys are unique unless a position repeats, which the merge reports.
            order = xp.argsort(new_rows * w.shape[1] + new_cols)
            new_rows, new_cols, new_vals = new_rows[order], new_cols[order], new_vals[order]
        nnz = int(xp.count_nonzero(keep_mask)) + m
        idt = index_dtype_for(nnz, w.shape)
        indptr, indices = w.indptr.astype(idt, copy=False), w.indices.astype(idt, copy=False)
        out_indptr = xp.empty(w.shape[0] + 1, dtype=idt)
        out_indices = xp.empty(nnz, dtype=idt)
        src = xp.empty(nnz, dtype=xp.int64)
        bad = rebuild.merge(indptr, indices, xp.ascontiguousarray(keep_mask), new_rows,
                            new_cols, w.shape[1], out_indptr, out_indices, src)
        if bad:
            raise ValueError("rebuild: a new position is already present or repeats")
        data = rebuild.gather(src, w.data, new_vals)
        new_w = CSR(out_indptr, out_indices, data, w.shape, check=False)
        return new_w, [rebuild.gather(src, xp.ascontiguousarray(s), None) for s in states]
