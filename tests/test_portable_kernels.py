"""The kernels built for other instruction sets than this machine's.

The extensions are compiled with ``-march=native``, so the test suite only ever runs the code
paths of the machine it builds on; CI's has AVX-512, where a batch's last vector is masked.  A
laptop's AVX2 build (or ``SPARSEKIT_PORTABLE=1``'s plain x86-64) walks the end of a batch row
with a scalar tail instead, which once gave a sample other bits there than in a whole vector
(predictions then depended on the batch a sample came in).  These tests compile two harnesses
against the kernel headers with setup.py's flags for each instruction set this CPU can run:

- ``tests/portable_kernels.cc``, the forward products: bit for bit, a sample's output does not
  depend on its position in the batch, and the full-rows product equals the general walk;
- ``tests/portable_topology.cc``, what else has paths without AVX-512: the fused backward and
  the SDDMM against sums in double (every batch tiling, empty rows), the counts, the rank sort
  and the per-row sampler of ``sampling.hh``, and the rebuild's row merge, exactly.

Needs ``g++`` only; skips without it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GXX = shutil.which("g++")
#: -march value -> the /proc/cpuinfo flags its code needs
ARCHS = {"x86-64": (), "haswell": ("avx2", "fma"), "native": ()}


def base_flags() -> list[str]:
    """setup.py's ``BASE_FLAGS``, read from the file (one list of flags for every build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BASE_FLAGS":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no BASE_FLAGS")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


#: harness -> the summary its run prints when every check passes
HARNESSES = {
    "portable_kernels.cc": "position_mismatches=0 full_rows_mismatches=0",
    "portable_topology.cc": "dots_bad=0 counts_bad=0 sort_bad=0 grow_bad=0 merge_bad=0",
}


@pytest.mark.skipif(GXX is None, reason="g++ not found")
@pytest.mark.parametrize("harness", sorted(HARNESSES))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_kernels_keep_their_contracts_on_every_instruction_set(arch, harness, tmp_path):
    needs = ARCHS[arch]
    if needs and not set(needs) <= cpu_flags():
        pytest.skip(f"this CPU cannot run -march={arch} code")
    exe = tmp_path / Path(harness).stem
    cmd = [GXX, *base_flags(), f"-march={arch}", f"-I{ROOT / 'sparsekit' / '_cython'}",
           str(ROOT / "tests" / harness), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode and "march" in built.stderr:
        pytest.skip(f"g++ does not accept -march={arch}")
    assert built.returncode == 0, built.stderr[-3000:]
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert HARNESSES[harness] in ran.stdout, ran.stdout
