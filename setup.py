"""Build the Cython kernels of fastconv.

Every ``fastconv/kernels/cython/*.pyx`` becomes one extension module, so adding a Cython
kernel module needs no change here. OpenMP is used where the compiler accepts
``-fopenmp``; otherwise the modules build serially (``prange`` runs as a plain loop).
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext


OPENMP_CHECK = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
PLAIN_CHECK = "int main(void){return 0;}\n"

#: Modules whose compiler-vectorised loops ran faster with 32-byte vectors on an AVX-512 core
#: (``-mprefer-vector-width=256``; the intrinsics in ``microkernels.pxd`` keep their width).
#: Winograd's transforms stream a dozen unaligned rows per loop, where an unaligned 64-byte
#: access always spans two cache lines: its layers took 0.85-1.04x the time (ResNet 64/128
#: forward and grad input 0.85-0.94x). Pooling and direct convolution measured mixed
#: (0.75-1.19x by layer).
NARROW_VECTOR_MODULES = ("fastconv.kernels.cython.winograd",)


def _compiler_accepts(compiler_cmd, flag, source):
    """True when ``source`` compiles and links with ``flag`` added."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "check_openmp.c")
        with open(path, "w") as f:
            f.write(source)
        result = subprocess.run(
            compiler_cmd + [flag, path, "-o", os.path.join(tmp, "check_openmp")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class build_ext(_build_ext):
    """Adds OpenMP and ``-march=native`` where the actual compiler accepts them.

    ``pip install .`` compiles on the machine that runs the kernels, so tuning for its
    instruction set (AVX2/FMA/AVX-512) is what the user wants; ``FASTCONV_PORTABLE=1``
    builds generic code instead (for wheels), ``FASTCONV_NO_OPENMP=1`` a serial build.
    """

    def build_extensions(self):
        compiler_cmd = list(getattr(self.compiler, "compiler_so", None) or ["cc"])[:1]
        openmp = not os.environ.get("FASTCONV_NO_OPENMP") and _compiler_accepts(
            compiler_cmd, "-fopenmp", OPENMP_CHECK)
        native = not os.environ.get("FASTCONV_PORTABLE") and _compiler_accepts(
            compiler_cmd, "-march=native", PLAIN_CHECK)
        narrow = native and _compiler_accepts(compiler_cmd, "-mprefer-vector-width=256", PLAIN_CHECK)
        if not openmp:
            print("fastconv: building the Cython kernels without OpenMP (single-threaded)",
                  file=sys.stderr)
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            if native:
                ext.extra_compile_args.append("-march=native")
            if narrow and ext.name in NARROW_VECTOR_MODULES:
                ext.extra_compile_args.append("-mprefer-vector-width=256")
        super().build_extensions()


def _extensions():
    extensions = []
    for pyx in sorted(glob.glob(os.path.join("fastconv", "kernels", "cython", "*.pyx"))):
        module = os.path.splitext(pyx)[0].replace(os.sep, ".")
        extensions.append(
            Extension(
                module,
                [pyx],
                include_dirs=[numpy.get_include()],
                # -O3 for auto-vectorisation of the inner loops; no -ffast-math, so that
                # NaN/Inf propagate as the API promises.
                extra_compile_args=["-O3"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
