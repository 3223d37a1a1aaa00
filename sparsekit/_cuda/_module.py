"""The CUDA sources, their template instances, and a per-device cache of compiled modules.

Each ``kernels/*.cu`` file is compiled by NVRTC through :class:`cupy.RawModule` the first time one
of its kernels is needed on a device, with ``kernels/common.cu`` prepended.  Every template
instance the backend may launch is listed in :data:`TEMPLATES` and passed as a name expression,
so NVRTC instantiates exactly those; ``tests/test_cuda_compile.py`` compiles the same sources and
instances with ``nvcc`` for sm_75 and sm_90, which catches syntax errors on machines without a
GPU.  Nothing here imports CuPy at module level.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
COMMON = "common.cu"
# No fast-math: flushing denormals or approximate division would break bit-parity of the
# elementwise kernel with the CPU backend.
OPTIONS = ("--std=c++17",)
BLOCK = 256  # threads per block; a multiple of 32, so warps never straddle blocks
WARPS_PER_BLOCK = BLOCK // 32
TILE = 128  # batch columns one warp covers per pass: SK_TILE = 32 * SK_V in kernels/common.cu

# C++ spellings of the dtypes the kernels are instantiated for (built-in types only: NVRTC
# compiles without the standard headers).
VALUE_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
GATHER_TYPES = {**VALUE_TYPES, **INDEX_TYPES}

# file -> kernel -> the type lists of its template parameters, in order.
TEMPLATES: dict[str, dict[str, tuple[dict, ...]]] = {
    "spmm.cu": {"sk_spmm": (VALUE_TYPES, INDEX_TYPES),
                "sk_backward": (VALUE_TYPES, INDEX_TYPES)},
    "sddmm.cu": {"sk_weight_grad": (VALUE_TYPES, INDEX_TYPES),
                 "sk_sampled_grad": (VALUE_TYPES, INDEX_TYPES)},
    "sampling.cu": {"sk_contains": (INDEX_TYPES,)},
    "rebuild.cu": {"sk_place_old": (INDEX_TYPES,), "sk_place_new": (INDEX_TYPES,),
                   "sk_gather": (GATHER_TYPES,)},
    "elementwise.cu": {"sk_bias_act_dropout": (VALUE_TYPES,)},
}


def kernel_files() -> list[str]:
    """The kernel files, ``common.cu`` excluded (it is prepended to each)."""
    return sorted(TEMPLATES)


def source(file: str) -> str:
    """The text NVRTC compiles for ``file``: ``common.cu`` followed by the file."""
    if file not in TEMPLATES:
        raise ValueError(f"unknown kernel file {file!r}; choose one of {kernel_files()}")
    return (KERNEL_DIR / COMMON).read_text() + "\n" + (KERNEL_DIR / file).read_text()


def name_expression(kernel: str, *type_names: str) -> str:
    """``"sk_spmm<float, int>"``: the spelling both the compile step and the lookup use."""
    return f"{kernel}<{', '.join(type_names)}>"


def instances(file: str) -> list[str]:
    """Every template instance of ``file`` that the backend may launch."""
    out = []
    for kernel, params in TEMPLATES[file].items():
        for combo in itertools.product(*(sorted(set(p.values())) for p in params)):
            out.append(name_expression(kernel, *combo))
    return out


def c_type(table: dict, dtype, what: str) -> str:
    """The C++ type of ``dtype`` in ``table``, or a ValueError naming ``what``."""
    try:
        return table[np.dtype(dtype)]
    except KeyError:
        allowed = ", ".join(str(d) for d in table)
        raise ValueError(f"{what} must have dtype {allowed}, got {np.dtype(dtype)}") from None


_MODULES: dict[tuple[int, str], object] = {}
_FUNCTIONS: dict[tuple[int, str], object] = {}
_MAX_BLOCKS: dict[int, int] = {}


def get_kernel(file: str, kernel: str, *type_names: str):
    """The compiled ``kernel<type_names...>`` of ``file`` for the current device (cached)."""
    from .._compat import cupy

    device = cupy.cuda.Device().id
    expr = name_expression(kernel, *type_names)
    fn = _FUNCTIONS.get((device, expr))
    if fn is None:
        module = _MODULES.get((device, file))
        if module is None:
            module = cupy.RawModule(code=source(file), options=OPTIONS,
                                    name_expressions=instances(file))
            _MODULES[(device, file)] = module
        fn = module.get_function(expr)
        _FUNCTIONS[(device, expr)] = fn
    return fn


def launch(fn, n_work: int, work_per_block: int, args: tuple) -> None:
    """Run ``fn`` over ``n_work`` items (warps or threads), ``work_per_block`` per block.

    The kernels are grid-stride loops, so the grid is capped at a few waves of the device's
    multiprocessors; nothing is launched for empty work (a zero-sized grid is an error).
    """
    if n_work <= 0:
        return
    from .._compat import cupy

    device = cupy.cuda.Device().id
    cap = _MAX_BLOCKS.get(device)
    if cap is None:
        sms = cupy.cuda.Device(device).attributes["MultiProcessorCount"]
        cap = _MAX_BLOCKS[device] = 32 * int(sms)
    blocks = min(-(-n_work // work_per_block), cap)
    fn((blocks,), (BLOCK,), args)

