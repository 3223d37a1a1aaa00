"""Exchange layer weights with SciPy and PyTorch sparse matrices.

A :class:`~sparsekit.nn.layers.SparseLayer` stores W with shape ``(n_out, n_in)`` (rows are output
neurons), the layout of ``torch.nn.Linear.weight`` and of a ``scipy.sparse`` matrix ``W`` used as
``y = x @ W.T``.  Export copies the CSR arrays to the host; import goes through
:meth:`sparsekit.nn.csr.CSR.from_scipy`, which sums duplicates, sorts indices and validates, so any
well-formed CSR or COO matrix is accepted.  Nothing here densifies a matrix.

PyTorch is optional and imported only by the ``*_torch`` functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import get_backend
from ..nn.csr import CSR
from ..nn.layers import SparseLayer

__all__ = ["from_scipy", "from_torch", "set_layer", "to_scipy", "to_torch", "torch_to_scipy"]


def _csr_of(layer: SparseLayer | CSR) -> CSR:
    if isinstance(layer, SparseLayer):
        return layer.w
    if isinstance(layer, CSR):
        return layer
    raise TypeError(f"layer must be a SparseLayer or a CSR, got {type(layer).__name__}")


def to_scipy(layer: SparseLayer | CSR):
    """The weights as a ``scipy.sparse.csr_matrix`` of shape ``(n_out, n_in)`` (a host copy).

    Parameters
    ----------
    layer : SparseLayer or CSR
        A layer (``model.layers[i]``) or its weight matrix.

    Returns
    -------
    scipy.sparse.csr_matrix
        Sorted, duplicate-free indices; the values' dtype is the layer's.
    """
    return _csr_of(layer).to_scipy()


def from_scipy(matrix, bias=None, *, backend=None, dtype=None) -> SparseLayer:
    """A new :class:`~sparsekit.nn.layers.SparseLayer` with the pattern and values of ``matrix``.

    Parameters
    ----------
    matrix : scipy.sparse matrix or array of shape (n_out, n_in)
        Any sparse format; duplicates are summed and indices sorted.  Explicitly stored zeros stay
        connections.
    bias : array_like of shape (n_out,), optional
        Zeros when omitted.
    backend : str or Backend, optional
        Where the layer lives (default as :func:`sparsekit.get_backend`).
    dtype : float32 or float64, optional
        Default: the matrix's dtype when it is one of these, float32 otherwise.

    Returns
    -------
    SparseLayer
        With zero optimizer state.
    """
    be = get_backend(backend)
    w = CSR.from_scipy(matrix, dtype=dtype)
    if be.xp is not np:
        w = CSR(be.asarray(w.indptr), be.asarray(w.indices), be.asarray(w.data), w.shape)
    if bias is not None:
        bias = np.asarray(bias, dtype=w.dtype)
    return SparseLayer(w, bias, backend=be)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PyTorch interop needs torch: pip install 'sparsekit[torch]'") from exc
    return torch


def to_torch(layer: SparseLayer | CSR):
    """The weights as a ``torch.sparse_csr_tensor`` of shape ``(n_out, n_in)`` (a CPU copy).

    Parameters
    ----------
    layer : SparseLayer or CSR
        A layer or its weight matrix.

    Returns
    -------
    torch.Tensor
        Layout ``torch.sparse_csr``, index dtype int32 or int64 as stored, values float32 or
        float64.
    """
    torch = _torch()
    m = to_scipy(layer)
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr), torch.from_numpy(m.indices),
                                   torch.from_numpy(m.data), size=m.shape,
                                   check_invariants=True)


def torch_to_scipy(tensor):
    """A ``scipy.sparse.csr_matrix`` copy of a 2-D sparse CSR or COO ``torch.Tensor`` on the CPU.

    Parameters
    ----------
    tensor : torch.Tensor
        Layout ``torch.sparse_csr`` or ``torch.sparse_coo``, no batch or dense dimensions.

    Returns
    -------
    scipy.sparse.csr_matrix
    """
    import scipy.sparse as sp

    torch = _torch()
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"tensor is on {tensor.device}; move it with .cpu() first")
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce().to_sparse_csr()
    if tensor.layout != torch.sparse_csr:
        raise ValueError(f"tensor must be a sparse CSR or COO tensor, got layout {tensor.layout}"
                         " (a dense weight has n_in x n_out entries: call .to_sparse_csr() "
                         "on it only if that is intended)")
    if tensor.dim() != 2:
        raise ValueError(f"tensor must be 2-D (n_out, n_in), got {tensor.dim()} dimensions")
    tensor = tensor.detach()
    return sp.csr_matrix((tensor.values().numpy().copy(), tensor.col_indices().numpy().copy(),
                          tensor.crow_indices().numpy().copy()), shape=tuple(tensor.shape))


def from_torch(tensor, bias=None, *, backend=None, dtype=None) -> SparseLayer:
    """A new :class:`~sparsekit.nn.layers.SparseLayer` from a sparse CSR (or COO) torch tensor.

    Parameters
    ----------
    tensor : torch.Tensor
        Sparse weight of shape ``(n_out, n_in)`` on the CPU.
    bias : torch.Tensor or array_like of shape (n_out,), optional
        Zeros when omitted.
    backend : str or Backend, optional
        Where the layer lives.
    dtype : float32 or float64, optional
        Default: the tensor's dtype when it is one of these, float32 otherwise.

    Returns
    -------
    SparseLayer
    """
    if bias is not None and hasattr(bias, "detach"):
        bias = bias.detach().cpu().numpy()
    return from_scipy(torch_to_scipy(tensor), bias, backend=backend, dtype=dtype)


def set_layer(model: Any, index: int, weights, bias=None) -> SparseLayer:
    """Replace layer ``index`` of a :class:`~sparsekit.SparseMLP` with imported weights.

    Parameters
    ----------
    model : SparseMLP
        The model to change; its backend and dtype are kept.
    index : int
        Which layer (negative counts from the end).
    weights : scipy.sparse matrix, sparse torch.Tensor or SparseLayer
        Shape ``(n_out, n_in)`` equal to the replaced layer's, so the network stays connected.
    bias : array_like of shape (n_out,), optional
        Zeros when omitted (a SparseLayer brings its own).

    Returns
    -------
    SparseLayer
        The installed layer (fresh, zero optimizer state).
    """
    old = model.layers[index]
    if isinstance(weights, SparseLayer):
        bias = weights.backend.to_numpy(weights.b) if bias is None else bias
        weights = weights.w.to_scipy()
    elif hasattr(weights, "layout"):  # a torch tensor
        weights = torch_to_scipy(weights)
    layer = from_scipy(weights, bias, backend=model.backend, dtype=model.dtype)
    if layer.w.shape != old.w.shape:
        raise ValueError(f"weights have shape {layer.w.shape}, but layer {index} is "
                         f"{old.w.shape} (n_out, n_in)")
    model.layers[index] = layer
    return layer
