"""Every CUDA kernel file compiles with nvcc for Turing (sm_75) and Hopper (sm_90).

The GPU backend compiles its kernels at run time with NVRTC, so a syntax or template error would
otherwise surface only on a GPU.  This test compiles the exact text NVRTC gets
(``_module.source``: ``common.cu`` + the file) plus a table taking the address of every template
instance the backend names, which forces nvcc to instantiate each one, with warnings as errors.
Needs ``nvcc`` only (no GPU, no CuPy); skips when it is absent.  Where an NVRTC library is found
(the one CuPy uses; ``SPARSEKIT_NVRTC`` may name it), the sources are also compiled exactly as
``cupy.RawModule`` does, and every name expression must lower to a kernel symbol.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from sparsekit._cuda import _module as km

NVCC = shutil.which("nvcc")
ARCHS = ["sm_75", "sm_90"]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def translation_unit(file: str) -> str:
    table = ",\n".join(f"    (void*)&{expr}" for expr in km.instances(file))
    return (km.source(file) + "\n// Instantiate what the backend launches.\n"
            f"void* sparsekit_instances[] = {{\n{table}\n}};\n")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", km.kernel_files())
def test_kernel_file_compiles(file, arch, tmp_path):
    src = tmp_path / file
    src.write_text(translation_unit(file))
    cmd = [NVCC, f"-arch={arch}", *km.OPTIONS, "-Werror", "all-warnings", "-Xptxas", "-Werror",
           "-c", str(src), "-o", str(tmp_path / f"{file}.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}{res.stderr}"


def test_every_kernel_has_instances_and_files_are_listed():
    """The instance table and the kernel folder agree: no file or kernel left out."""
    on_disk = {p.name for p in km.KERNEL_DIR.glob("*.cu")} - {km.COMMON}
    assert on_disk == set(km.kernel_files())
    for file in km.kernel_files():
        text = (km.KERNEL_DIR / file).read_text()
        defined = set(re.findall(r"__global__\s+void\s+(\w+)\s*\(", text))
        assert defined == set(km.TEMPLATES[file]), (file, defined)
        assert km.instances(file), file


def test_tile_width_matches_the_kernels():
    """The launch arithmetic in Python uses the tile width the kernels are compiled with."""
    text = (km.KERNEL_DIR / km.COMMON).read_text()
    lanes_per_warp = 32
    per_lane = int(re.search(r"#define SK_V (\d+)", text).group(1))
    assert km.TILE == lanes_per_warp * per_lane
    assert km.BLOCK % 32 == 0 and km.WARPS_PER_BLOCK == km.BLOCK // 32


def load_nvrtc():
    """The NVRTC library CuPy compiles with, if this machine has one (no GPU needed): named by
    ``SPARSEKIT_NVRTC``, on the loader path, or from the ``nvidia-cuda-nvrtc`` wheel."""
    import ctypes
    import ctypes.util
    import importlib.util
    import os
    from pathlib import Path

    names = [os.environ.get("SPARSEKIT_NVRTC", ""), "libnvrtc.so.13", "libnvrtc.so.12",
             ctypes.util.find_library("nvrtc") or ""]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        names += [str(p) for p in sorted(Path(root).glob("cu*/lib/libnvrtc.so.*"))]
    for name in filter(None, names):
        if "/" in name:  # NVRTC loads its builtins library from beside it, or from the path
            for builtins in sorted(Path(name).parent.glob("libnvrtc-builtins.so.*")):
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc, or set SPARSEKIT_NVRTC)")


@pytest.mark.parametrize("arch", ["compute_75", "compute_90"])
@pytest.mark.parametrize("file", km.kernel_files())
def test_nvrtc_compiles_and_lowers_every_instance(file, arch):
    """What ``cupy.RawModule`` does at first use: compile the source with NVRTC and look up the
    lowered name of every name expression the backend passes to ``get_function``."""
    import ctypes

    lib = load_nvrtc()
    prog = ctypes.c_void_p()
    src = km.source(file).encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, file.encode(), 0, None, None) == 0
    try:
        for expr in km.instances(file):
            assert lib.nvrtcAddNameExpression(prog, expr.encode()) == 0, expr
        opts = [o.encode() for o in (*km.OPTIONS, f"--gpu-architecture={arch}")]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        status = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert status == 0, log.value.decode(errors="replace")
        for expr in km.instances(file):
            lowered = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(lowered)) == 0, expr
            assert lowered.value and lowered.value.startswith(b"_Z"), (expr, lowered.value)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
