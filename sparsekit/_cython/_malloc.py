"""Keep freed heap memory for reuse, so that kernel outputs do not page-fault on every call.

Every product of the CPU backend returns a fresh array (an activation of 1000 x 128 floats is
512 KiB).  glibc's defaults hand such a block back to the kernel on ``free`` (the heap top is
trimmed past ``M_TRIM_THRESHOLD``, or the block was ``mmap``-ed), so the next call's output is
new memory again, and the kernel zero-fills it one 4 KiB page fault at a time.  Measured on a
2-core VM, 1000 x 1000 layer, batch 128: a forward product took 0.47 ms with glibc's defaults
and 0.21 ms with the settings below, a fused backward 1.13 ms vs 0.33 ms; the faults were 98 %
of all minor faults of that run (``benchmarks/malloc_ab.py``).

:func:`keep_freed_memory` raises both thresholds once per process: blocks below
``MMAP_THRESHOLD`` come from the heap, and up to ``TRIM_THRESHOLD`` bytes of free memory at
the top of the heap stay mapped for the next allocation instead of going back to the kernel.
Blocks above ``MMAP_THRESHOLD`` are still mapped and returned one by one.

It is skipped when the user tuned malloc already (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` tunable in
``GLIBC_TUNABLES``), when ``SPARSEKIT_MALLOC_TUNING=0``, and off glibc (musl, macOS, Windows:
their allocators differ and have no such switch).
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 64 << 20

_USER_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
_state: dict[str, object] = {}


def tuning_wanted(environ=None) -> tuple[bool, str]:
    """Whether :func:`keep_freed_memory` should change malloc's settings, and why not."""
    env = os.environ if environ is None else environ
    if env.get("SPARSEKIT_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False, "SPARSEKIT_MALLOC_TUNING=0"
    user = [name for name in _USER_ENV if name in env]
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return False, f"malloc tuned by the user ({', '.join(user)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False, "not glibc"
    return True, ""


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in effect (see the module)."""
    if "applied" in _state:
        return bool(_state["applied"])
    wanted, why = tuning_wanted()
    applied = False
    if wanted:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            # mallopt returns 1 on success; setting either threshold also stops glibc from
            # adjusting them itself (which it does only upwards, after big blocks are freed).
            applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                           and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            why = "" if applied else "mallopt refused"
        except (OSError, AttributeError) as exc:  # pragma: no cover - an unusual libc
            why = f"mallopt unavailable: {exc}"
    _state.update(applied=applied, reason=why)
    return applied


def malloc_tuning() -> dict:
    """``{"applied": bool, "reason": str}``: what :func:`keep_freed_memory` did here."""
    keep_freed_memory()
    return dict(_state)
