"""PyTorch integration: truly sparse layers and dynamic sparse training in any torch model.

* :class:`SparseLinear` — an ``nn.Module`` holding only its connections, on CPU or CUDA
  tensors (sparsekit's Cython or CuPy kernels, zero-copy through DLPack).
* :class:`SparseMLP` — a whole sparse MLP of such layers as one module, its forward and
  backward run as whole passes (about twice as fast as the same layers in ``nn.Sequential``).
* :func:`sparsify` — replace the ``nn.Linear`` layers of any module with sparse ones.
* :class:`DynamicSparsity` — evolve their topology during training with sparsekit's growth
  methods (SET, GSE, RigL, Top-KAST), keeping a ``torch.optim`` optimizer's state aligned.

This package needs PyTorch (``pip install 'sparsekit[torch]'``); ``import sparsekit`` never
imports it.
"""

from __future__ import annotations

from .._compat import missing_extra

try:
    import torch  # noqa: F401
except ImportError as exc:
    raise missing_extra("PyTorch", "torch", "sparsekit.torch") from exc

from .dynamic import DynamicSparsity
from .linear import SparseLinear
from .mlp import SparseMLP
from .sparsify import sparsify

__all__ = ["DynamicSparsity", "SparseLinear", "SparseMLP", "sparsify"]
