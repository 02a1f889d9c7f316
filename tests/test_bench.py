"""The benchmark's quick form produces a complete report (fields, not speed)."""

import dataclasses
import json

import pytest

from jaxcnn import bench
from jaxcnn.bench.rows import MEASURES, BenchRow
from jaxcnn.cli import main


def test_quick_report_has_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "mobilenet_v1/0.25", "--input-size", "32", "--batch", "4", "--quick", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) == {"device", "peaks", "rows", "warnings", "timing"}
    assert report["timing"]["interleaved"] is True
    assert report["device"]["backend"] == "cpu" and report["device"]["jax"]
    peak = report["peaks"]["float32"]
    assert peak["matmul_flops"] > 1e8 and peak["conv_flops"] > 1e8
    # best-of is at least the median; the peak is the larger best-of
    assert peak["matmul_flops"] >= peak["matmul_flops_median"] and peak["conv_flops"] >= peak["conv_flops_median"]
    assert peak["peak_flops"] == max(peak["matmul_flops"], peak["conv_flops"])
    names = {f.name for f in dataclasses.fields(BenchRow)}
    assert all(set(r) == names for r in report["rows"])  # each fact under one name, the typed row's
    assert [bench.BenchRow.from_dict(r).measure for r in report["rows"]] == ["train", "infer"]
    assert [(r["measure"], r["model"]) for r in report["rows"]] == [("train", "mobilenet_v1/0.25"),
                                                                 ("infer", "mobilenet_v1/0.25")]
    for r in report["rows"]:
        assert r["batch"] == 4 and r["input"] == "32x32x3" and r["dtype"] == "float32"
        assert r["step_ms_low"] <= r["step_ms_median"] <= r["step_ms_high"]
        assert abs(r["images_per_s"] - 4 / (r["step_ms_median"] / 1e3)) < 1e-6 * r["images_per_s"]
        factor = 6 if r["measure"] == "train" else 2  # training ~ 3 x forward FLOPs
        assert abs(r["achieved_flops"] - factor * r["macs_per_image"] * 4 / (r["step_ms_median"] / 1e3)) < 1.0
        assert 0 < r["percent_of_peak"] < 100 and r["first_call_s"] > r["compile_s"] > 0
        assert abs(r["percent_of_peak"] - 100 * r["achieved_flops"] / peak["peak_flops"]) < 1e-9
    assert "mobilenet_v1/0.25" in table and "peak float32" in table
    # the figure of experiments/benchmark.py, from a live report's typed rows and from its JSON read back
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib: pip install -e '.[experiments]'")
    from jaxcnn.study import plot

    typed = {**report, "rows": [BenchRow.from_dict(r) for r in report["rows"]]}
    for name, rep in (("typed", typed), ("json", report)):
        png, svg = plot.benchmark_speeds(rep, tmp_path / name)
        assert png.stat().st_size > 1000 and svg.read_text().lstrip().startswith("<?xml")


def test_time_calls_median_and_spread():
    import jax.numpy as jnp

    t = bench.time_calls(lambda x: x * 2.0, (jnp.ones(16),), reps=3, min_seconds=0.01)
    assert t.low <= t.median <= t.high and t.reps == 3 and t.calls_per_rep >= 1


def test_bfloat16_rows_run():
    r = bench.bench_model("allconv6_1", input_size=16, batch=2, dtype="bfloat16", measure="infer", quick=True)
    assert r.dtype == "bfloat16" and r.images_per_s > 0 and r.percent_of_peak is None


class _FakeMeter:
    """A load meter that reports the loads it is given, one per repetition attempt."""

    ok = True

    def __init__(self, loads):
        self.loads = list(loads)

    def start(self):
        pass

    def stop(self):
        return self.loads.pop(0)


def test_interleave_alternates_programs_and_redoes_disturbed_repetitions():
    from jaxcnn.bench.timing import Series, interleave

    order = []
    runs = {"a": lambda n: order.append(("a", n)), "b": lambda n: order.append(("b", n))}
    series = {"a": Series(calls_per_rep=3), "b": Series(calls_per_rep=1)}
    # rep 1: a quiet; b busy, busy again, then quiet (redone twice). rep 2: a busy three times (kept, the least
    # busy attempt), b quiet
    meter = _FakeMeter([0.0, 0.9, 0.8, 0.1, 0.7, 0.5, 0.6, 0.0])
    interleave(runs, series, 2, meter=meter, max_other_load=0.25, retries=2)
    assert order == [("a", 3), ("b", 1), ("b", 1), ("b", 1), ("a", 3), ("a", 3), ("a", 3), ("b", 1)]
    assert series["b"].redone_reps == 2 and series["b"].disturbed_reps == 0 and series["b"].rep_other_load == [0.1, 0.0]
    assert series["a"].redone_reps == 2 and series["a"].disturbed_reps == 1 and series["a"].rep_other_load == [0.0, 0.5]
    assert len(series["a"].rep_s) == len(series["b"].rep_s) == 2 and series["a"].max_other_load == 0.5


def test_an_unsteady_peak_is_flagged_in_the_record_and_the_table():
    from jaxcnn.bench.timing import Series

    steady, jumpy = Series(rep_s=[1.0, 1.05, 1.1]), Series(rep_s=[1.0, 2.3, 1.2])
    programs = {"matmul": (None, 0.0, 2e9, "512^3"), "conv": (None, 0.0, 1e9, "conv")}
    ok = bench._peak_record(programs, {"matmul": steady, "conv": steady})
    bad = bench._peak_record(programs, {"matmul": steady, "conv": jumpy})
    assert ok["steady"] and not bad["steady"] and ok["peak_flops"] == 2e9  # best-of: 2e9 FLOPs in 1.0 s
    assert abs(bad["conv_spread"] - 1.3 / 1.2) < 1e-12
    device = {"backend": "cpu", "device_kind": "cpu", "device_count": 1, "jax": "x"}
    text = bench.markdown({"rows": [], "peaks": {"float32": bad}, "device": device, "warnings": ["peak float32: w"]})
    assert "UNSTEADY" in text and "warning: peak float32: w" in text and "best-of" in text


def test_bench_lists_are_comma_separated_like_every_other_list_flag(capsys):
    from jaxcnn.cli import build_parser

    a = build_parser().parse_args(["bench", "allconv6", "--batch", "4,16", "--measure", "train", "--dtype",
                                   "float32,bfloat16"])
    assert a.batch == (4, 16) and a.measure == ("train",) and a.dtype == ("float32", "bfloat16")
    import pytest

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "allconv6", "--measure", "train,fly"])
    assert e.value.code == 2 and "--measure must be comma-separated values of train, infer" in capsys.readouterr().err


def test_cli_measures_are_the_benchs():
    from jaxcnn.cli import _MEASURES

    assert _MEASURES == MEASURES


def test_load_meter_counts_a_watched_helper_process_as_the_benchmarks_own():
    import subprocess
    import sys
    import time

    from jaxcnn.bench.timing import LoadMeter

    if not LoadMeter().ok:
        pytest.skip("/proc/stat is not readable here")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        blind, watching = LoadMeter(), LoadMeter(pids=[spin.pid])
        blind.start()
        watching.start()
        time.sleep(1.0)
        seen_blind, seen_watching = blind.stop(), watching.stop()
        with open(f"/proc/{spin.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    finally:
        spin.kill()
        spin.wait()
    # the spinning helper is "other load" to a meter that does not know it, and the benchmark's own to one
    # that does: the two readings of one interval differ by the helper's CPU (near one core; on a busy
    # 2-core CI machine it gets less, and the other pytest worker adds the same to both readings)
    assert int(rest[11]) + int(rest[12]) > 0
    assert seen_blind - seen_watching > 0.3, (seen_blind, seen_watching)
    assert seen_watching <= seen_blind
