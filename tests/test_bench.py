"""The benchmark's quick form produces a complete report (fields, not speed)."""

import json

from jaxcnn import bench
from jaxcnn.cli import main


def test_quick_report_has_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "mobilenet_v1/0.25", "--input-size", "32", "--batch", "4", "--quick", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) == {"device", "peaks", "rows"}
    assert report["device"]["backend"] == "cpu" and report["device"]["jax"]
    peak = report["peaks"]["float32"]
    assert peak["matmul_flops"] > 1e8 and peak["conv_flops"] > 1e8
    assert [(r["mode"], r["model"]) for r in report["rows"]] == [("train", "mobilenet_v1/0.25"),
                                                                 ("infer", "mobilenet_v1/0.25")]
    for r in report["rows"]:
        assert r["batch"] == 4 and r["input"] == "32x32x3" and r["dtype"] == "float32"
        assert r["step_ms_low"] <= r["step_ms_median"] <= r["step_ms_high"]
        assert abs(r["images_per_s"] - 4 / (r["step_ms_median"] / 1e3)) < 1e-6 * r["images_per_s"]
        factor = 6 if r["mode"] == "train" else 2  # training ~ 3 x forward FLOPs
        assert abs(r["achieved_flops"] - factor * r["macs_per_image"] * 4 / (r["step_ms_median"] / 1e3)) < 1.0
        assert 0 < r["percent_of_peak"] < 100 and r["compile_s"] > 0
    assert "mobilenet_v1/0.25" in table and "peak float32" in table


def test_time_calls_median_and_spread():
    import jax.numpy as jnp

    t = bench.time_calls(lambda x: x * 2.0, (jnp.ones(16),), reps=3, min_seconds=0.01)
    assert t.low <= t.median <= t.high and t.reps == 3 and t.calls_per_rep >= 1


def test_bfloat16_rows_run():
    r = bench.bench_model("allconv6_1", input_size=16, batch=2, dtype="bfloat16", mode="infer", quick=True)
    assert r["dtype"] == "bfloat16" and r["images_per_s"] > 0
