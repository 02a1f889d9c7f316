"""Every on-disk reader against hostile and randomly corrupted files, each run in a child process.

A case passes when the reader loads the file correctly or refuses it with its one-line DataError/CheckpointError.
A crash (segfault: the child's return code), a hang (the child's time limit), any other exception (which the CLI
would show as a traceback) or memory beyond the stated cap fails the test. The cases are in fuzz_cases.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_DRIVER = Path(__file__).resolve().parent / "fuzz_cases.py"
MEMORY_CAP_MB = 256  # extra peak RSS a reader may use on these (< 2 MB) files, hostile ones included


def run_driver(reader: str, seed: int, n: int, timeout: float = 60.0) -> dict:
    """Run ``n`` cases of ``reader`` in a child process and return its report."""
    env = {**os.environ, "PYTHONPATH": str(_DRIVER.parent.parent)}
    proc = subprocess.run([sys.executable, str(_DRIVER), reader, str(seed), str(n)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{reader} crashed the process (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("reader, n", [("cifar_py", 400)])
def test_reader_survives_hostile_and_corrupt_files(reader, n):
    report = run_driver(reader, seed=16, n=n)
    assert report["bad"] == [], report["bad"][:10]
    assert report["counts"].get("refused", 0) > 0  # the hostile files were all refused (else listed in bad)
    assert report["peak_extra_mb"] < MEMORY_CAP_MB, report
    assert report["slowest_s"] < 10, report
