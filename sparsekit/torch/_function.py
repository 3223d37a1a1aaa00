"""The autograd function under :class:`~sparsekit.torch.SparseLinear`: forward, input gradient
and weight gradient by sparsekit's kernels, on the tensors' own memory (feature-major views:
PyTorch's batch-major tensors are transposed once per pass)."""

from __future__ import annotations

import functools
import sys

import torch
from torch.autograd.function import once_differentiable

from ..nn.csr import CSR
from . import _bridge


def _eager_under_compile(fn):
    """``fn`` run eagerly inside ``torch.compile`` (Dynamo cannot trace the kernels, which read
    the tensors' memory): the model compiles around it.  ``torch.compiler.disable`` is applied
    on the first call made once Dynamo is loaded, so that importing sparsekit.torch does not
    load it (0.9 s)."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:  # nothing can be compiling
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


class _Capture:
    """What the last backward pass through a layer saw: its input ``x_ib`` and the gradient
    ``dz_ob`` of its output, feature-major (the gradient-guided growth methods score candidate
    connections with them)."""

    __slots__ = ("x_ib", "dz_ob")

    def __init__(self) -> None:
        self.x_ib = self.dz_ob = None


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` with W given as CSR values on a pattern.

    ``w_fwd`` (Top-KAST's forward set, a sub-pattern of W with its own values) replaces W in the
    forward product and the input gradient; the weight gradient still covers every entry of W.
    """

    @staticmethod
    def forward(ctx, x, values, bias, pattern: CSR, w_fwd, w_fwd_base, backend, capture):
        with _bridge.on_device(x.device):
            w = _bridge.with_values(pattern, values)
            x_ib = _bridge.feature_major(x, backend)
            z = backend.matmul(x_ib, w if w_fwd is None else w_fwd)
        if bias is not None:  # in place on the fresh product: no second output-sized array
            _bridge.tensor(z).add_(bias.detach()[:, None])
        y = _bridge.batch_major(z, backend)
        ctx.save_for_backward(values)  # autograd then refuses values changed in place before
        ctx.w_fwd_base = w_fwd_base  # the layer's forward set, which keeps the transpose
        ctx.x_ib, ctx.pattern, ctx.w_fwd, ctx.backend, ctx.capture = (x_ib, pattern, w_fwd,
                                                                      backend, capture)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable  # the kernels are not differentiable: a second backward is refused
    def backward(ctx, grad_out):
        (values,) = ctx.saved_tensors
        be = ctx.backend
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = gw = None
        with _bridge.on_device(grad_out.device):
            w = _bridge.with_values(ctx.pattern, values)
            dy_ob = _bridge.feature_major(grad_out, be)
            if ctx.capture is not None:
                ctx.capture.x_ib, ctx.capture.dz_ob = ctx.x_ib, dy_ob
            if ctx.w_fwd is not None:
                dx = be.matmul_t(dy_ob, ctx.w_fwd) if need_x else None
                gw = be.weight_grad(ctx.x_ib, dy_ob, w) if need_w else None
                base = ctx.w_fwd_base  # A's transpose index, for the next steps too
                if base is not None and base._transpose is None:
                    base._transpose, base._transpose_inv = (ctx.w_fwd._transpose,
                                                            ctx.w_fwd._transpose_inv)
            elif need_w:
                dx, gw = be.backward(ctx.x_ib, dy_ob, w, need_x)
            elif need_x:
                dx = be.matmul_t(dy_ob, w)
            gx = None if dx is None else _bridge.batch_major(dx, be)
            if ctx.pattern._transpose is None:  # keep W's transpose index for the next steps
                ctx.pattern._transpose = w._transpose
            if ctx.pattern._transpose_inv is None:  # and its inverse, where backward made it
                ctx.pattern._transpose_inv = w._transpose_inv
            gw = None if gw is None else _bridge.tensor(gw)
        gb = grad_out.sum(dim=0) if need_b and ctx.has_bias else None
        return gx, gw, gb, None, None, None, None, None
