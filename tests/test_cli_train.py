"""`jaxcnn train` end to end on tiny data, and its one-line errors."""

import json
import subprocess
import sys

import pytest

from jaxcnn.cli import main


def test_train_writes_result_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "allconv6_1_bn", "--data", "synthetic:256", "--input-size", "16", "--epochs", "2",
            "--batch", "32", "--num-seeds", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "over 2 seed(s)" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["seeds"] == [0, 1] and len(result["test_accuracy"]) == 2
    assert result["config"]["crop_pad"] == 2 and result["config"]["flip"] is True  # synthetic is not digits
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # resuming a finished run trains nothing more and reports the same accuracies
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]


def test_train_errors_are_one_line_exit_2(tmp_path):
    cases = [
        (["--data", f"cifar10:{tmp_path / 'missing'}"], "missing"),
        (["--data", "nosuch"], "unknown data source"),
        (["--option", "stem_stride"], "KEY=VALUE"),
        (["--option", "nosuch=1"], "nosuch"),
    ]
    for extra, needle in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "jaxcnn.cli", "train", "allconv6_1", "--out", str(tmp_path / "o"), *extra],
            capture_output=True, text=True,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_library_errors_name_arguments_and_the_cli_prints_flags():
    from jaxcnn.cli import as_flags
    from jaxcnn.data import DataError, load

    with pytest.raises(DataError) as err:
        load("cifar10")  # the library speaks of its own argument...
    assert "`spec=cifar10` needs a path" in str(err.value)
    assert as_flags(str(err.value)).startswith("--data cifar10 needs a path")  # ...the CLI of its flag
    assert as_flags("pass `resume=True`, `epochs=3` or `batch=8`; `other=1` stays") == \
        "pass --resume, --epochs 3 or --batch 8; `other=1` stays"
