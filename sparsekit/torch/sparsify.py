""":func:`sparsify`: replace the ``nn.Linear`` layers of any module with truly sparse ones."""

from __future__ import annotations

import fnmatch
import numbers
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .linear import SparseLinear


def _skipper(skip) -> Callable[[str, nn.Module], bool]:
    if skip is None:
        return lambda name, mod: False
    if callable(skip):
        return skip
    if isinstance(skip, str):
        skip = [skip]
    patterns = list(skip) if isinstance(skip, Iterable) else [skip]
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("skip must be a callable(name, module), a name pattern or a list of "
                        f"name patterns, got {skip!r}")
    return lambda name, mod: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def sparsify(module: nn.Module, epsilon: float = 20.0, density: float | None = None,
             skip: str | Iterable[str] | Callable[[str, nn.Module], bool] | None = None, *,
             seed=None, init: str = "he_uniform", fan_in: str = "dense",
             backend=None) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` with a :class:`SparseLinear`, in place.

    Each new layer is drawn afresh (pattern and values, zero bias) with no dense mask: nothing
    of size ``n_in x n_out`` is read or made, so a model declared on the ``meta`` device can be
    sparsified at sizes whose dense weights would not fit in memory.  Device and dtype follow
    the replaced layer (a ``meta`` layer's replacement is built on the CPU, since ``meta``
    holds no values).

    Parameters
    ----------
    module : nn.Module
        The model; it is changed in place and returned.  ``module`` itself may be an
        ``nn.Linear``, in which case the replacement is returned.
    epsilon : float, default 20.0
        Erdős–Rényi sparsity of every new layer (``min(n_in n_out, ε (n_in + n_out))``
        connections).
    density : float, optional
        Instead of ``epsilon``: the fraction of each layer's positions that are connections.
    skip : str, list of str or callable, optional
        Layers to keep dense: qualified names (as in ``module.named_modules()``, shell-style
        wildcards allowed, e.g. ``"head"`` or ``"blocks.*.attn.*"``), or a predicate
        ``skip(name, linear) -> bool``.  The projections inside ``nn.MultiheadAttention`` are
        always kept: that module reads their weights directly instead of calling them.  So
        are, with a warning, layers whose replacement would change the model: a weight tied
        to another module's (an LM head sharing the embedding), an ``nn.Linear`` subclass
        with a forward, parameters, buffers or children of its own, a layer with hooks, and a
        lazy layer not yet run.  Only ties inside ``module`` can be seen: sparsify the model
        that holds both ends of a tie, not a part of it (nor a bare ``nn.Linear``).
    seed : int, optional
        Seeds every layer's pattern and values (each layer gets its own stream).
    init, fan_in : str
        Initial values, as for :class:`SparseLinear`.
    backend : str or Backend, optional
        Kernel backend for CPU tensors (default: sparsekit's CPU kernels with torch's thread
        count; see :class:`SparseLinear`).

    Returns
    -------
    nn.Module
        ``module`` (or the replacement of a bare ``nn.Linear``).

    Examples
    --------
    >>> import torch
    >>> from sparsekit.torch import sparsify
    >>> net = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
    ...                           torch.nn.Linear(300, 10))
    >>> net = sparsify(net, epsilon=10, skip="2", seed=0)
    >>> type(net[0]).__name__, type(net[2]).__name__
    ('SparseLinear', 'Linear')
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    for name, value in (("epsilon", epsilon), ("density", density)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, numbers.Real)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    if density is not None and not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    if density is None and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    skipped = _skipper(skip)
    seeds = np.random.SeedSequence(seed)

    def replace(name: str, lin: nn.Linear) -> SparseLinear:
        device = lin.weight.device
        dtype = lin.weight.dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"layer {name or '<module>'} has dtype {dtype}; sparsekit.torch "
                             "layers are float32 or float64")
        (child,) = seeds.spawn(1)
        new = SparseLinear(lin.in_features, lin.out_features, epsilon, lin.bias is not None,
                           density=density, init=init, fan_in=fan_in,
                           seed=np.random.default_rng(child), dtype=dtype, backend=backend)
        # a frozen layer stays frozen
        new.values.requires_grad_(lin.weight.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(lin.bias.requires_grad)
        new.train(lin.training)
        return new if device.type == "meta" else new.to(device)

    if isinstance(module, nn.Linear):
        if skipped("", module):
            return module
        why = _kept_dense(module, {})
        if why:
            warnings.warn(f"sparsify kept the layer dense: {why}", UserWarning, stacklevel=2)
            return module
        return replace("", module)
    inside_mha = set()
    for mod in module.modules():
        if isinstance(mod, nn.MultiheadAttention):
            inside_mha.update(id(m) for m in mod.modules())
    # Every name a layer goes by (a layer used twice): one replacement shared by all of them,
    # or none when any of its names is skipped.
    names: dict[int, list[str]] = {}
    owners: dict[int, set[int]] = {}  # parameter -> the modules holding it (tied weights)
    for name, mod in module.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(mod))
        if isinstance(mod, nn.Linear) and id(mod) not in inside_mha:
            names.setdefault(id(mod), []).append(name)
    dense = []
    for uses in names.values():
        lin = module.get_submodule(uses[0])
        if any(skipped(name, lin) for name in uses):
            continue
        why = _kept_dense(lin, owners)
        if why:
            dense.append(f"{uses[0]} ({why})")
            continue
        new = replace(uses[0], lin)
        for name in uses:
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
    for mod in module.modules():
        # nn.TransformerEncoder's nested-tensor inference path reads its first layer's
        # linear1.weight directly (each layer's own fused path is off: see SparseLinear)
        if isinstance(mod, nn.TransformerEncoder) and any(
                isinstance(m, SparseLinear) for m in mod.modules()):
            mod.use_nested_tensor = False
    if dense:
        warnings.warn(f"sparsify kept {len(dense)} nn.Linear layer(s) dense: {'; '.join(dense)}",
                      UserWarning, stacklevel=2)
    return module


def _kept_dense(lin: nn.Linear, owners: dict[int, set[int]]) -> str | None:
    """Why ``lin`` cannot be replaced without changing the model, or None.

    A weight tied to another module's (``head.weight = embedding.weight``) would come apart;
    a subclass with a forward, parameters, buffers or children of its own (LoRA and the like)
    would lose them; hooks would not follow to the new module; a lazy layer has no shape yet.
    """
    if isinstance(lin, nn.modules.lazy.LazyModuleMixin) and lin.has_uninitialized_params():
        return "an uninitialized lazy layer: run a forward pass first"
    for attr in ("weight", "bias"):
        p = getattr(lin, attr)
        if p is not None and len(owners.get(id(p), ())) > 1:
            return f"its {attr} is tied to another module's parameter"
    if type(lin) is not nn.Linear and (
            type(lin).forward is not nn.Linear.forward or lin._modules or lin._buffers
            or set(lin._parameters) - {"weight", "bias"}):
        return (f"{type(lin).__name__} subclasses nn.Linear with a forward, parameters, buffers "
                "or children of its own")
    if lin._forward_hooks or lin._forward_pre_hooks or lin._backward_hooks or getattr(
            lin, "_backward_pre_hooks", None):
        return "it has hooks, which would not follow to a new module"
    return None
