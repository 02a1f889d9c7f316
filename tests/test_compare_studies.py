"""`jaxcnn compare` of finished studies, and a study logged to MLflow/TensorBoard (one run per member, grouped).

References: SciPy's Welch t interval and exact permutation test for the comparisons of records written
through the record writer API; MLflow's search API and TensorBoard's EventAccumulator for a real tiny study.
"""

import json
import shutil
import textwrap

import numpy as np
import pytest

from jaxcnn.cli import main
from jaxcnn.study.record import StudyRecord, write_record, write_results


@pytest.fixture(scope="module", autouse=True)
def local_mlflow_store():
    """The tests' MLflow runs go to the run folders' own stores, whatever the environment names."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def _record(variant, accuracies, *, family="net", params=1000, macs=5000, options=None, lr=0.05):
    acc = [float(a) for a in accuracies]
    return StudyRecord(family=family, variant=variant, label="", learnable_params=params, macs=macs,
                       input_shape=[8, 8, 1], accuracies=acc, mean_accuracy=float(np.mean(acc)),
                       std_accuracy=float(np.std(acc)), test_accuracy_per_epoch=[acc], train_seconds=1.0,
                       options=dict(options or {}), seeds=list(range(len(acc))), epochs=1,
                       recipe={"lr": lr, "epochs": 1}, dataset="digits")


@pytest.fixture
def two_studies(tmp_path):
    a, b = tmp_path / "bn", tmp_path / "no_bn"
    for folder in (a, b):
        folder.mkdir()
    write_results(a, [_record("net/0.5", [0.81, 0.83, 0.80, 0.84], params=500, options={"bn": True}),
                      _record("net/1", [0.90, 0.91, 0.89, 0.92], params=2000, options={"bn": True})])
    write_results(b, [_record("net/0.5", [0.70, 0.74, 0.73, 0.69], params=480, options={"bn": False}, lr=0.1)])
    # a member finished by a shard but not merged into results.jsonl yet still counts
    (b / "runs" / "net_w2").mkdir(parents=True)
    write_record(b / "runs" / "net_w2" / "record.json", _record("net/2", [0.95, 0.96], params=8000))
    return a, b


def test_compare_joins_the_studies_and_gives_welch_intervals_of_matching_members(two_studies, tmp_path, capsys):
    stats = pytest.importorskip("scipy.stats")
    a, b = two_studies
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    rows = report["comparisons"]
    assert [r["variant"] for r in rows] == ["net/0.5"]  # the only variant in both
    r = rows[0]
    acc_a, acc_b = [0.81, 0.83, 0.80, 0.84], [0.70, 0.74, 0.73, 0.69]
    ci = stats.ttest_ind(acc_b, acc_a, equal_var=False).confidence_interval(0.95)
    assert r["diff"] == pytest.approx(np.mean(acc_b) - np.mean(acc_a), abs=1e-12)
    assert (r["low"], r["high"]) == (pytest.approx(ci.low, abs=1e-9), pytest.approx(ci.high, abs=1e-9))
    exact = stats.permutation_test((acc_b, acc_a), lambda x, y: np.mean(x) - np.mean(y), n_resamples=np.inf,
                                   permutation_type="independent", alternative="two-sided")
    assert r["permutation_p"] == pytest.approx(exact.pvalue, abs=1e-12)
    assert r["exceeds_seed_noise"] is bool(ci.high < 0 or ci.low > 0) is True
    assert "bn: True -> False" in r["differs"] and "lr: 0.05 -> 0.1" in r["differs"]
    # one table with every member of both studies, the unmerged record included
    md = (out / "compare.md").read_text()
    members = md.split("## Members", 1)[1].split("## Matching", 1)[0]
    assert members.count("\n| bn | net/") == 2 and members.count("\n| no_bn | net/") == 2
    assert "| no_bn | net/2 |" in members
    assert "net/0.5" in printed and "bn: True -> False" in printed
    points = json.loads((out / "compare.points.json").read_text())["points"]
    assert sorted((p["study"], p["variant"], p["params"]) for p in points) == [
        ("bn", "net/0.5", 500), ("bn", "net/1", 2000), ("no_bn", "net/0.5", 480), ("no_bn", "net/2", 8000)]
    assert len({p["marker"] for p in points if p["study"] == "bn"} | {p["marker"] for p in points
                                                                       if p["study"] == "no_bn"}) == 2
    assert (out / "compare.png").stat().st_size > 1000


def test_compare_refuses_bad_input_in_one_line(two_studies, tmp_path, capsys):
    a, _ = two_studies
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, needle in ((["compare", str(a), "--out", str(tmp_path / "o")], "at least two"),
                         (["compare", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                          "does not exist"),
                         (["compare", str(a), str(empty), "--out", str(tmp_path / "o")], "no finished member"),
                         (["compare", str(a), str(a), "--out", str(tmp_path / "o")], "same study")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


USER_MODELS = textwrap.dedent('''
    from jaxcnn import Conv, Dense, GlobalAvgPool, ReLU, Sequential
    from jaxcnn.models import register_model


    @register_model(input_shape=(8, 8, 1), num_classes=10)
    def tiny_logged_net(num_classes: int = 10, width: float = 1.0):
        """Tiny test net: one 3x3 conv of 8*width channels, GAP, dense."""
        return Sequential([Conv(max(1, round(8 * width)), 3, 1, 1), ReLU(), GlobalAvgPool(),
                           Dense(num_classes, keep_width=True)])
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "logged_models.py"
    path.write_text(USER_MODELS)
    yield path
    from jaxcnn.models import registry

    for name in registry._LOADED.pop(str(path.resolve()), []):
        registry.REGISTRY.pop(name, None)


def test_a_logged_study_is_one_mlflow_run_per_member_under_the_study_and_compares_with_its_copy(
        user_file, tmp_path, capsys):
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "widths"
    argv = ["study", "tiny_logged_net", "--models-from", str(user_file), "--vary", "width=0.5,1", "--data", "digits",
            "--epochs", "1", "--num-seeds", "2", "--batch", "64", "--compile-options", "xla", "--quiet",
            "--log", "mlflow,tensorboard", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    client = mlflow.MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("widths")  # the study folder's name
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    by_name = {r.info.run_name: r for r in children}
    for rec in records:
        run = by_name[rec["variant"]]
        assert run.info.status == "FINISHED" and run.data.params["seeds"] == "0,1"
        for i, s in enumerate(rec["seeds"]):
            assert run.data.metrics[f"seed_{s}/test_accuracy"] == pytest.approx(rec["accuracies"][i], rel=1e-12)
        assert run.data.metrics["test_accuracy"] == pytest.approx(rec["mean_accuracy"], rel=1e-12)
    artifacts = {f.path for f in client.list_artifacts(parent[0].info.run_id, "report")}
    assert {"report/table.md", "report/results.jsonl", "report/accuracy_vs_params.png"} <= artifacts
    member = out / "tensorboard" / "tiny_logged_net_w0.5"
    ea = EventAccumulator(str(member / "seed_1"))
    ea.Reload()
    rec = next(r for r in records if r["variant"] == "tiny_logged_net/0.5")
    assert [e.value for e in ea.Scalars("test_accuracy")] == [pytest.approx(rec["accuracies"][1], rel=1e-6)]
    # a later shard or rerun finds the same parent run (its id is kept in the study folder)
    from jaxcnn.train.loggers import LogSpec

    assert LogSpec(["mlflow"]).parent_run(out) == parent[0].info.run_id
    assert len(client.search_runs([experiment.experiment_id])) == 3
    # the study beside a copy of itself: every matching member differs by exactly 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["compare", str(out), str(copy), "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["comparisons"]
    assert len(rows) == 2 and all(r["diff"] == 0 and r["low"] <= 0 <= r["high"] and not r["differs"] for r in rows)
