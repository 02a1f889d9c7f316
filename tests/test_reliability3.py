"""Issue 26 (reliability, third round): one test per defect, each failing on the code before its fix."""

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _record(variant: str, options: dict | None = None, params: int = 1):
    from jaxcnn.study.record import StudyRecord

    return StudyRecord("f", variant, "x", params, 1, [1, 1, 1], [0.5], 0.5, 0.0, [[0.5]], 1.0, options=options or {})


# ---------------------------------------------------------------------------------------------------------------
# Defect 4: silent wrong results


def test_d4_a_record_in_another_members_folder_is_refused(tmp_path):
    from jaxcnn.study import Member, StudyError, merge_results
    from jaxcnn.study.record import write_record

    out = tmp_path / "study"
    write_record(out / "runs" / "a" / "record.json", _record("a", params=10))
    write_record(out / "runs" / "b" / "record.json", _record("a", params=20))  # b's record edited to say "a"
    with pytest.raises(StudyError) as e:
        merge_results(out, [Member("f", "a", "x"), Member("f", "b", "x")])
    msg = str(e.value)
    assert "\n" not in msg and str(out / "runs" / "b" / "record.json") in msg and "runs/a, not runs/b" in msg
    assert not (out / "results.jsonl").exists()  # nothing merged from the wrong record


def test_d4_members_differing_only_in_options_get_their_own_folders_and_rows(tmp_path):
    from jaxcnn.study import Member, Task, merge_results, run_folder, run_study
    from jaxcnn.train import TrainConfig, TrainData

    assert run_folder("allconv6_1_bn", {}) == "allconv6_1_bn"  # members without options keep their folder
    assert run_folder("mobilenet_v1/0.25", None) == "mobilenet_v1_w0.25"
    a, b = run_folder("m", {"dropout": 0.25}), run_folder("m", {"dropout": 0.5})
    assert a != b and a.startswith("m__dropout=0.25_")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8), np.arange(48) % 2
    task = Task("tiny", TrainData(x[:32], y[:32], x[32:], y[32:], 2))
    recipe = TrainConfig(epochs=1, batch=16, mode="step", compile_options="xla")
    members = [Member("allconv6", "allconv6_1", "he", {"kernel_init": "he_normal"}, recipe),
               Member("allconv6", "allconv6_1", "glorot", {"kernel_init": "glorot_uniform"}, recipe)]
    out = tmp_path / "study"
    records = run_study(members, task, out, quiet=True)  # the second used to fail on the first one's checkpoint
    assert [r.options for r in records] == [{"kernel_init": "he_normal"}, {"kernel_init": "glorot_uniform"}]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(run_folder("allconv6_1", m.options)
                                                                      for m in members)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert [r.label for r in merge_results(out, members)] == ["he", "glorot"]
