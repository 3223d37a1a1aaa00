"""Build the Cython CPU kernels.

Compiler directives are set once here rather than in file headers, so every kernel module is
compiled the same way.  The C++ the kernels call lives in ``sparsekit/_cython/*.hh``, found on
the include path and listed as dependencies, so editing a header rebuilds the modules.  OpenMP
is used when the compiler accepts ``-fopenmp``; otherwise the kernels still build, serially,
and the build says so loudly.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MOD_NAMES = [
    "sparsekit._cython.spmm",
    "sparsekit._cython.sddmm",
    "sparsekit._cython.select",
    "sparsekit._cython.sampling",
    "sparsekit._cython.rebuild",
    "sparsekit._cython.elementwise",
    "sparsekit._cython.mlp",
]
#: Modules of integer and selection code (SET's prune, the sampler, the CSR rebuild).
TOPOLOGY_MODULES = {"sparsekit._cython.select", "sparsekit._cython.sampling",
                    "sparsekit._cython.rebuild"}
KERNEL_DIR = Path("sparsekit", "_cython")
HEADERS = sorted(str(p) for p in KERNEL_DIR.glob("*.hh"))
#: Where Cython writes the C++ it generates: one folder per Python and NumPy, because that C++
#: fits the NumPy it was generated against alone (NumPy 2.5's declarations emit calls that
#: older NumPy headers lack), and Cython only regenerates a file older than its sources.  A
#: checkout built for two interpreters (nox's sessions, say) would otherwise compile one's C++
#: against the other's headers.
CYTHON_DIR = Path("build", f"cython-cp{sys.version_info[0]}{sys.version_info[1]}"
                           f"-numpy{numpy.__version__}")

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

# Reassociation lets GCC vectorise the float dot products of the SDDMM; the summation order is
# fixed at compile time, so results still do not depend on the thread count.
BASE_FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
              "-fno-trapping-math", "-ffp-contract=fast", "-std=c++17"]


def _compiler_accepts(compiler, flags):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "probe.cpp")
        src.write_text("#include <omp.h>\nint main(){return omp_get_max_threads() < 0;}\n"
                       if "-fopenmp" in flags else "int main(){return 0;}\n")
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, str(Path(tmp, "probe")), extra_postargs=flags)
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        # pip gives no -j: compile the modules in parallel on every core unless told otherwise
        # (SPARSEKIT_BUILD_JOBS=1 for a serial build); with one core it took over 3 minutes.
        if not self.parallel:
            jobs = os.environ.get("SPARSEKIT_BUILD_JOBS")
            if not jobs:
                jobs = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count())
            self.parallel = max(int(jobs or 1), 1)

    def build_extensions(self):
        compile_flags = list(BASE_FLAGS)
        link_flags = []
        # -march=native is right for a source build that runs where it was built; set
        # SPARSEKIT_PORTABLE=1 when building a wheel for other machines.
        if not os.environ.get("SPARSEKIT_PORTABLE") and _compiler_accepts(
            self.compiler, ["-march=native"]
        ):
            compile_flags.append("-march=native")
        if _compiler_accepts(self.compiler, ["-fopenmp"]):
            compile_flags.append("-fopenmp")
            link_flags.append("-fopenmp")
        else:
            banner = "*" * 78
            sys.stderr.write(
                f"\n{banner}\nWARNING: the compiler does not accept -fopenmp; sparsekit's CPU "
                f"kernels will run on ONE thread.\nInstall an OpenMP-capable compiler (gcc, or "
                f"clang with libomp) and rebuild for multithreaded kernels.\n{banner}\n\n"
            )
        # The topology kernels' loops are vectorised by GCC, not written with vector types, and
        # GCC 12 tunes some AVX-512 CPUs to 256-bit vectors (an Intel Xeon guest: rocketlake).
        # Asking for 512 bits made SET's prune, sampling and rebuild 25, 28 and 11 % faster
        # there at 10 000^2, 1 % (integer and selection code: the same results at any width).
        # The other modules keep the compiler's choice: their explicit kernels use 512-bit
        # vectors already, and a vectorised float sum's order must not move.
        wide = ("-march=native" in compile_flags
                and _compiler_accepts(self.compiler, ["-mprefer-vector-width=512"]))
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags + (
                ["-mprefer-vector-width=512"] if wide and ext.name in TOPOLOGY_MODULES else [])
            ext.extra_link_args = link_flags
        super().build_extensions()


def make_extensions():
    exts = []
    for name in MOD_NAMES:
        path = Path(*name.split(".")).with_suffix(".pyx")
        exts.append(
            Extension(
                name,
                [str(path)],
                include_dirs=[numpy.get_include(), str(KERNEL_DIR)],
                depends=HEADERS,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                language="c++",
            )
        )
    return cythonize(exts, compiler_directives=COMPILER_DIRECTIVES, quiet=True,
                     build_dir=str(CYTHON_DIR))


setup(ext_modules=make_extensions(), cmdclass={"build_ext": BuildExt})
