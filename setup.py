"""Build of jaxcnn's native CPU kernels (csrc/) against the XLA FFI headers that jaxlib ships.

Everything else about the package is in pyproject.toml. The kernels are an ordinary shared
library (loaded with ctypes and registered with ``jax.ffi``), built as a setuptools extension
so that ``pip install -e .`` compiles it. If it cannot be built (no C++17 compiler, no FFI
headers), installation still succeeds without it, and jaxcnn warns once at run time and uses
XLA's lowerings; JAXCNN_BUILD_NATIVE=0 skips the build on purpose.
"""

import os
import pathlib
import sys

from setuptools import Extension, setup


def _ffi_include() -> str | None:
    try:
        import jaxlib  # a build requirement (pyproject.toml), for xla/ffi/api/ffi.h
    except ImportError:
        print("jaxcnn: jaxlib is not importable at build time; building without native kernels", file=sys.stderr)
        return None
    inc = pathlib.Path(jaxlib.__file__).parent / "include"
    if not (inc / "xla" / "ffi" / "api" / "ffi.h").exists():
        print(f"jaxcnn: no XLA FFI headers under {inc}; building without native kernels", file=sys.stderr)
        return None
    return str(inc)


ext_modules = []
include = _ffi_include()
if include and os.environ.get("JAXCNN_BUILD_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off"):
    ext_modules.append(Extension(
        "jaxcnn._native",
        sources=["csrc/depthwise.cc", "csrc/conv_wgrad.cc", "csrc/conv_fwd.cc", "csrc/batchnorm.cc"],
        depends=["csrc/parallel.h", "csrc/conv_common.h"],
        include_dirs=[include],
        language="c++",
        # Portable baseline code; the hot loop is also compiled for AVX2 and AVX-512 and chosen
        # at run time (see csrc/depthwise.cc, csrc/conv_wgrad.cc, csrc/conv_fwd.cc), so no -march here.
        extra_compile_args=["-std=c++17", "-O3", "-Wno-attributes", "-Wno-return-type", "-Wno-psabi"],
        optional=True,  # a failed compile leaves jaxcnn working on XLA's lowerings (it warns when used)
    ))

setup(ext_modules=ext_modules)
