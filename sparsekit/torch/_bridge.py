"""Between torch tensors and sparsekit's backends: which backend runs a device, and zero-copy
views both ways.

A CPU tensor runs on a CPU backend (the Cython kernels) and a CUDA tensor on the GPU backend
(CuPy).  Both directions go through DLPack (``xp.from_dlpack`` / ``torch.from_dlpack``): NumPy
and CuPy read a tensor's memory in place and torch reads theirs, so no pass copies weights,
optimizer state or activations between the two libraries.  On CUDA, sparsekit's kernels are
launched on torch's current stream, so they are ordered with torch's own work without a
synchronisation.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import _compat
from .._align import aligned_empty
from ..backends import Backend, get_backend
from ..nn.csr import CSR

#: GPU backends by CUDA device index (a GpuBackend is bound to the device it was made on).
_GPU_BACKENDS: dict[int, Backend] = {}


#: CPU backends that follow torch's thread count, by thread count.
_TORCH_THREADS: dict[int, Backend] = {}


def cpu_backend(backend) -> Backend | None:
    """``backend`` as a backend that runs on host arrays (refusing a CuPy one); None stays None,
    meaning: the CPU kernels use as many threads as torch (``torch.get_num_threads()``)."""
    if backend is None:
        return None
    be = get_backend(backend)
    if be.xp is not np:
        raise ValueError(f"backend must run on host arrays (CPU tensors); got {be.name!r}, and "
                         "CUDA tensors use the gpu backend by themselves")
    return be


def backend_for(device: torch.device, cpu: Backend | None) -> Backend:
    """The backend that runs tensors on ``device``: ``cpu`` for the CPU (None: sparsekit's CPU
    kernels with torch's thread count), the GPU backend of that CUDA device otherwise."""
    if device.type == "cpu":
        if cpu is not None:
            return cpu
        # One thread setting for both libraries: torch.set_num_threads also sizes sparsekit's
        # OpenMP teams, so the two never ask for more threads than the user gave torch.
        n = torch.get_num_threads()
        be = _TORCH_THREADS.get(n)
        if be is None:
            from .._cython.backend import CpuBackend

            be = _TORCH_THREADS[n] = CpuBackend(num_threads=n)
        return be
    if device.type != "cuda":
        raise ValueError(f"sparsekit.torch runs on CPU and CUDA tensors, got device {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    be = _GPU_BACKENDS.get(index)
    if be is None:  # pragma: no cover - needs a GPU
        if not _compat.has_cupy_gpu:
            raise RuntimeError(f"CUDA tensors need sparsekit's gpu backend, which is "
                               f"unavailable: {_compat.gpu_unavailable_reason}")
        from .._cuda.backend import GpuBackend

        with _compat.cupy.cuda.Device(index):
            be = _GPU_BACKENDS[index] = GpuBackend()
    return be


def on_device(device: torch.device):
    """Context in which a backend's kernels for ``device`` run: for CUDA, that device and torch's
    current stream on it; nothing for the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    cp = _compat.cupy  # pragma: no cover - needs a GPU
    stream = torch.cuda.current_stream(device)  # pragma: no cover
    stack = contextlib.ExitStack()  # pragma: no cover
    stack.enter_context(cp.cuda.Device(device.index))  # pragma: no cover
    stack.enter_context(_cupy_stream(cp, stream.cuda_stream, device.index))  # pragma: no cover
    return stack  # pragma: no cover


class _StreamHandle:
    """A raw ``cudaStream_t`` behind the CUDA stream protocol (``__cuda_stream__``)."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self):
        return 0, self.ptr


def _cupy_stream(cp, ptr: int, device_index):  # pragma: no cover - needs a GPU
    """CuPy's view of torch's stream ``ptr``. CuPy 14 deprecates ``ExternalStream`` (one
    warning per layer call) for ``Stream.from_external``, which reads the stream protocol;
    older CuPy has only the former."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamHandle(ptr))
    return cp.cuda.ExternalStream(ptr, -1 if device_index is None else device_index)


def view(t: torch.Tensor, xp):
    """``t``'s memory as an ``xp`` array (no copy; writes show in ``t``)."""
    d = t.detach()
    if xp is np and d.device.type == "cpu" and not d.is_conj() and not d.is_neg():
        return d.numpy()  # the same view as DLPack's, in a fifth of the time (about 1 us)
    return xp.from_dlpack(d)


def with_values(pattern: CSR, values: torch.Tensor) -> CSR:
    """``pattern`` with ``values`` as its data: ``pattern`` itself when its data already is
    that memory (a layer's cached pattern over its own parameter), else a new CSR sharing the
    pattern and its cached transpose."""
    data = pattern.data
    ptr = (data.__array_interface__["data"][0] if isinstance(data, np.ndarray)
           else data.data.ptr)
    if (ptr == values.data_ptr() and data.size == values.numel()
            and data.itemsize == values.element_size() and values.is_contiguous()):
        return pattern
    return pattern.with_data(view(values, pattern.xp))


def tensor(a) -> torch.Tensor:
    """An ``xp`` array's memory as a torch tensor (no copy).

    A CSR's index arrays are read-only views (see :class:`~sparsekit.nn.csr.CSR`), which
    DLPack before version 1.0 (torch < 2.9) cannot export: the writable array under such a
    view goes instead, the same memory.  (The layer's pattern is validated again whenever its
    index tensors change in place.)"""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        base = a.base
        same = (isinstance(base, np.ndarray) and base.flags.writeable
                and base.dtype == a.dtype and base.shape == a.shape
                and base.strides == a.strides
                and base.__array_interface__["data"][0] == a.__array_interface__["data"][0])
        a = base if same else a.copy()
    return torch.from_dlpack(a)


def _host_transpose(src: np.ndarray, backend) -> np.ndarray:
    """``src.T`` (2-D, C-contiguous, float) as a new 64-byte-aligned C-contiguous array, by the
    kernels' tiled transpose (torch's and NumPy's strided copies walk one side a value per
    cache line: a 128 x 1000 transpose took about 75 us in torch)."""
    from .._cython import elementwise

    out = aligned_empty(src.shape[::-1], src.dtype)
    threads = getattr(backend, "_element_threads", None)
    elementwise.transpose_into(src, out, threads(src.size >> 4) if threads else 1)
    return out


def feature_major(batch: torch.Tensor, backend):
    """A batch-major ``(batch, features)`` tensor as a C-contiguous ``(features, batch)``
    ``backend.xp`` array, the layout the kernels read (one transposing copy; aligned on the
    host)."""
    detached = batch.detach()
    if (backend.xp is np and detached.device.type == "cpu" and detached.dim() == 2
            and detached.dtype in (torch.float32, torch.float64) and detached.is_contiguous()
            and not detached.is_conj() and not detached.is_neg()):
        return _host_transpose(detached.numpy(), backend)
    return view(detached.T.contiguous(), backend.xp)


def batch_major(a, backend) -> torch.Tensor:
    """A feature-major kernel result ``(features, batch)`` as a C-contiguous ``(batch,
    features)`` tensor, as ``nn.Linear`` gives.  A transposed view would be free here but cost
    more after the layer: elementwise ops that mix it with contiguous tensors take torch's
    strided path (ReLU's backward on a 128 x 1000 gradient: 0.68 ms instead of about 0.03),
    and a view made inside an autograd Function refuses ``.view()`` and in-place ops."""
    if (isinstance(a, np.ndarray) and a.ndim == 2 and a.flags.c_contiguous
            and a.dtype in (np.float32, np.float64)):
        return torch.from_numpy(_host_transpose(a, backend))
    return tensor(a).T.contiguous()
