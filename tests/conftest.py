"""Shared pytest setup: import paths and the float64 fixture."""

import sys
from pathlib import Path

import jax
import pytest

_TESTS = Path(__file__).resolve().parent
for _p in (_TESTS.parent, _TESTS):  # the repo root (jaxcnn) and tests/ (the zoo helper module)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture
def x64():
    """Run the test with 64-bit types enabled, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield
