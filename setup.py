"""Build of jaxcnn's native CPU kernels (csrc/) against the XLA FFI headers that jaxlib ships.

Everything else about the package is in pyproject.toml. The kernels are an ordinary shared
library (loaded with ctypes and registered with ``jax.ffi``), built as a setuptools extension
so that ``pip install -e .`` compiles it. If it cannot be built, installation stops with the
compiler's error; set JAXCNN_BUILD_NATIVE=0 to install without it (jaxcnn then warns once and
uses XLA's lowerings).
"""

import os
import pathlib

from setuptools import Extension, setup


def _ffi_include() -> str:
    import jaxlib  # a build requirement (pyproject.toml), for xla/ffi/api/ffi.h

    inc = pathlib.Path(jaxlib.__file__).parent / "include"
    if not (inc / "xla" / "ffi" / "api" / "ffi.h").exists():
        raise RuntimeError(f"jaxlib {jaxlib.__version__} has no XLA FFI headers under {inc}")
    return str(inc)


ext_modules = []
if os.environ.get("JAXCNN_BUILD_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off"):
    ext_modules.append(Extension(
        "jaxcnn._native",
        sources=["csrc/depthwise.cc"],
        include_dirs=[_ffi_include()],
        language="c++",
        # Portable baseline code; the hot loop is also compiled for AVX2 and AVX-512 and chosen
        # at run time (see csrc/depthwise.cc), so no -march here.
        extra_compile_args=["-std=c++17", "-O3", "-Wno-attributes", "-Wno-return-type"],
    ))

setup(ext_modules=ext_modules)
