""":class:`SparseLinear`, a truly sparse ``nn.Module`` on CPU and CUDA tensors.

The layer stores only its connections: the weight values are one ``nn.Parameter`` of length
nnz (any ``torch.optim`` optimizer updates them), the pattern lives in two index buffers (saved
in ``state_dict``).  Forward and backward run sparsekit's kernels through a
``torch.autograd.Function``: the CPU (Cython) kernels for CPU tensors, the GPU (CuPy) kernels
for CUDA tensors, on the tensors' own memory (see :mod:`sparsekit.torch._bridge`).  PyTorch
tensors are batch-major ``(batch, n_in)`` while the kernels take feature-major ``(n_in, batch)``
activations, so each pass transposes its input once.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..backends import get_backend
from ..io import interop
from ..nn import layers as _layers
from ..nn.csr import CSR
from ..nn.init import erdos_renyi, init_values, uniform_pattern
from . import _bridge
from ._function import _eager_under_compile, _SparseLinearFunction

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _random_csr(n_out: int, n_in: int, epsilon: float, density, rng, dtype, init: str,
                fan_in: str) -> CSR:
    """An Erdős–Rényi W (``density`` None) or a uniformly random one with
    ``round(density * n_in * n_out)`` connections, built on the host in O(nnz) memory."""
    if density is None:
        return erdos_renyi(n_out, n_in, epsilon, rng=rng, backend="cpu", dtype=dtype,
                           init=init, fan_in=fan_in)
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    m = max(1, min(n_in * n_out, round(density * n_in * n_out)))
    indptr, indices = uniform_pattern(n_out, n_in, m, rng)
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(n_out, dtype=indices.dtype), counts)
    data = init_values(rows, (n_out, n_in), rng, dtype, init, fan_in,
                       counts if fan_in == "actual" else None,
                       get_backend("cpu").host_threads(m))
    return CSR(indptr, indices, data, (n_out, n_in), check=False)


class SparseLinear(nn.Module):
    """A truly sparse fully connected layer for PyTorch: ``y = x @ W.T + b``.

    W (``out_features x in_features``) holds only its connections: an Erdős–Rényi pattern of
    ``min(n_in * n_out, epsilon * (n_in + n_out))`` connections, or ``density * n_in * n_out``
    uniformly random ones.  Memory and time grow with the connections; nothing of size
    ``n_in x n_out`` is ever made.  The pattern is fixed unless a
    :class:`~sparsekit.torch.DynamicSparsity` evolves it.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    epsilon : float, default 20.0
        Erdős–Rényi sparsity (ignored when ``density`` is given).
    bias : bool, default True
        Learn an additive bias (initially zero).
    density : float, optional
        Fraction of the ``n_in * n_out`` positions that are connections.
    init : {"he_uniform", "xavier_uniform", "normal"}, default "he_uniform"
        Distribution of the initial values.
    fan_in : {"dense", "actual"}, default "dense"
        Fan-in used by the initialiser.
    seed : int or numpy Generator, optional
        Seeds the pattern and the initial values.
    dtype : torch.float32 or torch.float64, default torch.float32
        Dtype of the values, the bias and the accepted inputs.
    device : torch.device or str, optional
        Where the parameters live (built on the host, then moved); CPU or CUDA.
    backend : str or Backend, optional
        sparsekit's kernel backend for CPU tensors.  By default the CPU kernels run with
        ``torch.get_num_threads()`` threads, so ``torch.set_num_threads`` sets both libraries'
        threads; pass ``"cpu"`` or ``CpuBackend(num_threads=n)`` to fix them.  CUDA tensors
        always run on the gpu backend.

    Attributes
    ----------
    values : nn.Parameter of shape (nnz,)
        The weights, in CSR order.
    bias : nn.Parameter of shape (out_features,) or None
        The bias.
    crow_indices, col_indices : torch.Tensor
        The CSR pattern (buffers, saved in ``state_dict``).

    Notes
    -----
    Under ``torch.autocast`` the layer computes at its own precision (float16 and bfloat16
    inputs are converted), as autocast does for operations without a low-precision kernel.
    ``torch.func`` transforms (``grad``, ``vmap``, ...) and ``torch.jit.script`` are refused
    with an error; ``torch.compile`` and ``torch.jit.trace`` run the layer.
    ``torch.nn.utils.parametrize`` cannot register on ``values``: it keeps parametrizations in
    an ``nn.ModuleDict``, whose ``values()`` method takes that name.

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
                 bias: bool = True, *, density: float | None = None, init: str = "he_uniform",
                 fan_in: str = "dense", seed=None, dtype: torch.dtype = torch.float32,
                 device=None, backend=None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        be = _bridge.cpu_backend(backend)
        rng = np.random.default_rng(seed)
        # reset_parameters() draws again from where the constructor started
        init_args = {"epsilon": epsilon, "density": density, "init": init, "fan_in": fan_in,
                     "rng": None if seed is None else copy.deepcopy(rng)}
        w = _random_csr(int(out_features), int(in_features), epsilon, density, rng,
                        _DTYPES[dtype], init, fan_in)
        self._install(w, np.zeros(w.shape[0], dtype=w.dtype) if bias else None, be)
        self.epsilon = float(epsilon) if density is None else None
        self._init_args = init_args
        if device is not None:
            self.to(device)

    def _install(self, w: CSR, bias, backend) -> None:
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.epsilon = None
        self._cpu = backend
        self.register_buffer("crow_indices", torch.from_numpy(np.array(w.indptr)))
        self.register_buffer("col_indices", torch.from_numpy(np.array(w.indices)))
        self.values = nn.Parameter(torch.from_numpy(np.array(w.data)))
        self.bias = (nn.Parameter(torch.from_numpy(np.array(bias, dtype=w.dtype)))
                     if bias is not None else None)
        self._pattern_cache = None
        # Top-KAST's forward set (a sub-pattern of W) and the positions of its entries in
        # ``values``, set by DynamicSparsity; its values are gathered from ``values`` at every
        # forward, so edits, copies and conversions of the parameter take effect.
        self._forward_w = self._forward_slots = None
        self._capture = None    # a _Capture while a DynamicSparsity wants this step's gradients
        self._init_args = None  # the constructor's draw (see reset_parameters)
        # nn.TransformerEncoderLayer's fused inference path reads linear1.weight directly; any
        # forward hook inside it turns that path off, so this layer keeps a no-op one.
        self.register_forward_pre_hook(_no_fused_paths)

    def reset_parameters(self) -> None:
        """Draw the pattern and the values again as the constructor did, and zero the bias.

        A layer built with a seed gets its initial weights back; one made by
        :meth:`from_sparse` draws a uniformly random pattern with as many connections.  This is
        the step after ``module.to_empty(device=...)`` (a model declared on the ``meta``
        device), which leaves the pattern uninitialised.  The parameters stay the same
        objects; an optimizer's per-entry state no longer matches them.
        """
        a = self._init_args or {"epsilon": None, "init": "he_uniform", "fan_in": "dense",
                                "rng": None,
                                "density": self.nnz / (self.in_features * self.out_features)}
        # a seeded layer draws from its seed again, an unseeded one afresh (as nn.Linear)
        rng = np.random.default_rng() if a["rng"] is None else copy.deepcopy(a["rng"])
        dtype, device = self.values.dtype, self.values.device
        w = _random_csr(self.out_features, self.in_features, a["epsilon"], a["density"], rng,
                        _DTYPES[dtype], a["init"], a["fan_in"])
        with torch.no_grad():
            self.values.data = torch.from_numpy(np.array(w.data)).to(device)
            self.crow_indices = torch.from_numpy(np.array(w.indptr)).to(device)
            self.col_indices = torch.from_numpy(np.array(w.indices)).to(device)
            if self.bias is not None:
                self.bias.zero_()
        self.values.grad = None
        self._pattern_cache = self._forward_w = self._forward_slots = None

    def __prepare_scriptable__(self):
        raise TypeError("SparseLinear cannot be compiled by torch.jit.script (its forward runs "
                        "sparsekit's kernels on the tensors' memory); use torch.compile or "
                        "torch.jit.trace")

    # --- construction from / export to other formats -----------------------------------------
    @classmethod
    def from_layer(cls, layer: _layers.SparseLayer, bias: bool = True,
                   backend=None) -> SparseLinear:
        """A module with the pattern, values and (if ``bias``) bias of a sparsekit layer.

        Parameters
        ----------
        layer : sparsekit.SparseLayer
            For example ``model.layers[i]`` of a trained :class:`~sparsekit.SparseMLP`.
        bias : bool, default True
            Keep the layer's bias as a parameter.
        backend : str or Backend, optional
            CPU backend for CPU tensors (default: torch's thread count, as in the constructor).

        Returns
        -------
        SparseLinear
            On the CPU; move it with ``.to(device)``.
        """
        return cls.from_sparse(layer.to_scipy(),
                               layer.backend.to_numpy(layer.b) if bias else None, backend)

    @classmethod
    def from_sparse(cls, weight, bias=None, backend=None) -> SparseLinear:
        """A module from a sparse W of shape ``(out_features, in_features)``.

        Parameters
        ----------
        weight : scipy.sparse matrix or sparse CSR/COO torch.Tensor
            The pattern and initial values.
        bias : array_like or torch.Tensor of shape (out_features,), optional
            No bias parameter when None.
        backend : str or Backend, optional
            CPU backend for CPU tensors (default: torch's thread count, as in the constructor).

        Returns
        -------
        SparseLinear
            On the CPU; move it with ``.to(device)``.
        """
        if isinstance(weight, torch.Tensor):
            weight = interop.torch_to_scipy(weight.cpu())
        if isinstance(bias, torch.Tensor):
            bias = bias.detach().cpu().numpy()
        be = _bridge.cpu_backend(backend)
        layer = interop.from_scipy(weight, bias, backend="cpu")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._install(layer.w, layer.b if bias is not None else None, be)
        return module

    def to_sparse_csr(self) -> torch.Tensor:
        """W as a detached ``torch.sparse_csr_tensor`` copy, on the module's device."""
        return torch.sparse_csr_tensor(self.crow_indices.clone(), self.col_indices.clone(),
                                       self.values.detach().clone(),
                                       size=(self.out_features, self.in_features),
                                       check_invariants=True)

    def to_scipy(self):
        """W as a ``scipy.sparse.csr_matrix`` copy on the host."""
        # the layer's own CSR (a torch CSR tensor on the way warns that it is in beta)
        return self.pattern().to_scipy()

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
        bias = None if self.bias is None else self.bias.detach().cpu().numpy()
        return interop.from_scipy(self.to_scipy(), bias, backend=backend)

    # --- the layer --------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of connections."""
        return int(self.col_indices.shape[0])

    @property
    def backend(self):
        """The sparsekit backend that runs this layer on its current device."""
        return _bridge.backend_for(self.values.device, self._cpu)

    def pattern(self) -> CSR:
        """W as a validated CSR over the module's own memory (``data`` is a view of ``values``).

        Rebuilt when the index buffers or the values' storage change (``load_state_dict``,
        ``.to()``); between changes the same object is returned, with W's cached transpose
        index.
        """
        key = self._cache_key()
        if self._pattern_cache is None or self._pattern_cache[0] != key:
            crow, col, vals = self.crow_indices, self.col_indices, self.values
            devices = {crow.device, col.device, vals.device}
            if len(devices) > 1:
                raise ValueError(f"the layer's pattern and values lie on different devices "
                                 f"{sorted(map(str, devices))}; move the module with .to()")
            xp = self.backend.xp
            with _bridge.on_device(vals.device):
                try:
                    w = CSR(_bridge.view(crow, xp), _bridge.view(col, xp),
                            _bridge.view(vals, xp), (self.out_features, self.in_features))
                except ValueError as exc:
                    raise ValueError(f"the layer's pattern is not a valid CSR ({exc}); after "
                                     "module.to_empty(), call reset_parameters()") from None
            self._pattern_cache = (key, w)
        return self._pattern_cache[1]

    def _set_topology(self, w: CSR) -> None:
        """Install a new pattern and values (arrays on the module's device, adopted without a
        copy); the ``values`` parameter stays the same object, so optimizers keep tracking it."""
        self.values.data = _bridge.tensor(w.data)
        self.crow_indices = _bridge.tensor(w.indptr)
        self.col_indices = _bridge.tensor(w.indices)
        self._pattern_cache = None
        self._pattern_cache = (self._cache_key(), w)

    def _cache_key(self):
        crow, col, vals = self.crow_indices, self.col_indices, self.values
        return (crow.data_ptr(), col.data_ptr(), vals.data_ptr(), _version(crow), _version(col),
                vals.shape[0], vals.device)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The layer's shape goes into the state dict's metadata (kept by torch.save), not in a
        # tensor: a narrower layer's pattern is a valid pattern of a wider one, and only the
        # shape tells them apart.
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})["shape"] = [self.out_features, self.in_features]

    def _saved_pattern_error(self, state_dict, prefix, metadata=None) -> str | None:
        """What is wrong with the pattern a state dict would load into this layer (its own
        index buffers and values standing in for any it lacks), or None: it must be a valid
        CSR of this layer's shape, with one value per connection, saved from a layer of this
        shape (when the state dict's ``metadata`` records it)."""
        shape = (metadata or {}).get("shape")
        if shape is not None and list(shape) != [self.out_features, self.in_features]:
            return (f"size mismatch for {prefix or 'the layer'}: the state dict holds a layer of "
                    f"out_features x in_features = {shape[0]} x {shape[1]}, this layer is "
                    f"{self.out_features} x {self.in_features}")
        t = {key: state_dict.get(prefix + key, getattr(self, key))
             for key in ("crow_indices", "col_indices", "values")}
        given = [prefix + key in state_dict for key in t]
        if any(given) and not all(given):
            return (f"{prefix}values, {prefix}crow_indices and {prefix}col_indices go together: "
                    "load the pattern and the values together (the state dict has only "
                    f"{', '.join(k for k, g in zip(t, given) if g)})")
        for key, v in t.items():
            if not isinstance(v, torch.Tensor) or v.ndim != 1:
                return f"{prefix}{key} must be a 1-D tensor"
        if any(v.is_meta for v in t.values()):
            return None  # no data to check yet
        n_rows, nnz = t["crow_indices"].shape[0] - 1, t["col_indices"].shape[0]
        if n_rows != self.out_features:
            return (f"size mismatch for {prefix}crow_indices: the state dict has {n_rows + 1} "
                    f"row offsets, this layer of out_features={self.out_features} takes "
                    f"{self.out_features + 1}")
        if t["values"].shape[0] != nnz:
            return (f"{prefix}values has {t['values'].shape[0]} entries but {prefix}col_indices "
                    f"{nnz}: load the pattern and the values together")
        try:
            CSR(t["crow_indices"].detach().cpu().numpy(), t["col_indices"].detach().cpu().numpy(),
                np.zeros(nnz, dtype=np.float32), (self.out_features, self.in_features))
        except (ValueError, TypeError) as exc:
            return (f"the pattern in the state dict is not one of a {self.out_features} x "
                    f"{self.in_features} layer: {exc}")
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checked first, so that a pattern of another shape (nn.Linear's "size mismatch") is
        # refused with the layer left as it was.
        problem = self._saved_pattern_error(state_dict, prefix, local_metadata)
        if problem is not None:
            error_msgs.append(problem)
            return
        # A saved layer may hold another number of connections (an evolved or Top-KAST layer):
        # take its sizes first, then let nn.Module copy the tensors in.
        saved = state_dict.get(prefix + "values")
        if saved is not None and saved.shape != self.values.shape:
            # not inference tensors, even when loaded under torch.inference_mode(): the layer
            # must train afterwards
            with torch.inference_mode(False):
                self.values.data = torch.empty(saved.shape, dtype=self.values.dtype,
                                               device=self.values.device)
                col = state_dict.get(prefix + "col_indices")
                if col is not None:
                    self.col_indices = torch.empty(col.shape, dtype=self.col_indices.dtype,
                                                   device=self.col_indices.device)
            self.values.grad = None  # shaped like the old pattern
        self._pattern_cache = self._forward_w = self._forward_slots = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @_eager_under_compile
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(..., in_features)``.

        Parameters
        ----------
        x : torch.Tensor
            On the module's device, with the module's dtype.

        Returns
        -------
        torch.Tensor
            Shape ``(..., out_features)``.
        """
        x = checked_input(x, self.in_features, self.values, "SparseLinear")
        lead = x.shape[:-1]
        w_fwd, base = self._forward_set()
        y = _SparseLinearFunction.apply(x.reshape(-1, self.in_features), self.values,
                                        self.bias, self.pattern(), w_fwd, base, self.backend,
                                        self._capture if torch.is_grad_enabled() else None)
        return y.reshape(*lead, self.out_features)

    def _forward_set(self):
        """``(w_fwd, base)``: Top-KAST's forward set with this pass's values and the layer's
        cached one (which keeps its transpose index), or ``(None, None)``."""
        w_fwd = base = self._forward_w
        if w_fwd is not None and w_fwd.xp is not self.backend.xp:
            # moved to another device: forward with all of W
            w_fwd = base = self._forward_w = self._forward_slots = None
        if w_fwd is not None:
            with _bridge.on_device(self.values.device):
                values = _bridge.view(self.values.detach(), w_fwd.xp)
                w_fwd = w_fwd.with_data(values[self._forward_slots])
        return w_fwd, base

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, bias={self.bias is not None}")


def checked_input(x, in_features: int, values: torch.Tensor, who: str) -> torch.Tensor:
    """``x`` checked against a module of ``in_features`` inputs whose weights are ``values``
    (converted to their dtype under autocast); a one-line error naming the problem otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if _transformed(x) or _transformed(values):
        raise RuntimeError(f"{who} does not run under torch.func transforms (grad, vmap, "
                           "jacrev, ...): its kernels read the tensors' memory; use "
                           "torch.autograd (loss.backward(), torch.autograd.grad)")
    if x.dim() == 0:
        raise ValueError(f"input must have shape (..., {in_features}), got a scalar")
    if values.dtype not in _DTYPES:
        raise ValueError(f"{who} computes in float32 or float64, but its values are "
                         f"{values.dtype}; convert it with .float() or .double()")
    if x.shape[-1] != in_features:
        raise ValueError(f"input has {x.shape[-1]} features, expected {in_features}")
    if x.device != values.device:
        raise ValueError(f"input is on {x.device} but the layer's weights are on "
                         f"{values.device}; move one of them with .to()")
    if (x.dtype != values.dtype and x.dtype in (torch.float16, torch.bfloat16)
            and _autocast_on(x.device.type)):
        # autocast runs this layer at its own precision, as it runs ops it has no
        # low-precision kernel for
        x = x.to(values.dtype)
    if x.dtype != values.dtype:
        raise ValueError(f"input dtype {x.dtype} differs from the layer's "
                         f"{values.dtype}; convert with .to({values.dtype})")
    return x


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch < 2.4 asks per device by name)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu"
                    else torch.is_autocast_enabled())


#: torch's test for a torch.func (functorch) wrapper, which has no memory of its own (looked up
#: once: the forward asks it of every input)
_IS_FUNC_WRAPPER = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor",
                           None)


def _transformed(t: torch.Tensor) -> bool:
    """Whether ``t`` is a torch.func (functorch) wrapper."""
    return _IS_FUNC_WRAPPER is not None and bool(_IS_FUNC_WRAPPER(t))


def _version(t: torch.Tensor) -> int:
    """``t``'s in-place version counter (-1 for inference tensors, which have none)."""
    return -1 if t.is_inference() else t._version


def _no_fused_paths(module, args) -> None:
    """A forward pre-hook that does nothing (see :meth:`SparseLinear._install`)."""
    return None

