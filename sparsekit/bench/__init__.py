"""Benchmarks, run from a source checkout: ``python -m sparsekit.bench kernels [--quick]``.

The benchmark code lives in the repository's ``benchmarks/`` folder (it imports torch and other
peers that sparsekit itself never needs); this package only finds and runs it, so importing
``sparsekit`` stays light.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: name -> script, relative to the repository root
SUITES = {"kernels": "benchmarks/kernels.py"}


def find_script(name: str) -> Path:
    """Path of a benchmark script in the source checkout this package was imported from."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(SUITES)}")
    root = Path(__file__).resolve().parents[2]
    script = root / SUITES[name]
    if not script.is_file():
        raise FileNotFoundError(
            f"{SUITES[name]} not found next to this sparsekit ({root}); the benchmarks ship "
            "with the source tree, not the wheel: run them from a git checkout "
            "(pip install -e '.[bench]')"
        )
    return script


def run(name: str, args: list[str]) -> int:
    """Run benchmark ``name`` with command-line ``args`` in a fresh interpreter."""
    return subprocess.call([sys.executable, str(find_script(name)), *args])


__all__ = ["SUITES", "find_script", "run"]
