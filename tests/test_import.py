"""``import sparsekit`` imports no optional dependency and probes no GPU, and the integrations
that need one name the extra that installs it.

Each check runs in a fresh interpreter whose ``sys.meta_path`` starts with a finder that refuses
the optional packages and records every attempt, so the checks hold whether or not those
packages are installed here.  Anything that could reach a CUDA driver (a process such as
``nvidia-smi``, a CUDA library opened through ctypes, the device count of ``sparsekit._compat``)
is recorded as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["cupy", "cupyx", "torch", "sklearn", "mpi4py", "matplotlib", "tqdm"]

# Runs before the body in the child; the body ends by printing report() as JSON.
_PRELUDE = textwrap.dedent("""
    import ctypes, importlib.abc, json, os, subprocess, sys

    BLOCKED = set(json.loads(sys.argv[1]))
    attempts, probes = [], []


    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is blocked by test_import", name=name)
            return None


    sys.meta_path.insert(0, Refuse())
    preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)

    _popen, _cdll = subprocess.Popen.__init__, ctypes.CDLL.__init__
    _system = os.system


    def popen(self, args, *a, **k):
        probes.append(f"process {args!r}")
        _popen(self, args, *a, **k)


    def system(command):
        probes.append(f"process {command!r}")
        return _system(command)


    def cdll(self, name, *a, **k):
        if any(s in str(name).lower() for s in ("cuda", "nvidia", "nvml", "nvrtc")):
            probes.append(f"library {name!r}")
        _cdll(self, name, *a, **k)


    subprocess.Popen.__init__, os.system, ctypes.CDLL.__init__ = popen, system, cdll


    def report(**extra):
        compat = sys.modules.get("sparsekit._compat")
        if compat is not None and "has_cupy_gpu" in vars(compat):
            probes.append("sparsekit._compat.has_cupy_gpu was resolved")
        loaded = sorted(m for m in sys.modules
                        if m.partition(".")[0] in BLOCKED and m not in preloaded)
        print(json.dumps(dict(attempts=attempts, loaded=loaded, probes=probes, **extra)))
""")


def run_blocked(body: str) -> dict:
    """Run ``body`` after the prelude in a fresh interpreter; return its report."""
    # The default backend is the CPU: "auto" or "gpu" from the environment would be a probe
    # asked for, not one that `import sparsekit` made on its own.
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_BACKEND"}
    out = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body),
                          json.dumps(OPTIONAL)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sparsekit_needs_no_optional_dependency():
    r = run_blocked("""
        import sparsekit

        sparsekit.get_backend("cpu")
        sparsekit.SparseMLP([8, 4, 2])
        report()
    """)
    assert r["attempts"] == [], "tried to import an optional dependency"
    assert r["loaded"] == []
    assert r["probes"] == [], "probed for a CUDA device"


@pytest.mark.parametrize("statement,extra", [
    ("from sparsekit import SparseMLPClassifier", "sklearn"),  # the estimators
    ("import sparsekit.torch", "torch"),
])
def test_an_optional_front_end_without_its_package_names_the_extra(statement, extra):
    r = run_blocked(f"""
        try:
            {statement}
        except ImportError as exc:
            report(error=str(exc))
        else:
            report(error=None)
    """)
    assert r["error"] is not None
    assert f"pip install 'sparsekit[{extra}]'" in r["error"]
    assert r["probes"] == []
