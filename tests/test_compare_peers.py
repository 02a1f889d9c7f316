"""experiments/compare_peers.py: case parsing, and a --quick run against Flax and PyTorch."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "compare_peers.py"
FRAMEWORKS = ["jaxcnn", "flax", "torch-eager-cl", "torch-eager", "torch-eager-cl-hostmem"]
RATIOS = ["jaxcnn/torch-eager-cl", "jaxcnn/torch-eager", "jaxcnn/torch-eager-cl-hostmem", "jaxcnn/flax"]


def _module():
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))  # its sibling peer_torch.py, as when run as a script
    spec = importlib.util.spec_from_file_location("compare_peers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_peers"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_parse_case_spellings_and_errors():
    cp = _module()
    assert cp.parse_case("allconv6:32:128") == cp.Case("allconv6", 1.0, 32, 128)
    assert cp.parse_case("mbv1_0.25:224:8") == cp.Case("mbv1", 0.25, 224, 8)
    assert cp.parse_case("mobilenet_v1/0.5:32:4").spec == "mbv1_0.5:32:4"
    assert cp.parse_case("mobilenet_v1:32:4").alpha == 1.0
    for bad in ("allconv6:32", "vgg16:32:8", "allconv6:x:8", "allconv6:16:8", "mbv1_abc:32:8", "allconv6:32:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            cp.parse_case(bad)


def test_missing_peers_are_skipped_with_a_reason(monkeypatch):
    cp = _module()
    for name in ("flax", "flax.linen", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    ok, skipped, _ = cp.available(FRAMEWORKS)
    assert ok == ["jaxcnn"]
    assert "pip install flax" in skipped["flax"] and "torch" in skipped["torch-eager-cl"]
    result = {"images_per_s": 100.0, "first_call_s": 1.0, "rep_spread": 0.1, "max_other_load_cores": None,
              "contaminated_reps": 0}
    report = {"frameworks": ok, "skipped": skipped, "device": {"backend": "cpu", "jax": "x"},
              "settings": {"reps": 1, "min_seconds": 0.1, "torch_threads": None},
              "rows": [{"case": "allconv6:32:4", "model": "allconv6", "input": 32, "batch": 4, "measure": "train",
                        "param_count": 557_898, "results": {"jaxcnn": result},
                        "ratios": dict.fromkeys(RATIOS)}]}
    md = cp.markdown(report)
    assert "| allconv6 | 32x32 | 4 | train | 557,898 | 100 | — | — | — | — |" in md
    assert "skipped flax:" in md


@pytest.mark.slow
def test_quick_run_reports_every_framework(tmp_path):
    pytest.importorskip("flax.linen", reason="the Flax peer needs flax: pip install flax")
    pytest.importorskip("torch", reason="the PyTorch peers need torch: pip install -e '.[torch]'")
    out_json, out_md = tmp_path / "peers.json", tmp_path / "peers.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--cases", "allconv6:32:4", "--measure", "train",
         "--reps", "1", "--retries", "0",
         "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert report["frameworks"] == FRAMEWORKS
    assert report["skipped"] == {}
    assert report["settings"]["quick"] is True and report["settings"]["reps"] == 1
    (row,) = report["rows"]
    assert (row["model"], row["input"], row["batch"], row["measure"]) == ("allconv6", 32, 4, "train")
    assert set(row["results"]) == set(FRAMEWORKS)
    for fw, r in row["results"].items():
        assert r["images_per_s"] > 0, fw
        assert r["first_call_s"] > 0 and r["calls_per_rep"] >= 1 and len(r["rep_step_ms"]) == 1, fw
    assert set(row["ratios"]) == set(RATIOS)
    for name, value in row["ratios"].items():
        assert value is not None and value > 0, name
    assert row["ratios"]["jaxcnn/flax"] == pytest.approx(
        row["results"]["jaxcnn"]["images_per_s"] / row["results"]["flax"]["images_per_s"])
    counts = {fw: r["param_count"] for fw, r in row["results"].items()}
    assert counts == row["param_counts"] and set(counts.values()) == {557_898}, counts
    md = out_md.read_text()
    assert "jaxcnn/torch-eager-cl" in md and "557,898" in md
    assert "557,898" in proc.stdout  # the parameter counts are printed


@pytest.mark.slow
def test_quick_run_of_jaxcnn_against_torch_runs_where_flax_is_missing(tmp_path):
    # CI has no flax: this keeps the script itself (its timing harness and report) exercised there
    pytest.importorskip("torch", reason="the PyTorch peers need torch: pip install -e '.[torch]'")
    out_json = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--cases", "allconv6:32:4", "--measure", "train", "--reps", "2",
         "--retries", "0", "--frameworks", "jaxcnn,torch-eager-cl,torch-eager-cl-hostmem", "--json", str(out_json)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    (row,) = report["rows"]
    # PyTorch ran in processes of its own: the stock one never imported JAX (nor jaxcnn's malloc settings)
    workers = report["torch_workers"]
    assert set(workers) == {"glibc", "jaxcnn"} and workers["glibc"]["pid"] != workers["jaxcnn"]["pid"]
    assert workers["glibc"]["jax_imported"] is False and "glibc defaults" in workers["glibc"]["host_malloc"]
    assert workers["jaxcnn"]["jax_imported"] is True
    assert "own process" in row["results"]["torch-eager-cl"]["implementation"]
    for fw in ("jaxcnn", "torch-eager-cl", "torch-eager-cl-hostmem"):
        r = row["results"][fw]
        assert r["reps"] == 2 and len(r["rep_step_ms"]) == 2 and r["step_ms_low"] <= r["step_ms_median"]
    assert row["ratios"]["jaxcnn/torch-eager-cl"] == pytest.approx(
        row["results"]["jaxcnn"]["images_per_s"] / row["results"]["torch-eager-cl"]["images_per_s"])
