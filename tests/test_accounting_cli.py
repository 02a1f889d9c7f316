"""``jaxcnn summary`` and ``jaxcnn models``: output, JSON, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcnn import models
from jaxcnn.cli import main
from jaxcnn.summary import summary

TOTAL_KEYS = ["learnable_params", "state_params", "macs", "flops", "activations", "train_memory_bytes"]


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``main(argv)``; argparse errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_table_has_totals(capsys):
    code, out, err = run_cli(["summary", "mnist_net"], capsys)
    assert code == 0 and err == ""
    assert "learnable parameters:   217,706" in out  # SPEC B
    assert "MACs per example:       1,589,760" in out
    for name in ("conv1", "pool1", "fc1", "fc2"):
        assert name in out


def test_summary_json_matches_summary(capsys):
    code, out, _ = run_cli(["summary", "mobilenet_v1", "--json", "--batch", "8", "--optimizer", "adam"], capsys)
    assert code == 0
    data = json.loads(out)
    ref = summary(models.get("mobilenet_v1"), (224, 224, 3), batch=8, optimizer="adam")
    for key in TOTAL_KEYS:
        assert data["totals"][key] == getattr(ref.totals, key), key
    assert data["totals"]["learnable_params"] == 4_231_976  # paper Table 6 (features.md 2.1)
    assert len(data["rows"]) == len(ref.rows)
    assert data["rows"][1]["name"] == ref.rows[1].name
    assert data["rows"][1]["macs"] == 10_838_016  # TF-slim Conv2d_0
    assert (data["batch"], data["optimizer"]) == (8, "adam")


def test_summary_options_change_the_model(capsys):
    code, out, _ = run_cli(
        ["summary", "allconv6", "--json", "--input-size", "64", "--in-channels", "1", "--num-classes", "5"], capsys)
    assert code == 0
    data = json.loads(out)
    ref = summary(models.get("allconv6", num_classes=5), (64, 64, 1))
    assert data["input_shape"] == [64, 64, 1]
    assert data["totals"]["output_shape"] == [5]
    assert {k: data["totals"][k] for k in TOTAL_KEYS} == {k: getattr(ref.totals, k) for k in TOTAL_KEYS}


def test_width_suffix_equals_width_option(capsys):
    _, by_suffix, _ = run_cli(["summary", "mobilenet_v1/0.5", "--json"], capsys)
    _, by_option, _ = run_cli(["summary", "mobilenet_v1", "--width", "0.5", "--json"], capsys)
    a, b = json.loads(by_suffix), json.loads(by_option)
    assert a["totals"] == b["totals"]
    assert a["totals"]["learnable_params"] == 1_331_592  # paper Table 6: 1.3M (features.md 2.1)


def test_leaves_only_table(capsys):
    code, out, _ = run_cli(["summary", "mobilenet_v1/0.25", "--leaves-only"], capsys)
    assert code == 0
    assert "block1 " not in out  # the container row is gone, its leaves remain
    assert "pw_bn" in out


@pytest.mark.parametrize("argv,names", [
    (["summary", "no_such_model"], ["no_such_model"]),
    (["summary", "allconv6", "--width", "0"], ["--width"]),
    (["summary", "allconv6", "--width", "-2"], ["--width"]),
    (["summary", "allconv6/-1"], ["allconv6/-1"]),
    (["summary", "allconv6/0"], ["allconv6/0"]),
    (["summary", "allconv6/abc"], ["allconv6/abc"]),
    (["summary", "allconv6/0.5", "--width", "0.25"], ["width"]),
    (["summary", "vgg16", "--input-size", "16"], ["MaxPool", "16x16x3"]),  # pool5 gets a 1x1 map
    (["summary", "vgg16", "--input-size", "1"], ["MaxPool", "1x1x3"]),
    (["summary", "mnist_net", "--input-size", "4"], ["Conv", "4x4x1"]),  # 5x5 VALID on 4x4
    (["summary", "allconv6", "--batch", "-3"], ["--batch"]),
    (["summary", "allconv6", "--batch", "0"], ["--batch"]),
    (["summary", "allconv6", "--input-size", "0"], ["--input-size"]),
    (["summary", "allconv6", "--num-classes", "0"], ["--num-classes"]),
    (["summary", "allconv6", "--optimizer", "lbfgs"], ["--optimizer"]),
])
def test_bad_input_is_one_line_exit_2(argv, names, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0]


def test_models_lists_every_registry_name(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert listed == models.names()


def _console_script():
    script = Path(sys.executable).with_name("jaxcnn")
    if not script.exists():
        pytest.skip("the jaxcnn console script is not installed next to this interpreter")
    return str(script)


def test_console_script_summary_and_error():
    script = _console_script()
    ok = subprocess.run([script, "summary", "spec_a_3conv", "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["totals"]["learnable_params"] == 12_938_336  # SPEC A model 2
    bad = subprocess.run([script, "summary", "vgg16", "--input-size", "16"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
