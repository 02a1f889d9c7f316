"""Shared pytest setup: import paths and the float64 fixture."""

import os
import sys
import tempfile
from pathlib import Path

import jax
import pytest

_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS.parent, _TESTS):  # the repo root (jaxcnn) and tests/ (the zoo helper module)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# Compile-option tuning (jaxcnn.compile_options) compiles every training program two more times;
# the tests that are about it turn it on themselves. Its cache never touches the user's home.
os.environ.setdefault("JAXCNN_TUNE", "0")
os.environ.setdefault("JAXCNN_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcnn-test-cache-"))


@pytest.fixture
def x64():
    """Run the test with 64-bit types enabled, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield
