"""CUDA kernels and the GPU backend built on them (CuPy).

Layout (the mirror image of :mod:`sparsekit._cython`): ``spmm``, ``sddmm``, ``topology`` and
``elementwise`` have the functions of the CPU modules of the same names, with the same argument
order, and launch the kernels of ``kernels/*.cu`` (compiled at first use by NVRTC through
``cupy.RawModule``, one template instance per value and index type, cached per device);
``fallback`` holds the cuSPARSE / plain-CuPy products used for A/B comparisons; ``memory`` the
pool limit and the up-front memory estimate; ``backend`` the :class:`GpuBackend`.  Importing this
package does not import CuPy, and nothing here is compiled at build time.

Verification status
-------------------
GPU execution of this code has **not** been verified by its author: it was written in a session
without a GPU, and issue #5 exists to run it on one (the whole suite with
``SPARSEKIT_REQUIRE_GPU=1``, the 4 GiB cases, ``benchmarks/gpu.py``).  What was verified:

* every ``.cu`` file compiles with ``nvcc`` (CUDA 13.0) for sm_75 and sm_90, warnings as errors,
  with every template instance the backend names (``tests/test_cuda_compile.py``, run by CI
  where nvcc exists);
* the kernel sources, compiled for the host by a C++ compiler with a small emulation of the CUDA
  execution model (threads, warps with lock-step shuffles, atomics) and driven through this
  package's own Python wrappers with NumPy standing in for CuPy, pass the kernel, topology and
  bad-input tests against the SciPy oracle, and give bit-identical dropout masks, selections,
  samples and rebuilds to the CPU backend (``tests/test_cuda_emulated.py``);
* the CPU test suite stays green, and ``import sparsekit._cuda.backend`` works without CuPy.

What only a GPU can show — CuPy API behaviour at run time, NVRTC compilation, real concurrency,
memory limits, speed — is therefore unverified here.
"""
