"""sparsekit's malloc settings (sparsekit/_cython/_malloc.py): when they apply, and that kernel
outputs then stop page-faulting on every call."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from sparsekit._cython import _malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_FAULTS = textwrap.dedent("""
    import json, resource
    import numpy as np
    from sparsekit._cython._malloc import malloc_tuning
    from sparsekit._cython.backend import CpuBackend
    from sparsekit.nn.init import erdos_renyi
    be = CpuBackend(num_threads=1)
    rng = np.random.default_rng(0)
    w = erdos_renyi(1000, 1000, 20, rng=rng)
    x = rng.standard_normal((1000, 128), dtype=np.float32)
    dy = rng.standard_normal((1000, 128), dtype=np.float32)
    be.transpose_index(w)
    for _ in range(5):  # warm-up
        be.matmul(x, w); be.backward(x, dy, w)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        be.matmul(x, w); be.backward(x, dy, w)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"tuning": malloc_tuning(), "faults_per_call": (f1 - f0) / 100}))
""")


def _faults(env_update: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",
                                                        "SPARSEKIT_MALLOC_TUNING")}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the settings exist on glibc only")
def test_outputs_reuse_freed_memory():
    # Each call returns a fresh 512 KiB output (128 pages); with glibc's defaults the heap top
    # may be trimmed after the call, and every output page then faults again.
    got = _faults({})
    assert got["tuning"] == {"applied": True, "reason": ""}
    assert got["faults_per_call"] < 16, got
    # The switch turns it off.  (How often glibc's own adaptive thresholds then fault depends on
    # the process's allocation history: about 240 per call when this script runs alone, none
    # once inside the full suite under nox, so only the settings are compared here.)
    off = _faults({"SPARSEKIT_MALLOC_TUNING": "0"})
    assert off["tuning"] == {"applied": False, "reason": "SPARSEKIT_MALLOC_TUNING=0"}


@pytest.mark.parametrize("env, reason", [
    ({"SPARSEKIT_MALLOC_TUNING": "0"}, "SPARSEKIT_MALLOC_TUNING=0"),
    ({"SPARSEKIT_MALLOC_TUNING": "off"}, "SPARSEKIT_MALLOC_TUNING=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "malloc tuned by the user (MALLOC_TRIM_THRESHOLD_)"),
    ({"MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_TOP_PAD_": "1"},
     "malloc tuned by the user (MALLOC_MMAP_THRESHOLD_, MALLOC_TOP_PAD_)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
     "malloc tuned by the user (GLIBC_TUNABLES)"),
])
def test_user_settings_win(env, reason):
    assert _malloc.tuning_wanted(env) == (False, reason)


@pytest.mark.skipif(not GLIBC, reason="the settings exist on glibc only")
def test_wanted_by_default_on_glibc():
    assert _malloc.tuning_wanted({}) == (True, "")
    assert _malloc.tuning_wanted({"SPARSEKIT_MALLOC_TUNING": "1",
                                  "GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"}) == (True, "")


def test_not_glibc(monkeypatch):
    monkeypatch.setattr(_malloc.platform, "libc_ver", lambda: ("", ""))
    assert _malloc.tuning_wanted({}) == (False, "not glibc")


def test_user_env_respected_in_process():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    code = ("import json, sparsekit._cython; from sparsekit._cython._malloc import malloc_tuning;"
            " print(json.dumps(malloc_tuning()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert json.loads(out) == {"applied": False,
                               "reason": "malloc tuned by the user (MALLOC_TRIM_THRESHOLD_)"}
