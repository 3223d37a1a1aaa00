"""PyTorch integration: :class:`SparseLinear`, a truly sparse ``nn.Module``.

The layer stores only its connections: the weight values are one ``nn.Parameter`` of length
nnz (any ``torch.optim`` optimizer updates them), the fixed pattern lives in two index buffers
(saved in ``state_dict``).  Forward and backward run sparsekit's CPU kernels through a
``torch.autograd.Function``: PyTorch tensors are batch-major ``(batch, n_in)`` while the kernels
take feature-major ``(n_in, batch)`` activations, so each pass transposes its input once.

This module needs PyTorch (``pip install 'sparsekit[torch]'``); ``import sparsekit`` never
imports it.  CPU tensors only.
"""

from __future__ import annotations

import numpy as np

from ._compat import missing_extra

try:
    import torch
    from torch import nn
except ImportError as exc:
    raise missing_extra("PyTorch", "torch", "sparsekit.torch") from exc

from .backends import Backend, get_backend
from .io import interop
from .nn import layers as _layers
from .nn.csr import CSR

__all__ = ["SparseLinear"]

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _host(t: torch.Tensor, name: str) -> np.ndarray:
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; sparsekit.torch runs on CPU tensors only")
    return t.detach().numpy()


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` with W given as CSR values on a fixed pattern."""

    @staticmethod
    def forward(ctx, x, values, bias, pattern: CSR, backend: Backend):
        w = pattern.with_data(_host(values, "values"))
        x_ib = np.ascontiguousarray(_host(x, "input").T)
        y = torch.from_numpy(backend.matmul(x_ib, w).T)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(values)  # autograd then refuses values changed in place before
        ctx.x_ib, ctx.pattern, ctx.backend = x_ib, pattern, backend
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (values,) = ctx.saved_tensors
        w = ctx.pattern.with_data(_host(values, "values"))
        dy_ob = np.ascontiguousarray(_host(grad_out, "grad_output").T)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_w:
            dx_ib, g = ctx.backend.backward(ctx.x_ib, dy_ob, w, need_x)
            gw = torch.from_numpy(g)
        elif need_x:
            dx_ib = ctx.backend.matmul_t(dy_ob, w)
        if need_x:
            gx = torch.from_numpy(dx_ib.T)
        if need_b and ctx.has_bias:
            gb = grad_out.sum(dim=0)
        return gx, gw, gb, None, None


class SparseLinear(nn.Module):
    """A truly sparse fully connected layer for PyTorch: ``y = x @ W.T + b``.

    W (``out_features x in_features``) has an Erdős–Rényi pattern of
    ``min(n_in * n_out, epsilon * (n_in + n_out))`` connections, fixed for the module's life;
    only those values are parameters, so memory and time grow with the connections.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    epsilon : float, default 20.0
        Erdős–Rényi sparsity.
    bias : bool, default True
        Learn an additive bias.
    init : {"he_uniform", "xavier_uniform", "normal"}, default "he_uniform"
        Distribution of the initial values.
    fan_in : {"dense", "actual"}, default "dense"
        Fan-in used by the initialiser.
    seed : int or numpy Generator, optional
        Seeds the pattern and the initial values.
    dtype : torch.float32 or torch.float64, default torch.float32
        Dtype of the values, the bias and the accepted inputs.
    backend : str or Backend, default "cpu"
        sparsekit's kernel backend (a CPU backend; pass ``CpuBackend(num_threads=n)`` to
        choose the thread count).

    Attributes
    ----------
    values : nn.Parameter of shape (nnz,)
        The weights, in CSR order.
    bias : nn.Parameter of shape (out_features,) or None
        The bias.
    crow_indices, col_indices : torch.Tensor
        The fixed CSR pattern (buffers).

    Examples
    --------
    >>> import torch
    >>> from sparsekit.torch import SparseLinear
    >>> net = torch.nn.Sequential(SparseLinear(784, 1000, seed=0), torch.nn.ReLU(),
    ...                           SparseLinear(1000, 10, seed=1))
    >>> net(torch.randn(8, 784)).shape
    torch.Size([8, 10])
    """

    def __init__(self, in_features: int, out_features: int, epsilon: float = 20.0,
                 bias: bool = True, *, init: str = "he_uniform", fan_in: str = "dense",
                 seed=None, dtype: torch.dtype = torch.float32, backend="cpu") -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        be = self._cpu_backend(backend)
        layer = _layers.SparseLayer.random(int(in_features), int(out_features), epsilon,
                                            rng=np.random.default_rng(seed), backend=be,
                                            dtype=_DTYPES[dtype], init=init, fan_in=fan_in)
        self._install(layer.w, layer.b if bias else None, be)

    @staticmethod
    def _cpu_backend(backend) -> Backend:
        be = get_backend(backend)
        if be.xp is not np:
            raise ValueError(f"sparsekit.torch needs a CPU backend, got {be.name!r}")
        return be

    def _install(self, w: CSR, bias, backend: Backend) -> None:
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self._backend = backend
        self.register_buffer("crow_indices", torch.from_numpy(np.array(w.indptr)))
        self.register_buffer("col_indices", torch.from_numpy(np.array(w.indices)))
        self.values = nn.Parameter(torch.from_numpy(np.array(w.data)))
        self.bias = (nn.Parameter(torch.from_numpy(np.array(bias, dtype=w.dtype)))
                     if bias is not None else None)
        self._pattern_cache = None

    # --- construction from / export to other formats -----------------------------------------
    @classmethod
    def from_layer(cls, layer: _layers.SparseLayer, bias: bool = True,
                   backend="cpu") -> SparseLinear:
        """A module with the pattern, values and (if ``bias``) bias of a sparsekit layer.

        Parameters
        ----------
        layer : sparsekit.SparseLayer
            For example ``model.layers[i]`` of a trained :class:`~sparsekit.SparseMLP`.
        bias : bool, default True
            Keep the layer's bias as a parameter.
        backend : str or Backend, default "cpu"
            CPU backend that runs the kernels.

        Returns
        -------
        SparseLinear
        """
        return cls.from_sparse(layer.to_scipy(),
                               layer.backend.to_numpy(layer.b) if bias else None, backend)

    @classmethod
    def from_sparse(cls, weight, bias=None, backend="cpu") -> SparseLinear:
        """A module from a sparse W of shape ``(out_features, in_features)``.

        Parameters
        ----------
        weight : scipy.sparse matrix or sparse CSR/COO torch.Tensor
            The pattern and initial values.
        bias : array_like or torch.Tensor of shape (out_features,), optional
            No bias parameter when None.
        backend : str or Backend, default "cpu"
            CPU backend that runs the kernels.

        Returns
        -------
        SparseLinear
        """
        if isinstance(weight, torch.Tensor):
            weight = interop.torch_to_scipy(weight)
        if isinstance(bias, torch.Tensor):
            bias = bias.detach().cpu().numpy()
        be = cls._cpu_backend(backend)
        layer = interop.from_scipy(weight, bias, backend=be)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._install(layer.w, layer.b if bias is not None else None, be)
        return module

    def to_sparse_csr(self) -> torch.Tensor:
        """W as a detached ``torch.sparse_csr_tensor`` copy."""
        return torch.sparse_csr_tensor(self.crow_indices.clone(), self.col_indices.clone(),
                                       self.values.detach().clone(),
                                       size=(self.out_features, self.in_features),
                                       check_invariants=True)

    def to_scipy(self):
        """W as a ``scipy.sparse.csr_matrix`` copy."""
        return self.pattern().with_data(self.values.detach().numpy().copy()).to_scipy()

    def to_layer(self, backend=None) -> _layers.SparseLayer:
        """A sparsekit :class:`~sparsekit.nn.layers.SparseLayer` with these weights and bias.

        Parameters
        ----------
        backend : str or Backend, optional
            Where the new layer lives.

        Returns
        -------
        sparsekit.SparseLayer
        """
        bias = None if self.bias is None else self.bias.detach().numpy()
        return interop.from_scipy(self.to_scipy(), bias, backend=backend)

    # --- the layer --------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of connections."""
        return int(self.col_indices.shape[0])

    def pattern(self) -> CSR:
        """The validated CSR pattern the kernels use, rebuilt when the index buffers change
        (``load_state_dict`` writes them in place); it caches W's transpose index."""
        key = (self.crow_indices.data_ptr(), self.col_indices.data_ptr(),
               self.crow_indices._version, self.col_indices._version)
        if self._pattern_cache is None or self._pattern_cache[0] != key:
            indptr = self.crow_indices.numpy()
            indices = self.col_indices.numpy()
            w = CSR(indptr, indices, self.values.detach().numpy(),
                    (self.out_features, self.in_features))
            self._pattern_cache = (key, w)
        return self._pattern_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., in_features)``.

        Parameters
        ----------
        x : torch.Tensor
            CPU tensor with the module's dtype.

        Returns
        -------
        torch.Tensor
            Shape ``(..., out_features)``.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        if x.dtype != self.values.dtype:
            raise ValueError(f"input dtype {x.dtype} differs from the layer's "
                             f"{self.values.dtype}; convert with .to({self.values.dtype})")
        lead = x.shape[:-1]
        y = _SparseLinearFunction.apply(x.reshape(-1, self.in_features), self.values,
                                        self.bias, self.pattern(), self._backend)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, bias={self.bias is not None}")
