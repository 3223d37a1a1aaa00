"""CUDA kernels and the GPU backend built on them (CuPy).

Layout (the mirror image of :mod:`sparsekit._cython`): ``spmm``, ``sddmm``, ``select``,
``sampling``, ``rebuild`` and ``elementwise`` have the functions of the CPU modules of the same
names that exist on both sides, with the same argument order (less ``num_threads``), and launch
the kernels of ``kernels/*.cu`` (compiled at first use by NVRTC through ``cupy.RawModule``, one
template instance per value and index type, cached per device); ``fallback`` holds the cuSPARSE
products used for A/B comparisons; ``memory`` the pool limit and the up-front memory estimate;
``backend`` the :class:`GpuBackend`.  Importing this package does not import CuPy, and nothing
here is compiled at build time.

Verification status
-------------------
GPU execution of this code has **not** been verified by its author: it was written in a session
without a GPU, and issue #5 exists to run it on one (the whole suite with
``SPARSEKIT_REQUIRE_GPU=1``, the 4 GiB cases, ``benchmarks/gpu.py``).  What was verified:

* every ``.cu`` file compiles with ``nvcc`` (CUDA 13.0) for sm_75 and sm_90, warnings as errors,
  with every template instance the backend names (``tests/test_cuda_compile.py``, run by CI
  where nvcc exists), and with NVRTC 13.0 (the compiler ``cupy.RawModule`` uses) for
  compute_75 and compute_90, every name expression lowering to a kernel symbol (the same test
  file, where an NVRTC library is found; run here from a pip-installed ``nvidia-cuda-nvrtc``);
* the kernel sources, compiled for the host by a C++ compiler with a small emulation of the CUDA
  execution model (warps whose 32 lanes switch at every shuffle, grid-stride loops over a small
  grid, atomics) and driven through this package's own Python wrappers with NumPy standing in
  for CuPy, pass the kernel, topology and bad-input tests against the SciPy oracle, give
  bit-identical dropout masks, selections, samples and rebuilds to the CPU backend, and train a
  network end to end (SET, importance pruning, evaluation, a checkpoint read on the CPU) with the
  CPU backend's history (``tests/test_cuda_emulated.py``); every kernel argument is checked
  against the kernel's C++ parameter type there;
* the CPU test suite stays green, and ``import sparsekit._cuda.backend`` works without CuPy.

What only a GPU can show -- CuPy's API behaviour at run time (the emulation stands NumPy in for
it), cuSPARSE through ``cupyx`` (the ``"cusparse"``/``"cupy"`` product modes), concurrency
between warps, memory limits and speed -- is therefore unverified here.
"""
