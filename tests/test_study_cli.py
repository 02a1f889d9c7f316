"""`jaxcnn study`: a user's model (--models-from) swept over width x depth, checked, trained, resumed, sharded.

The references: the members are the product of the axes (counted by hand below); every member's
record holds exactly the parameters `jaxcnn.summary` gives for that member built directly; a
rerun trains nothing; two shards plus --plot-only give byte-for-byte the table of one process.
"""

import json
import textwrap
from pathlib import Path

import pytest

from jaxcnn import models
from jaxcnn.cli import main
from jaxcnn.summary import summary

USER_MODELS = textwrap.dedent('''
    """A user's own family, registered from outside the package."""
    from jaxcnn import Conv, Dense, GlobalAvgPool, ReLU, Sequential
    from jaxcnn.models import register_model


    @register_model(input_shape=(8, 8, 1), num_classes=10)
    def tiny_study_net(num_classes: int = 10, width: float = 1.0, depth: int = 1):
        """Tiny test family: depth 3x3 convs of 8*width channels, GAP, dense."""
        if depth < 1:
            raise ValueError(f"tiny_study_net depth={depth}: depth must be >= 1")
        layers = []
        for _ in range(depth):
            layers += [Conv(max(1, round(8 * width)), 3, 1, 1), ReLU()]
        return Sequential([*layers, GlobalAvgPool(), Dense(num_classes, keep_width=True)])
''')

GRID = ["--vary", "width=0.5,1", "--vary", "depth=1,2"]
RECIPE = ["--data", "digits", "--epochs", "1", "--num-seeds", "2", "--batch", "64", "--compile-options", "xla",
          "--quiet"]


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_models.py"
    path.write_text(USER_MODELS)
    yield path
    # leave the registry as the other tests see it (test_readme checks every registered name is documented)
    from jaxcnn.models import registry

    for name in registry._LOADED.pop(str(path.resolve()), []):
        registry.REGISTRY.pop(name, None)


def _study(user_file: Path, out: Path, *extra: str) -> int:
    return main(["study", "tiny_study_net", "--models-from", str(user_file), *GRID, *RECIPE, "--out", str(out),
                 *extra])


def test_a_user_model_is_listed_and_summarised_through_models_from(user_file, capsys):
    assert main(["models", "--models-from", str(user_file)]) == 0
    listed = capsys.readouterr().out
    assert "tiny_study_net" in listed and "Tiny test family" in listed
    assert main(["summary", "tiny_study_net", "--models-from", str(user_file), "--option", "depth=2",
                 "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    # conv 1->8 (72 + 8), conv 8->8 (576 + 8), dense 8->10 (80 + 10)
    assert totals["learnable_params"] == 80 + 584 + 90


def test_invalid_members_are_refused_before_anything_trains(user_file, tmp_path, capsys):
    out = tmp_path / "bad"
    rc = main(["study", "tiny_study_net", "--models-from", str(user_file), "--vary", "depth=0,1,-1",
               *RECIPE, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "tiny_study_net,depth=0: tiny_study_net depth=0: depth must be >= 1" in err
    assert "tiny_study_net,depth=-1:" in err and "Traceback" not in err
    assert not (out / "runs").exists()  # nothing trained, not even the valid member
    assert main(["study", "tiny_study_net", "--models-from", str(user_file), "--vary", "nope=1,2", *RECIPE,
                 "--out", str(out)]) == 2
    assert "has no option nope" in capsys.readouterr().err


def test_grid_trains_every_member_writes_every_output_skips_on_rerun_and_shards_agree(user_file, tmp_path,
                                                                                       capsys):
    one = tmp_path / "one"
    assert _study(user_file, one) == 0
    records = [json.loads(line) for line in (one / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == [
        "tiny_study_net/0.5,depth=1", "tiny_study_net/0.5,depth=2", "tiny_study_net/1,depth=1",
        "tiny_study_net/1,depth=2"]
    for r in records:
        width, depth = float(r["model"].split("/")[1]), r["options"]["depth"]
        built = models.get(f"tiny_study_net/{width:g}", num_classes=10, depth=depth)
        assert r["learnable_params"] == summary(built, (8, 8, 1)).totals.learnable_params
        assert len(r["accuracies"]) == 2 and r["train_examples"] > 0 and r["code"]
    for name in ("table.md", "comparisons.md", "results.csv", "accuracy_vs_params.png", "accuracy_vs_macs.png",
                 "accuracy_vs_time.png", "curves.png", "heatmap.png"):
        assert (one / name).stat().st_size > 0, name
    cells = json.loads((one / "heatmap.cells.json").read_text())
    assert (cells["x"], cells["y"], len(cells["cells"])) == ("width", "depth", 4)
    comparisons = (one / "comparisons.md").read_text()
    assert "width 0.5 -> 1 at depth=1" in comparisons and "depth 1 -> 2 at width=1" in comparisons
    capsys.readouterr()

    stamp = {p: p.stat().st_mtime_ns for p in one.glob("runs/*/record.json")}
    loud = [a for a in RECIPE if a != "--quiet"]
    assert main(["study", "tiny_study_net", "--models-from", str(user_file), *GRID, *loud, "--out", str(one)]) == 0
    assert capsys.readouterr().err.count("already in") == 4  # the rerun trains nothing
    assert {p: p.stat().st_mtime_ns for p in one.glob("runs/*/record.json")} == stamp

    two = tmp_path / "two"
    assert _study(user_file, two, "--shard", "1/2") == 0
    assert _study(user_file, two, "--shard", "2/2") == 0
    assert _study(user_file, two, "--plot-only") == 0
    strip = [line.rsplit("|", 2)[0] for line in (one / "table.md").read_text().splitlines()]  # train s differs
    assert [line.rsplit("|", 2)[0] for line in (two / "table.md").read_text().splitlines()] == strip


def test_a_study_file_sets_per_model_recipes_and_the_command_line_wins(user_file, tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(textwrap.dedent('''
        models = ["tiny_study_net"]
        data = "digits"
        [vary]
        depth = [1, 2]
        [recipe]
        epochs = 3
        lr = 0.1
        [model.tiny_study_net]
        recipe = {epochs = 2}
    '''))
    out = tmp_path / "file"
    assert main(["study", "--file", str(study), "--models-from", str(user_file), "--epochs", "1", "--num-seeds", "1",
                 "--compile-options", "xla", "--quiet", "--out", str(out), "--only", "tiny_study_net,depth=1"]) == 0
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["recipe"]["epochs"] == 1 and rec["recipe"]["lr"] == 0.1  # flag > model section > [recipe]
    assert rec["variant"] == "tiny_study_net,depth=1"
    study.write_text("models = [1]\nbogus = 2\n")
    assert main(["study", "--file", str(study), "--out", str(out)]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, params", [
    (["resnet_cifar", "--option", "depth=56"], 853_018),                      # He et al. 2015, option A
    (["resnet_cifar", "--option", "depth=20", "--option", "shortcut=B"], 272_474),
    (["wrn/10", "--option", "depth=28"], 36_479_194),                        # WRN-28-10
    (["resnet18k", "--option", "k=64"], 11_171_146),
    (["efficientnet_b0"], 5_288_548),
])
def test_summary_command_gives_the_published_counts_of_the_scaling_families(argv, params, capsys):
    assert main(["summary", *argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["learnable_params"] == params
