"""Step decay by a given factor and warm-up (issue 24: WRN's x0.2 at 60/120/160 of 200), and old study records."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from jaxcnn.train import TrainConfig
from jaxcnn.train.optimizers import learning_rate

ROOT = Path(__file__).resolve().parent.parent


def test_step_decay_by_a_given_factor_at_given_epochs():
    cfg = TrainConfig(epochs=200, lr=0.1, schedule="multistep", milestones=(60, 120, 160), milestone_factor=0.2).check()
    lr = learning_rate(cfg, steps_per_epoch=10)
    at = {e: float(lr(e * 10)) for e in (0, 59, 60, 119, 120, 159, 160, 199)}
    assert at == pytest.approx({0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008,
                                199: 0.0008})
    default = learning_rate(TrainConfig(lr=0.1, schedule="multistep", milestones=(2,)), 5)  # x0.1 unless told
    assert float(default(9)) == pytest.approx(0.1) and float(default(10)) == pytest.approx(0.01)


def test_warmup_then_step_decay_counts_epochs_from_the_start():
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="multistep", milestones=(5,), milestone_factor=0.5, warmup_epochs=2)
    lr = learning_rate(cfg, steps_per_epoch=4)
    assert [float(lr(s)) for s in (0, 4, 8, 19, 20, 39)] == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.05, 0.05])


@pytest.mark.parametrize("bad,message", [({"milestone_factor": 0.0}, "`milestone_factor` must be a positive number"),
                                         ({"milestones": (0,)}, "`milestones` must be positive ints")])
def test_bad_step_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad).check()


def test_a_record_written_before_step_factor_existed_still_matches_its_recipe(tmp_path):
    from jaxcnn.study import Member, StudyError
    from jaxcnn.study.record import StudyRecord
    from jaxcnn.study.runner import _check_same_run

    line = (ROOT / "results" / "width_study" / "results.jsonl").read_text().splitlines()[0]
    rec = StudyRecord.from_json(json.loads(line), "results.jsonl:1")
    assert "milestone_factor" not in rec.recipe  # the committed reference predates the field
    recipe = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in rec.recipe.items()})
    task = SimpleNamespace(name=rec.dataset, in_shape=tuple(rec.input_shape))
    member = Member(rec.family, rec.variant, rec.label, rec.options or {}, recipe)
    _check_same_run(rec, member, task, tmp_path)  # same run: no error
    other = Member(rec.family, rec.variant, rec.label, rec.options or {}, TrainConfig(**{
        **{k: tuple(v) if isinstance(v, list) else v for k, v in rec.recipe.items()}, "milestone_factor": 0.2}))
    with pytest.raises(StudyError, match="another recipe"):
        _check_same_run(rec, other, task, tmp_path)


def test_fill_new_fields_adds_only_fields_this_run_compares_at_their_defaults():
    from jaxcnn.train.config import fill_new_fields

    now = {"config.lr": 0.2, "config.milestone_factor": 0.2, "data": "digits"}  # config.epochs: not compared
    got = fill_new_fields({"config.lr": 0.2, "data": "digits"}, now, prefix="config.")
    assert got == {"config.lr": 0.2, "config.milestone_factor": TrainConfig().milestone_factor, "data": "digits"}
    assert fill_new_fields({"lr": 0.3}, {"lr": 0.1, "batch": 64}) == {"lr": 0.3, "batch": TrainConfig().batch}


def test_records_written_under_the_old_names_read_under_the_new_ones():
    from jaxcnn.train.config import fill_new_fields

    old = {"seeds": 3, "mode": "step", "schedule": "step", "step_epochs": [5], "step_factor": 0.2, "lr": 0.1}
    assert fill_new_fields(old, {}) == {"num_seeds": 3, "loop": "host", "schedule": "multistep", "milestones": [5],
                                        "milestone_factor": 0.2, "lr": 0.1}
    assert fill_new_fields({"config.mode": "epoch", "config.seeds": 2, "data.mode": "step"}, {}, prefix="config.") \
        == {"config.loop": "device", "config.num_seeds": 2, "data.mode": "step"}  # only config.* is a recipe
    # a value that was never renamed passes through, and today's names are left alone
    assert fill_new_fields({"loop": "device", "schedule": "cosine"}, {}) == {"loop": "device", "schedule": "cosine"}
