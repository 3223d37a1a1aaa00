""":class:`DynamicSparsity`: sparsekit's growth methods on the sparse layers of a torch model.

The growth methods (:mod:`sparsekit.growth`) work on an object with ``.layers`` — each a
:class:`~sparsekit.nn.layers.SparseLayer` whose ``w`` is a CSR and whose ``state_w`` holds the
optimizer state aligned with ``w.data`` — and ``.backend``.  Here every :class:`SparseLinear`
gets such a layer whose arrays are *views* of the module's own tensors (its pattern buffers, its
``values`` parameter, and the torch optimizer's per-entry state of that parameter), so a method
runs unchanged.  When it changes a topology (``SparseLayer.rebuild`` carries every state slot
through the drop-and-grow), the new arrays are handed back to torch without a copy: the
``values`` parameter keeps its identity (optimizers, schedulers and hooks keep tracking it) and
the optimizer's state tensors are replaced by the rebuilt ones — dropped entries removed, new
ones zero.

The gradient-guided methods (GSE, RigL, Top-KAST) score candidate connections with the inputs
and output gradients of the step just taken; on the steps where an update is due, each layer's
autograd function keeps those two arrays (feature-major, as the kernels use them) from its
backward pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..growth import get_method
from ..growth.base import GrowthMethod
from ..growth.schedule import evolving_layers
from ..nn.layers import SparseLayer
from . import _bridge
from ._function import _Capture
from .linear import SparseLinear


class _TorchModel:
    """What a growth method sees of the torch model: ``layers``, ``backend``, ``epsilon``
    (Top-KAST's default forward size), and the ``keep_dz`` / ``last_dz`` pair through which
    the step's output gradients reach the gradient-guided methods."""

    def __init__(self, layers: list[SparseLayer], backend, epsilon) -> None:
        self.layers, self.backend, self.epsilon = layers, backend, epsilon
        self.keep_dz = False
        self.last_dz = None


class DynamicSparsity:
    """Evolve the topology of a model's :class:`SparseLinear` layers during training.

    Call :meth:`step` once after every ``optimizer.step()``.  It runs the growth method's
    per-step hook (and, every ``every`` steps, its end-of-period hook), and keeps the
    optimizer's per-entry state of each layer's ``values`` aligned with the new topology.

    Parameters
    ----------
    module : nn.Module
        The model; its trainable :class:`SparseLinear` layers (in ``module.modules()`` order)
        evolve.  They must all live on one device.  Layers frozen when this object is made
        (``values.requires_grad`` False) keep their weights and topology; a method's
        ``layers=`` indices still count every :class:`SparseLinear`, and may not name a frozen
        one.
    optimizer : torch.optim.Optimizer
        The optimizer that updates the layers' ``values`` (create it after
        :func:`~sparsekit.torch.sparsify`).  Per-entry state (SGD ``momentum_buffer``,
        Adam/AdamW ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``: any state tensor shaped like
        the parameter) follows the connections; scalar state (Adam's ``step``) is left alone.
        ``torch.optim.LBFGS`` keeps a history over all parameters at once, which a topology
        change invalidates: its state is cleared at every update (the history starts again).
    method : {"set", "gse", "rigl", "topkast", "static"} or GrowthMethod, default "set"
        The growth method (see :mod:`sparsekit.growth`).
    every : int, default 100
        Update the topology every this many optimizer steps.
    total_steps : int, optional
        Length of training in optimizer steps.  Needed by the gradient-guided methods, which
        anneal the drop fraction and stop updating at ``t_end`` (75 %) of training; Top-KAST
        reduces each layer to its forward set after the last step.  No hook runs past it.
    seed : int, optional
        Seeds the method's random draws (candidate positions, regrown values).
    **params
        The method's parameters (``zeta``, ``drop_fraction``, ``gamma``, ``sampler``,
        ``forward_density``, ...).  ``evolve_output`` defaults to True here: every sparse layer
        evolves (keep a layer dense with ``sparsify(skip=...)`` instead).

    Notes
    -----
    Exact resume: save ``module.state_dict()``, ``optimizer.state_dict()`` and this object's
    :meth:`state_dict` with ``torch.save``; to resume, build the model, the optimizer and a
    ``DynamicSparsity`` as before, load the first two, then :meth:`load_state_dict`.  Layers take
    the saved sizes, so an evolved topology loads into a freshly built model.  Top-KAST
    recomputes its forward set from the saved weights, which is exact at multiples of
    ``every`` (where it refreshes anyway).

    RigL computes the dense gradient of each layer in tiles and refuses layers above its
    documented size (``max_positions``); GSE is its always-sparse counterpart.

    Examples
    --------
    >>> import torch
    >>> from sparsekit.torch import SparseLinear, DynamicSparsity
    >>> net = torch.nn.Sequential(SparseLinear(20, 50, epsilon=5, seed=0), torch.nn.ReLU(),
    ...                           SparseLinear(50, 2, epsilon=5, seed=1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> dyn = DynamicSparsity(net, opt, method="gse", every=10, total_steps=100, seed=0)
    >>> for _ in range(20):
    ...     opt.zero_grad()
    ...     net(torch.randn(32, 20)).square().mean().backward()
    ...     opt.step()
    ...     _ = dyn.step()
    >>> dyn.steps
    20
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 method: str | GrowthMethod = "set", *, every: int = 100,
                 total_steps: int | None = None, seed=None, **params) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        _check_count("every", every)
        if total_steps is not None:
            _check_count("total_steps", total_steps)
        sparse = [m for m in module.modules() if isinstance(m, SparseLinear)]
        if not sparse:
            raise ValueError("module has no SparseLinear layers; call sparsekit.torch.sparsify "
                             "on it first")
        # A frozen layer (values.requires_grad False) keeps its weights and its topology.
        self.modules = [m for m in sparse if m.values.requires_grad]
        if not self.modules:
            raise ValueError("every SparseLinear layer of module is frozen (values.requires_grad "
                             "is False): there is nothing to evolve")
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for i, m in enumerate(self.modules):
            if id(m.values) not in owned:
                raise ValueError(f"optimizer does not update the values of trainable sparse "
                                 f"layer {i} ({m.extra_repr()}); create the optimizer after "
                                 "sparsify, or freeze the layer with requires_grad_(False)")
        self.optimizer = optimizer
        self.every = int(every)
        self.total_steps = None if total_steps is None else int(total_steps)
        if isinstance(method, GrowthMethod):
            self.method = method
        else:
            params.setdefault("evolve_output", True)
            if method != "static":
                params.setdefault("every_steps", self.every)
            self.method = get_method(method, **params)
            if len(self.modules) < len(sparse) and getattr(self.method, "layers", None):
                self.method.layers = _trainable_indices(self.method.layers, sparse,
                                                        self.modules)
            if sparse[-1] is not self.modules[-1] and hasattr(self.method, "evolve_output"):
                # the output layer is frozen: the last trainable one is a hidden layer
                self.method.evolve_output = True
        if getattr(self.method, "schedule", None) is not None and self.total_steps is None:
            raise ValueError(f"total_steps is needed by method {self.method.name!r}: it anneals "
                             "the drop fraction and stops at a fraction of training")
        epsilons = {m.epsilon for m in self.modules}
        epsilon = epsilons.pop() if len(epsilons) == 1 else None
        if (self.method.name == "topkast" and epsilon is None
                and getattr(self.method, "forward_density", None) is None):
            raise ValueError("method 'topkast' needs forward_density= when the sparse layers "
                             "were not all built with one epsilon")
        self._rng = np.random.default_rng(seed)
        self._step = 0
        backend = self._device_backend()
        layers = [SparseLayer(m.pattern(), backend=backend) for m in self.modules]
        self._model = _TorchModel(layers, backend, epsilon)
        self._setup()

    # --- the public loop ---------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Optimizer steps seen so far."""
        return self._step

    def step(self) -> dict | None:
        """Advance by one optimizer step; call it right after ``optimizer.step()``.

        Returns
        -------
        dict or None
            The method's statistics when the topology changed (e.g. ``{"replaced": [...]}``,
            connections replaced per layer).
        """
        step, total = self._step, self.total_steps
        stats: dict = {}
        if total is None or step < total:
            self._sync()
            epoch, epochs = step // self.every, self._epochs()
            out = self.method.after_step(self._model, step, epoch, self._rng, self._cache())
            stats.update(out or {})
            if (step + 1) % self.every == 0 or (total is not None and step + 1 == total):
                stats.update(self.method.end_of_epoch(self._model, epoch, epochs, self._rng)
                             or {})
            self._write_back()
        self._step += 1
        self._arm()
        return stats or None

    def state_dict(self) -> dict:
        """The method, its parameters, the step count and the random generator's state
        (plain Python values: ``torch.save`` / ``torch.load(weights_only=True)`` keep them)."""
        return {"method": self.method.name, "params": self.method.params(), "steps": self._step,
                "every": self.every, "total_steps": self.total_steps,
                "rng": self._rng.bit_generator.state, "method_state": self.method.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved run (after loading the model's and the optimizer's state)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from DynamicSparsity.state_dict(), got "
                            f"{type(state).__name__}")
        missing = [k for k in ("method", "every", "total_steps", "steps", "rng")
                   if k not in state]
        if missing:
            raise ValueError(f"state lacks {', '.join(missing)}: it was not made by "
                             "DynamicSparsity.state_dict()")
        for key in ("method", "every", "total_steps"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(f"state was saved with {key}={state.get(key)!r}, this "
                                 f"DynamicSparsity has {key}={mine!r}")
        self._rng.bit_generator.state = state["rng"]
        self._step = int(state["steps"])
        self.method.load_state_dict(state.get("method_state", {}))
        self._sync()
        self._setup()

    # --- internals ---------------------------------------------------------------------------
    def _device_backend(self):
        devices = {m.values.device for m in self.modules}
        if len(devices) > 1:
            raise ValueError(f"the sparse layers lie on several devices "
                             f"{sorted(map(str, devices))}; DynamicSparsity needs one")
        return self.modules[0].backend

    def _epochs(self) -> float:
        """Updates in the run: ``total_steps / every``, or infinitely many (open-ended SET or
        static; the methods that anneal need ``total_steps``)."""
        return math.inf if self.total_steps is None else math.ceil(self.total_steps / self.every)

    def _setup(self) -> None:
        self._sync()
        self.method.setup(self._model, self.every, self._epochs(), self._rng)
        self._write_back()
        self._arm()

    def _slots(self, m: SparseLinear, xp) -> dict:
        """Views of the optimizer's per-entry state of ``m.values``."""
        state = self.optimizer.state.get(m.values, {})
        return {k: _bridge.view(v, xp) for k, v in state.items()
                if torch.is_tensor(v) and v.shape == m.values.shape and v.device == m.values.device}

    def _sync(self) -> None:
        """Point every adapter layer at its module's current tensors."""
        be = self._model.backend = self._device_backend()
        for m, layer in zip(self.modules, self._model.layers):
            w = m.pattern()
            if layer.w is not w:  # loaded, moved or rebuilt elsewhere since the last step
                layer.w, layer.w_forward = w, None
            if layer.backend is not be:
                layer.backend, layer.b = be, be.xp.zeros(w.shape[0], dtype=w.dtype)
            layer.w_forward = m._forward_w
            layer.state_w, layer.state_b = self._slots(m, be.xp), {}

    def _write_back(self) -> None:
        """Hand changed topologies and their optimizer state back to the modules."""
        forward_slots = getattr(self.method, "forward_slots", None)
        for i, (m, layer) in enumerate(zip(self.modules, self._model.layers)):
            if layer.w is not m.pattern():
                m._set_topology(layer.w)
                m.values.grad = None  # shaped like the old topology
                if isinstance(self.optimizer, torch.optim.LBFGS):
                    self.optimizer.state.clear()  # its history spans the old topologies
                    self.optimizer._numel_cache = None  # and its size the old connections
                else:
                    state = self.optimizer.state[m.values]
                    for k, arr in layer.state_w.items():
                        state[k] = _bridge.tensor(arr)
                    _fresh_state(self.optimizer, m.values, state)
            m._forward_w = layer.w_forward
            m._forward_slots = (None if layer.w_forward is None or forward_slots is None
                                else forward_slots(i))
            if m._forward_slots is None:
                m._forward_w = None

    def _arm(self) -> None:
        """Ask the layers to keep the next step's inputs and output gradients when the method
        will grow by gradient after it."""
        sched = getattr(self.method, "schedule", None)
        total = self.total_steps
        want = (sched is not None and sched.total_steps is not None
                and (total is None or self._step < total) and sched.due(self._step))
        for m in self.modules:
            m._capture = _Capture() if want else None

    def _cache(self):
        """``(acts, derivs, dlogits)`` of the step just taken, in the form the growth methods
        read, or None when this step is not an update."""
        caps = [m._capture for m in self.modules]
        if all(c is None for c in caps):
            return None
        idx = evolving_layers(self._model, getattr(self.method, "evolve_output", True),
                              getattr(self.method, "layers", None))
        for i in idx:
            if caps[i] is None or caps[i].x_ib is None:
                raise RuntimeError(f"sparse layer {i} saw no backward pass since the last "
                                   "DynamicSparsity.step(); call step() after loss.backward() "
                                   "and optimizer.step()")
        acts = [None if c is None else c.x_ib for c in caps]
        dz = [None if c is None else c.dz_ob for c in caps]
        self._model.last_dz = dz
        return acts, None, dz[-1]


def _trainable_indices(layers, sparse: list, trainable: list) -> list[int]:
    """``layers`` (indices among all the sparse layers, negative allowed) as indices among the
    trainable ones, refusing a frozen layer."""
    n, where = len(sparse), {id(m): j for j, m in enumerate(trainable)}
    out = []
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layers must hold indices in [{-n}, {n}), got {i!r}")
        j = where.get(id(sparse[i % n]))
        if j is None:
            raise ValueError(f"layers names sparse layer {i % n}, which is frozen "
                             "(values.requires_grad is False)")
        out.append(j)
    return out


def _check_count(name: str, value) -> None:
    """``value`` must be an integer >= 1 (an int, a NumPy integer, or a float like 10.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a whole number >= 1, got {value!r}")
    if not (math.isfinite(value) and int(value) == value and value >= 1):
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def _fresh_state(optimizer, param, state: dict) -> None:
    """Give new connections the state their optimizer starts a parameter with, where zero is
    not it: Rprop's ``step_size`` (the learning rate: at 0 a connection never moves again) and
    Adagrad's ``sum`` (``initial_accumulator_value``).  Both are recognised by a 0 that the
    optimizer itself never leaves there (Rprop's step size stays >= its minimum, Adagrad's sum
    >= its initial value), so kept connections are untouched."""
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])),
                 None)
    if group is None:
        return
    if isinstance(optimizer, torch.optim.Rprop) and "step_size" in state:
        size = state["step_size"]
        size[size == 0] = float(group["lr"])
    elif isinstance(optimizer, torch.optim.Adagrad) and "sum" in state:
        start = float(group.get("initial_accumulator_value", 0.0))
        if start:
            total = state["sum"]
            total[total == 0] = start

