"""Shared pytest setup: import paths and the float64 fixture."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS.parent, _TESTS):  # the repo root (jaxcnn) and tests/ (the zoo helper module)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# Before jax starts a backend: the suite compiles at LLVM optimisation level 0 (tests/xla_test_flags.py says why)
from xla_test_flags import with_opt  # noqa: E402

os.environ["XLA_FLAGS"] = with_opt(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import pytest  # noqa: E402

# Compile-option tuning (jaxcnn.lowering.compile_options) compiles every training program two more times;
# the tests that are about it turn it on themselves. Its cache never touches the user's home.
os.environ.setdefault("JAXCNN_TUNE", "0")
# Likewise keeping training programs untraced (jaxcnn.lowering.program_cache) costs a cold run ~0.3 s (the export
# and SciPy's import by JAX's exported-call lowering) and gains only on a repeat; a kept program trains the same
# bits as a traced one (tests/test_program_cache.py), and the tests about it, and the CLI's repeated-run test,
# turn it on themselves.
os.environ.setdefault("JAXCNN_KEEP_PROGRAMS", "0")
os.environ.setdefault("JAXCNN_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcnn-test-cache-"))

# One persistent XLA compilation cache for the session, inherited by every process the tests start: a program
# that several tests compile in child processes (the same study member, the same training driver run again to
# resume) is compiled once and loaded from disk after. The cache keys on the program, its compile options and
# its devices, so what runs is unchanged; min time 0 keeps the many small programs of eager init too.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxcnn-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# this process too (jax, imported above, read its settings before): tests that rebuild a trainer for the same
# model and recipe (one seed alone, then under vmap) compile its programs once
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def x64():
    """Run the test with 64-bit types enabled, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield
