"""Every on-disk reader against hostile and randomly corrupted files, run in a child process.

A case passes when the reader loads the file correctly or refuses it with its one-line DataError/CheckpointError.
A crash (segfault: the child's return code), a hang (the child's time limit), any other exception (which the CLI
would show as a traceback) or memory beyond the stated cap fails the test. The cases are in fuzz_cases.py: the
hand-crafted hostile files of each format first, then random byte flips, truncations and insertions of valid
files, and for the JSON readers (study record, results.jsonl, compile-options cache, safetensors header)
valid documents with one value replaced by a hostile one. All readers share one child process (one JAX import).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_DRIVER = Path(__file__).resolve().parent / "fuzz_cases.py"
READERS = ("cifar_py", "cifar_bin", "idx", "npz", "list", "checkpoint", "folder", "safetensors", "study_record",
           "results_jsonl", "compile_options_cache", "torch_state_dict")
CASES = 300  # per reader
MEMORY_CAP_MB = 64  # extra peak RSS a reader may use on these (< 1.1 MB) files, the hostile ones included
TIME_LIMIT_S = 120  # for the whole child process; a hang in any reader ends it


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(_DRIVER.parent.parent)}
    proc = subprocess.run([sys.executable, str(_DRIVER), ",".join(READERS), "16", str(CASES)], capture_output=True,
                          text=True, timeout=TIME_LIMIT_S, env=env)
    assert proc.returncode == 0, f"a reader crashed the process (rc {proc.returncode}): {proc.stderr[-2000:]}"
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["reader"]: r for r in found}


@pytest.mark.parametrize("reader", READERS)
def test_reader_survives_hostile_and_corrupt_files(reports, reader):
    report = reports[reader]
    assert sum(report["counts"].values()) == CASES
    assert report["bad"] == [], report["bad"][:10]
    assert report["counts"].get("refused", 0) > 0 and report["counts"].get("other", 0) == 0
    assert report["peak_extra_mb"] < MEMORY_CAP_MB, report
    assert report["slowest_s"] < 5, report


def test_a_compile_options_entry_with_a_number_beyond_float_range_is_ignored(tmp_path, monkeypatch, capsys):
    # found by the fuzz above: math.isfinite(10**400) raised OverflowError instead of the entry being ignored
    from jaxcnn.lowering import compile_options as co

    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    (tmp_path / "compile-options").mkdir()
    (tmp_path / "compile-options" / "k.json").write_text(
        '{"name": "xla", "seconds": {"xla": 1' + "0" * 400 + '}, "errors": {}, "rejected": {}}')
    assert co._read_cache("k", ("xla", "ynn-dot")) is None
    assert "ignoring compile-options cache entry" in capsys.readouterr().err
