"""``TrainConfig``: every training option once, with its default, validated once.

``train()``, the command line and its TOML files, the scikit-learn estimators and every WASAP
rank build one :class:`TrainConfig` and hand it to the engine (:mod:`sparsekit.training.step`);
none of them keeps defaults or checks of its own.  A bad value fails here, before any data is
loaded or any array allocated, with a one-line message that names the option.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..growth import GrowthMethod, available_methods, get_method
from ..nn.activations import NAMES as ACTIVATIONS
from ..nn.init import FAN_INS, INITS
from .optim import DECAY_MODES, OPTIMIZERS, SCHEDULES

DTYPES = ("float32", "float64")
PARALLEL = ("wasap",)
WASAP_MODES = ("sync", "async")

#: The learning rate and weight decay when left to the optimizer (as PyTorch's defaults,
#: except SGD's, which are the paper's Fashion-MNIST setting).
LR_DEFAULTS = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}
WEIGHT_DECAY_DEFAULTS = {"sgd": 2e-4, "adam": 0.0, "adamw": 0.01}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int | None = None, optional: bool = False):
    """``value`` as an int; a float (even 3.0), bool or string is an error naming ``name``."""
    if value is None and optional:
        return None
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False):
    """``value`` as a finite float within the bounds; the message names ``name`` and the range."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    bad = ((low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        where = (f"lie in {lo}, {hi}" if low is not None and high is not None
                 else f"be {'>' if low_open else '>='} {low}" if low is not None
                 else f"be {'<' if high_open else '<='} {high}")
        raise ValueError(f"{name} must {where}, got {value}")
    return value


def check_choice(name: str, value, choices: Sequence[str]):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_layer_sizes(sizes, name: str = "layer_sizes") -> list[int]:
    """``[n_features, hidden..., n_outputs]`` as positive ints; ``32.7`` is an error, not 32."""
    if isinstance(sizes, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of positive integers, got {sizes!r}")
    if not isinstance(sizes, Sequence):
        try:
            sizes = list(sizes)
        except TypeError:
            raise ValueError(f"{name} must be a sequence of positive integers, "
                             f"got {sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"{name} needs at least 2 sizes (inputs and outputs), got {list(sizes)}")
    for s in sizes:
        if not _is_int(s) or s < 1:
            raise ValueError(f"{name} must be positive integers, got {list(sizes)}")
    return [int(s) for s in sizes]


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run.

    Build one with keywords (``TrainConfig(epochs=20, optimizer="adam")``), from a mapping
    (:meth:`from_dict`, as a checkpoint or a TOML file holds it) or from another one
    (:meth:`replace`).  Values are checked on construction; an unknown option is a
    ``TypeError`` that suggests the closest known name.

    Network (used when ``train()`` builds the model from layer sizes)
        epsilon : float, default 20
            Erdős–Rényi density: a layer gets ``epsilon * (n_in + n_out)`` connections.
        activation : {"allrelu", "relu", ...}; alpha : float, default 0.6 (All-ReLU slope)
        dropout : float in [0, 1), default 0.3
        init : {"he_uniform", "xavier_uniform", "normal"}; fan_in : {"dense", "actual"}
            Initial weights scaled by the dense fan-in (the paper) or each neuron's actual one;
            regrown weights always take the dense scale.
        dtype : {"float32", "float64"}

    Topology
        method : str or GrowthMethod, default "set"
            ``"set"``, ``"static"``, ``"gse"``, ``"topkast"``, ``"rigl"``.
        method_params : dict
            The method's own parameters, e.g. ``{"gamma": 1.0}`` for GSE.
        zeta : float, default 0.3 (SET's fraction of each sign replaced per update)
        evolve_every : int, optional (steps between updates; default once per epoch)
        evolve_output : bool (also evolve the layer feeding the output)
        prune_start, prune_every, prune_percentile
            Importance pruning of hidden neurons from epoch ``prune_start`` (1-based) every
            ``prune_every`` epochs at that percentile; None disables it.

    Optimisation
        optimizer : {"sgd", "adam", "adamw"}, default "sgd"
        lr : float, optional
            Default 0.01 for SGD, 1e-3 for Adam and AdamW.
        momentum : float, default 0.9; nesterov : bool (SGD only)
        betas : (float, float), default (0.9, 0.999); adam_eps : float, default 1e-8 (Adam/W)
        weight_decay : float, optional
            Default 2e-4 for SGD, 0 for Adam, 0.01 for AdamW.
        decay : {"coupled", "decoupled"}, optional
            SGD: L2 through the gradient (PyTorch) or the reference code's per-step shrink.
            Adam is coupled and AdamW decoupled by definition.
        epochs : int, default 10; batch_size : int, default 128
        lr_schedule : {"constant", "step", "cosine", "linear"}; warmup_epochs : float >= 0
            ``cosine`` and ``linear`` anneal from the end of the warm-up to the last epoch;
            ``step`` multiplies the rate by ``lr_gamma`` every ``lr_step_size`` epochs
            (default 30 and 0.1).
        max_grad_norm : float, optional (clip the global gradient norm)
        seed : int >= 0
            Seeds the initial topology, data order, dropout and regrowth.

    Running
        backend : {"cpu", "gpu", "auto"} or Backend, optional
        eval_batch_size : int; progress : bool (a tqdm bar per epoch)
        memory_limit, gpu_memory_limit : int or str, optional (``"16GiB"``, ``"80%"``)

    Multi-process (``parallel="wasap"``, under ``mpiexec``)
        parallel : {None, "wasap"}; wasap_mode : {"sync", "async"}
        phase1_fraction : float in [0, 1], default 0.7
        lr_scaling : bool; scale_warmup_epochs : float, optional; max_staleness : int, optional
        timeout : float, optional (seconds any communication may wait)
    """

    # network
    epsilon: float = 20.0
    activation: str = "allrelu"
    alpha: float = 0.6
    dropout: float = 0.3
    init: str = "he_uniform"
    fan_in: str = "dense"
    dtype: str = "float32"
    # topology
    method: Any = "set"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    zeta: float = 0.3
    evolve_every: int | None = None
    evolve_output: bool = False
    prune_start: int | None = None
    prune_every: int = 10
    prune_percentile: float = 10.0
    # optimisation
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float | None = None
    decay: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    max_grad_norm: float | None = None
    seed: int = 0
    # running
    backend: Any = None
    eval_batch_size: int = 4096
    progress: bool = False
    memory_limit: Any = None
    gpu_memory_limit: Any = None
    # multi-process
    parallel: str | None = None
    wasap_mode: str = "sync"
    phase1_fraction: float = 0.7
    lr_scaling: bool = True
    scale_warmup_epochs: float | None = None
    max_staleness: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        put("epsilon", check_float("epsilon", self.epsilon, low=0, low_open=True))
        check_choice("activation", self.activation, ACTIVATIONS)
        put("alpha", check_float("alpha", self.alpha))
        if self.activation == "allrelu" and not self.alpha > 0:
            raise ValueError(f"alpha (the All-ReLU slope) must be > 0, got {self.alpha}")
        put("dropout", check_float("dropout", self.dropout, low=0, high=1, high_open=True))
        check_choice("init", self.init, INITS)
        check_choice("fan_in", self.fan_in, FAN_INS)
        put("dtype", check_choice("dtype", dtype_name(self.dtype), DTYPES))
        if not isinstance(self.method, GrowthMethod):
            check_choice("method", self.method, available_methods())
        if not isinstance(self.method_params, Mapping):
            raise ValueError(f"method_params must be a mapping, got {self.method_params!r}")
        put("method_params", dict(self.method_params))
        put("zeta", check_float("zeta", self.zeta, low=0, high=1, high_open=True))
        put("evolve_every", check_int("evolve_every", self.evolve_every, 1, optional=True))
        put("evolve_output", _check_bool("evolve_output", self.evolve_output))
        if not isinstance(self.method, GrowthMethod):  # its parameters, before any work
            get_method(self.method, **self.growth_params())
        put("prune_start", check_int("prune_start", self.prune_start, 1, optional=True))
        put("prune_every", check_int("prune_every", self.prune_every, 1))
        put("prune_percentile", check_float("prune_percentile", self.prune_percentile, low=0,
                                            high=100, high_open=True))
        opt = check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        put("lr", check_float("lr", LR_DEFAULTS[opt] if self.lr is None else self.lr, low=0,
                              low_open=True))
        put("momentum", check_float("momentum", self.momentum, low=0, high=1, high_open=True))
        put("nesterov", _check_bool("nesterov", self.nesterov))
        if self.nesterov and (opt != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' and momentum > 0")
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        put("betas", tuple(check_float("betas", b, low=0, high=1, high_open=True)
                           for b in betas))
        put("adam_eps", check_float("adam_eps", self.adam_eps, low=0, low_open=True))
        wd = WEIGHT_DECAY_DEFAULTS[opt] if self.weight_decay is None else self.weight_decay
        put("weight_decay", check_float("weight_decay", wd, low=0))
        decay = self.decay or ("decoupled" if opt == "adamw" else "coupled")
        check_choice("decay", decay, DECAY_MODES)
        if opt == "adam" and decay == "decoupled":
            raise ValueError("decay 'decoupled' with optimizer 'adam' is AdamW: use "
                             "optimizer='adamw'")
        if opt == "adamw" and decay == "coupled":
            raise ValueError("optimizer 'adamw' decouples the weight decay by definition; use "
                             "optimizer='adam' for the coupled (L2) form")
        put("decay", decay)
        put("epochs", check_int("epochs", self.epochs, 1))
        put("batch_size", check_int("batch_size", self.batch_size, 1))
        check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        put("warmup_epochs", check_float("warmup_epochs", self.warmup_epochs, low=0))
        put("lr_step_size", check_int("lr_step_size", self.lr_step_size, 1))
        put("lr_gamma", check_float("lr_gamma", self.lr_gamma, low=0, low_open=True))
        put("max_grad_norm", check_float("max_grad_norm", self.max_grad_norm, low=0,
                                         low_open=True, optional=True))
        put("seed", check_int("seed", self.seed, 0))
        if isinstance(self.backend, str):
            put("backend", self.backend.lower())
        put("eval_batch_size", check_int("eval_batch_size", self.eval_batch_size, 1))
        put("progress", _check_bool("progress", self.progress))
        if self.parallel is not None:
            check_choice("parallel", self.parallel, PARALLEL)
        check_choice("wasap_mode", self.wasap_mode, WASAP_MODES)
        put("phase1_fraction", check_float("phase1_fraction", self.phase1_fraction, low=0,
                                           high=1))
        put("lr_scaling", _check_bool("lr_scaling", self.lr_scaling))
        put("scale_warmup_epochs", check_float("scale_warmup_epochs", self.scale_warmup_epochs,
                                               low=0, optional=True))
        put("max_staleness", check_int("max_staleness", self.max_staleness, 1, optional=True))
        put("timeout", check_float("timeout", self.timeout, low=0, low_open=True,
                                   optional=True))
        self._check_resources()
        if self.method == "static" and self.method_params:
            raise ValueError(f"method 'static' takes no method_params, got "
                             f"{sorted(self.method_params)}")
        if self.parallel == "wasap":
            self._check_wasap()

    def _check_resources(self) -> None:
        """The backend and the memory limits, checked here rather than when a run starts."""
        from ..backends.base import Backend
        from ..backends.registry import _FACTORIES as registered
        from .memory import parse_bytes

        be = self.backend
        if isinstance(be, str):
            if be not in (*registered, "auto"):
                raise ValueError(f"backend must be one of {sorted(registered) + ['auto']}, got "
                                 f"{be!r}")
        elif be is not None and not isinstance(be, Backend):
            raise ValueError(f"backend must be a name or a Backend, got {type(be).__name__}")
        for name in ("memory_limit", "gpu_memory_limit"):
            if getattr(self, name) is not None:
                parse_bytes(getattr(self, name), name)

    def _check_wasap(self) -> None:
        """What WASAP-SGD (``parallel="wasap"``) cannot do, refused before any work."""
        from ..growth import SET, Static

        if self.wasap_mode == "async" and self.prune_start is not None:
            raise ValueError("prune_start (importance pruning) is not supported with "
                             "wasap mode 'async'; use mode 'sync'")
        if not (isinstance(self.method, (SET, Static)) or self.method in ("set", "static")):
            raise ValueError(f"parallel='wasap' supports methods 'set' and 'static', got "
                             f"{self.method_name!r}: phase 1 needs topology changes that depend "
                             "only on the weights and a shared seed")

    # --- building and changing ---------------------------------------------------------------
    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of every option."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TrainConfig:
        """A config from a mapping; an unknown key is a ``TypeError`` naming it."""
        _check_names(options)
        return cls(**options)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (and checked).

        Changing the optimizer also moves ``lr``, ``weight_decay`` and ``decay`` to the new
        optimizer's defaults where they held the old one's and are not changed explicitly.
        """
        _check_names(changes)
        new_opt = changes.get("optimizer", self.optimizer)
        if new_opt != self.optimizer and new_opt in OPTIMIZERS:
            old = {"lr": LR_DEFAULTS[self.optimizer],
                   "weight_decay": WEIGHT_DECAY_DEFAULTS[self.optimizer],
                   "decay": "decoupled" if self.optimizer == "adamw" else "coupled"}
            for name, default in old.items():
                if name not in changes and getattr(self, name) == default:
                    changes[name] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-serialisable values (a backend object becomes its name, a
        growth-method object its name)."""
        out = {name: getattr(self, name) for name in self.options()}
        out["betas"] = list(self.betas)
        if not isinstance(self.backend, (str, type(None))):
            out["backend"] = getattr(self.backend, "name", str(self.backend))
        if isinstance(self.method, GrowthMethod):
            out["method"] = self.method.name
            out["method_params"] = {**self.method.params(), **self.method_params}
        return out

    # --- derived ----------------------------------------------------------------------------
    @property
    def model_options(self) -> dict[str, Any]:
        """The :class:`~sparsekit.nn.model.SparseMLP` constructor arguments in this config."""
        return {"epsilon": self.epsilon, "activation": self.activation, "alpha": self.alpha,
                "dropout": self.dropout, "init": self.init, "fan_in": self.fan_in,
                "dtype": self.dtype}

    def growth_params(self, init: str | None = None) -> dict[str, Any]:
        """The keyword arguments of the growth method this config sets up
        (:func:`sparsekit.training.step.make_growth`): the shared schedule options, SET's
        ``zeta`` and regrowth initialiser (``init``, default this config's), then
        ``method_params`` over them."""
        params = dict(self.method_params)
        shared = {"every_steps": self.evolve_every, "evolve_output": self.evolve_output}
        if self.method == "set":
            return {"zeta": self.zeta, **shared, "init": init or self.init, "fan_in": "dense",
                    **params}
        if self.method in ("gse", "topkast", "rigl"):
            return {**shared, **params}
        return params

    @property
    def method_name(self) -> str:
        return self.method.name if isinstance(self.method, GrowthMethod) else str(self.method)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _check_names(options: Mapping[str, Any]) -> None:
    known = TrainConfig.options()
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown training option {key!r}{hint}")


def dtype_name(dtype) -> str:
    """``"float32"`` for ``np.float32``, ``np.dtype("float32")`` or ``"float32"``; other values
    as text, for the check to name."""
    import numpy as np

    if dtype is not None and not isinstance(dtype, str):
        try:
            return np.dtype(dtype).name
        except TypeError:
            pass
    return str(dtype)

