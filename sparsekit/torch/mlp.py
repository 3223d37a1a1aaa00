""":class:`SparseMLP`: a whole truly sparse MLP as one PyTorch module, run in whole passes.

A stack of :class:`~sparsekit.torch.SparseLinear` layers with activations between them costs,
in PyTorch, four batch transposes per layer and per step (the kernels read feature-major
activations, torch hands over batch-major ones) and an autograd node per layer and activation.
This module keeps the same layers as submodules, so optimizers, ``state_dict``, ``.to()`` and
:class:`~sparsekit.torch.DynamicSparsity` see them as usual, but runs its forward and backward
as the engine's passes (:meth:`sparsekit.backends.Backend.mlp_forward` and
:meth:`~sparsekit.backends.Backend.mlp_backward`; on the CPU one OpenMP team per pass):
activations stay feature-major from the first layer to the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..nn.activations import NAMES, hidden_activations
from ..nn.layers import SparseLayer
from . import _bridge
from ._function import _eager_under_compile
from .linear import SparseLinear, checked_input


class SparseMLP(nn.Module):
    """A truly sparse multilayer perceptron whose passes run as whole: ``layers[-1](... act(
    layers[0](x)) ...)`` with the hidden ``activation`` and dropout after each hidden layer.

    Numerically it is ``nn.Sequential(layers[0], act, nn.Dropout(dropout), layers[1], ...)``
    (the dropout mask aside: it comes from sparsekit's counter-based hash, seeded from torch's
    generator, so ``torch.manual_seed`` makes it reproducible), in about 60 % of that
    sequence's time on the CPU (``benchmarks/torch_peers.py``, case ``mlp``).

    Parameters
    ----------
    layer_sizes : sequence of int
        Input size, hidden sizes, output size (at least two entries).
    epsilon : float, default 20.0
        Erdős–Rényi sparsity of every layer (ignored when ``density`` is given).
    density : float, optional
        Fraction of each layer's ``n_in * n_out`` positions that are connections.
    activation : {"relu", "allrelu", "leaky_relu", "linear", "tanh", "sigmoid"}, default "relu"
        Hidden activation.  ``"allrelu"`` is the All-ReLU of Curci et al. (slopes ``-alpha``,
        ``+alpha``, ... by hidden layer); with ``dropout=0.3`` and ``alpha=0.6`` it is the
        paper's Fashion-MNIST network.
    alpha : float, default 0.6
        All-ReLU's slope magnitude.
    negative_slope : float, default 0.01
        ``leaky_relu``'s slope.
    dropout : float, default 0.0
        Inverted-dropout rate after each hidden activation, in training mode only.
    bias : bool, default True
        Learn an additive bias in every layer.
    init, fan_in, seed, dtype, device, backend
        As for :class:`~sparsekit.torch.SparseLinear` (``seed``: an int, a NumPy Generator or
        None); layer ``i`` draws from ``seed``'s ``i``-th spawned stream.

    Attributes
    ----------
    layers : nn.ModuleList of SparseLinear
        The layers, in order.

    Notes
    -----
    Forward hooks registered on the individual layers do not run: the module calls their
    kernels, not their ``forward``.  ``torch.func`` transforms are refused as for
    :class:`~sparsekit.torch.SparseLinear`.

    Examples
    --------
    >>> import torch
    >>> from sparsekit.torch import SparseMLP
    >>> net = SparseMLP([784, 1000, 1000, 10], activation="allrelu", dropout=0.3, seed=0)
    >>> net(torch.randn(8, 784)).shape
    torch.Size([8, 10])
    """

    def __init__(self, layer_sizes: Sequence[int], epsilon: float = 20.0, *,
                 density: float | None = None, activation: str = "relu", alpha: float = 0.6,
                 negative_slope: float = 0.01, dropout: float = 0.0, bias: bool = True,
                 init: str = "he_uniform", fan_in: str = "dense", seed=None,
                 dtype: torch.dtype = torch.float32, device=None, backend=None) -> None:
        super().__init__()
        sizes = list(layer_sizes) if not isinstance(layer_sizes, (str, bytes)) else None
        if not sizes or len(sizes) < 2 or not all(
                isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0
                for n in sizes):
            raise ValueError(f"layer_sizes must be a sequence of at least two positive ints, "
                             f"got {layer_sizes!r}")
        if activation not in NAMES:
            raise ValueError(f"activation must be one of {NAMES}, got {activation!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.activations = hidden_activations(activation, len(sizes) - 2, alpha, negative_slope)
        self.activation, self.alpha, self.dropout = activation, float(alpha), float(dropout)
        n = len(sizes) - 1
        rngs = (seed.spawn(n) if isinstance(seed, np.random.Generator)
                else [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)])
        self.layers = nn.ModuleList(
            SparseLinear(n_in, n_out, epsilon, bias, density=density, init=init,
                         fan_in=fan_in, seed=rng, dtype=dtype, device=device, backend=backend)
            for (n_in, n_out), rng in zip(zip(sizes[:-1], sizes[1:]), rngs))

    @classmethod
    def from_model(cls, model, backend=None) -> SparseMLP:
        """A module with the layers (pattern, values, bias), activation and dropout of a
        sparsekit :class:`~sparsekit.SparseMLP`, e.g. one trained by ``sparsekit train`` and
        loaded with ``SparseMLP.load``; on the CPU (move it with ``.to(device)``)."""
        from ..nn.model import SparseMLP as Model

        if not isinstance(model, Model):
            raise TypeError(f"model must be a sparsekit.SparseMLP, got {type(model).__name__}")
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.activations = list(model.activations)
        net.activation, net.alpha = model.activation_name, model.alpha
        net.dropout = model.dropout
        net.layers = nn.ModuleList(SparseLinear.from_layer(layer, backend=backend)
                                   for layer in model.layers)
        return net

    def to_model(self, backend=None):
        """A sparsekit :class:`~sparsekit.SparseMLP` with these layers, activation and dropout
        (a copy), for ``sparsekit``'s training, evaluation and checkpoints."""
        from ..nn.model import SparseMLP as Model

        if self.activation == "leaky_relu":  # the model's leaky ReLU has slope 0.01
            slopes = {a.slope for a in self.activations}
            if slopes != {0.01}:
                raise ValueError(f"a sparsekit.SparseMLP's leaky_relu has slope 0.01, this "
                                 f"module's {sorted(slopes)}")
        epsilon = self.layers[0].epsilon
        return Model.from_layers([layer.to_layer(backend) for layer in self.layers],
                                 epsilon=20.0 if epsilon is None else epsilon,
                                 activation=self.activation, alpha=self.alpha,
                                 dropout=self.dropout)

    @property
    def layer_sizes(self) -> list[int]:
        """Input size, hidden sizes, output size."""
        return [self.layers[0].in_features, *(layer.out_features for layer in self.layers)]

    @_eager_under_compile
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network to ``x`` of shape ``(..., layer_sizes[0])``.

        Returns
        -------
        torch.Tensor
            Shape ``(..., layer_sizes[-1])``, the last layer's output (no activation).
        """
        first = self.layers[0]
        x = checked_input(x, first.in_features, first.values, "SparseMLP")
        devices = {layer.values.device for layer in self.layers}
        dtypes = {layer.values.dtype for layer in self.layers}
        if len(devices) > 1 or len(dtypes) > 1:
            raise ValueError(f"SparseMLP's layers lie on {sorted(map(str, devices))} with "
                             f"dtypes {sorted(map(str, dtypes))}; move the whole module with "
                             ".to()")
        lead = x.shape[:-1]
        rate = self.dropout if self.training else 0.0
        n_hidden = len(self.layers) - 1
        # torch's generator draws the dropout keys, so torch.manual_seed fixes the masks
        seeds = (torch.randint(0, 2**62, (n_hidden,)).tolist() if rate > 0
                 else [0] * n_hidden)
        params = []
        for layer in self.layers:
            params += [layer.values, layer.bias]
        y = _SparseMLPFunction.apply(x.reshape(-1, first.in_features), self, rate, seeds,
                                     torch.is_grad_enabled(), *params)
        return y.reshape(*lead, self.layers[-1].out_features)

    def extra_repr(self) -> str:
        return (f"layer_sizes={self.layer_sizes}, activation={self.activation!r}, "
                f"dropout={self.dropout}")


def _engine_layers(module: SparseMLP, backend):
    """Each layer as a :class:`~sparsekit.nn.layers.SparseLayer` over the module's own memory
    (its Top-KAST forward set included), and each forward set's cached base (or None)."""
    layers, bases = [], []
    for lin in module.layers:
        w = _bridge.with_values(lin.pattern(), lin.values)
        bias = None if lin.bias is None else _bridge.view(lin.bias, backend.xp)
        layer = SparseLayer(w, bias, backend)
        layer.w_forward, base = lin._forward_set()
        layers.append(layer)
        bases.append(base)
    return layers, bases


class _SparseMLPFunction(torch.autograd.Function):
    """The whole network's forward and backward; the gradients of every layer's values and
    bias (and of the input) come out of one backward pass."""

    @staticmethod
    def forward(ctx, x, module, rate, seeds, grad_enabled, *params):
        be = module.layers[0].backend
        with _bridge.on_device(x.device):
            layers, bases = _engine_layers(module, be)
            x_ib = _bridge.feature_major(x, be)
            if grad_enabled:
                logits, acts, derivs = be.mlp_forward(layers, module.activations, x_ib, rate,
                                                      seeds)
            else:  # nothing is kept for a backward pass (dropout still applies in training)
                logits = (be.mlp_forward(layers, module.activations, x_ib, rate, seeds)[0]
                          if rate > 0 else be.mlp_infer(layers, module.activations, x_ib))
                acts = derivs = None
            y = _bridge.batch_major(logits, be)
        ctx.save_for_backward(*(p for p in params if p is not None))  # in-place edits refused
        ctx.layers, ctx.bases, ctx.acts, ctx.derivs, ctx.backend = (layers, bases, acts,
                                                                     derivs, be)
        ctx.captures = [lin._capture for lin in module.layers]
        ctx.has_bias = [p is not None for p in params[1::2]]
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        be, layers = ctx.backend, ctx.layers
        if ctx.acts is None:
            raise RuntimeError("SparseMLP ran without gradients (torch.no_grad or "
                               "inference mode); run it with gradients enabled to backpropagate")
        need_x = ctx.needs_input_grad[0]
        keep = need_x or any(c is not None for c in ctx.captures)
        with _bridge.on_device(grad_out.device):
            dlogits = _bridge.feature_major(grad_out, be)
            grads, dzs, _ = be.mlp_backward(layers, ctx.acts, ctx.derivs, dlogits, keep)
            for i, capture in enumerate(ctx.captures):
                if capture is not None:  # what gradient-guided growth methods score with
                    capture.x_ib, capture.dz_ob = ctx.acts[i], dzs[i]
            gx = None
            if need_x:
                first = layers[0]
                w = first.w if first.w_forward is None else first.w_forward
                gx = _bridge.batch_major(be.matmul_t(dzs[0], w), be)
            for layer, base in zip(layers, ctx.bases):
                if base is not None and base._transpose is None:  # kept for the next steps
                    base._transpose = layer.w_forward._transpose
                    base._transpose_inv = layer.w_forward._transpose_inv
            out = []
            for (gw, gb), has_bias in zip(grads, ctx.has_bias):
                out += [_bridge.tensor(gw), _bridge.tensor(gb) if has_bias else None]
        return (gx, None, None, None, None, *out)
