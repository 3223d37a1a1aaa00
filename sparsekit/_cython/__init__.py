"""Cython + OpenMP CPU kernels and the CPU backend built on them."""

import os

# libgomp's default wait policy spins at every barrier; when another process holds one of the
# cores (a busy laptop, a shared server, CI), each parallel region then waits a scheduler slice
# and a training step became ~10x slower with 2 threads than with 1 (measured: 81-98 ms vs
# 9 ms per step at load average 3.5 on 2 cores).  Sleeping waits cost a little on an idle
# machine and remove that cliff.  libgomp reads this once, when the first OpenMP extension
# loads (just below); a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"

# Fresh kernel outputs would otherwise page-fault on every call (see _malloc.py).
from ._malloc import keep_freed_memory  # noqa: E402

keep_freed_memory()
