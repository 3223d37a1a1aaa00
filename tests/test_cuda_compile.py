"""Every CUDA kernel file compiles with nvcc for Turing (sm_75) and Hopper (sm_90).

The GPU backend compiles its kernels at run time with NVRTC, so a syntax or template error would
otherwise surface only on a GPU.  This test compiles the exact text NVRTC gets
(``_module.source``: ``common.cu`` + the file) plus a table taking the address of every template
instance the backend names, which forces nvcc to instantiate each one, with warnings as errors.
Needs ``nvcc`` only (no GPU, no CuPy); skips when it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from sparsekit._cuda import _module as km

NVCC = shutil.which("nvcc")
ARCHS = ["sm_75", "sm_90"]

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def translation_unit(file: str) -> str:
    table = ",\n".join(f"    (void*)&{expr}" for expr in km.instances(file))
    return (km.source(file) + "\n// Instantiate what the backend launches.\n"
            f"void* sparsekit_instances[] = {{\n{table}\n}};\n")


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
