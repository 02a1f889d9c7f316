"""Convergence marks and difference intervals of study results, against hand computations."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.study import Task
from jaxcnn.study.record import StudyRecord, read_results
from jaxcnn.study.stats import (
    best_other,
    closest,
    compare,
    comparisons_markdown,
    convergence,
    min_permutation_p,
    pareto_front,
    permutation_p,
    t_cdf,
    t_quantile,
    welch_interval,
)
from jaxcnn.train import TrainData

ROOT = Path(__file__).resolve().parent.parent

# two-sided 95 % critical values of Student's t, from any printed t table (3 decimals)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 8: 2.306, 10: 2.228, 20: 2.086, 30: 2.042}


@pytest.mark.parametrize("df,expected", sorted(T_TABLE.items()))
def test_t_quantile_matches_printed_table(df, expected):
    assert round(t_quantile(0.975, df), 3) == expected
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df), rel=1e-12)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_t_distribution_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)); df -> inf is the normal
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_t_quantile_agrees_with_scipy_at_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    for df in (1.3, 2.0, 2.94, 3.98, 7.5, 61.0):
        for p in (0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_welch_interval_by_hand():
    # equal spreads: se = sqrt(2 * 1e-4 / 3), df = 4, t(0.975, 4) = 2.776445
    w = welch_interval([0.95, 0.96, 0.97], [0.97, 0.98, 0.99])
    se = math.sqrt(2e-4 / 3)
    assert w["diff"] == pytest.approx(0.02) and w["df"] == pytest.approx(4.0) and w["se"] == pytest.approx(se)
    assert w["low"] == pytest.approx(0.02 - 2.776445 * se, abs=1e-7)
    assert w["high"] == pytest.approx(0.02 + 2.776445 * se, abs=1e-7)
    # unequal spreads: variances 4e-4 and 1e-4, Welch-Satterthwaite df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17
    w = welch_interval([0.90, 0.92, 0.94], [0.95, 0.96, 0.97])
    assert w["df"] == pytest.approx(50 / 17)
    assert w["high"] - w["diff"] == pytest.approx(t_quantile(0.975, 50 / 17) * math.sqrt(5e-4 / 3))
    with pytest.raises(ValueError, match="at least 2 values"):
        welch_interval([0.9], [0.9, 0.91])


def test_permutation_p_by_enumeration_by_hand():
    # pooled 95 96 97 97 98 99 (%): of the 20 ways to pick b, sums of offsets <= 3 or >= 9 are as extreme: 4 of 20
    assert permutation_p([0.95, 0.96, 0.97], [0.97, 0.98, 0.99]) == pytest.approx(4 / 20)
    # fully separated groups: only the observed split and its mirror: 2 of 20, the floor with 3 seeds
    assert permutation_p([0.90, 0.91, 0.92], [0.97, 0.98, 0.99]) == pytest.approx(0.1)
    assert min_permutation_p(3, 3) == pytest.approx(0.1) and min_permutation_p(5, 5) == pytest.approx(2 / 252)


def _record(variant, family, accs, params=1000, curve=None, losses=None):
    curve = curve or [accs] * 5
    return StudyRecord(family=family, variant=variant, label="-", learnable_params=params, macs=10 * params,
                       input_shape=[28, 28, 1], accuracies=accs, mean_accuracy=float(np.mean(accs)),
                       std_accuracy=float(np.std(accs)), test_accuracy_per_epoch=curve,
                       train_loss_per_epoch=losses or [[0.1] * len(accs)] * len(curve), train_seconds=1.0)


def test_convergence_over_the_last_fifth_by_hand():
    # 10 epochs: window 2, gain = mean(epoch 10) - mean(epoch 8)
    curve = [[0.5 + 0.04 * e, 0.52 + 0.04 * e] for e in range(10)]
    loss = [[1.0 / (e + 1)] * 2 for e in range(10)]
    c = convergence(curve, loss)
    assert c["window"] == 2 and c["acc_gain"] == pytest.approx(0.08)
    assert c["loss_fall"] == pytest.approx(1 - (1 / 10) / (1 / 8)) and c["converged"] is False
    flat = [[0.97, 0.98]] * 8 + [[0.972, 0.981]] * 2  # +0.15 points over the 2-epoch window: converged
    c = convergence(flat, [[0.05, 0.05]] * 10)
    assert c["acc_gain"] == pytest.approx(0.0015) and c["loss_fall"] == pytest.approx(0.0) and c["converged"] is True
    # accuracy flat, loss still falling by 40 % over the window (6 epochs: at least 2): still improving
    c = convergence([[0.9]] * 6, [[0.2]] * 4 + [[0.15], [0.12]])
    assert c["window"] == 2 and c["loss_fall"] == pytest.approx(0.4) and c["converged"] is False
    # 15 epochs: window 3; 2 epochs: window 1 (all there is)
    assert convergence([[0.9]] * 15, [[0.1]] * 15)["window"] == 3
    two = convergence([[0.90], [0.91]], [[0.2], [0.2]])
    assert two["window"] == 1 and two["acc_gain"] == pytest.approx(0.01) and two["converged"] is False
    assert convergence([[0.9]], [[0.2]])["converged"] is None


def test_best_other_and_closest():
    recs = [_record("base", "A", [0.9, 0.9], 500), _record("x", "A", [0.95, 0.95], 100),
            _record("y", "A", [0.92, 0.92], 300), _record("m", "B", [0.8, 0.8], 250)]
    assert best_other(recs, "base").variant == "x"
    assert closest(recs, recs[3], "A").variant == "y"  # |log 300/250| < |log 250/100|
    assert closest(recs, recs[3], "C") is None


def test_comparisons_table_from_a_fixed_results_file(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import width_study
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    recs = [
        _record("allconv6_bn", "allconv6", [0.95, 0.96, 0.97], 557_386),
        _record("allconv6_1_bn", "allconv6", [0.90, 0.91, 0.92], 35_674),
        _record("allconv6_2_bn", "allconv6", [0.97, 0.98, 0.99], 47_402),
        _record("mobilenet_v1/0.25", "mobilenet_v1", [0.90, 0.92, 0.94], 215_498),
        _record("mobilenet_v1/0.5", "mobilenet_v1", [0.95, 0.96, 0.97], 823_434),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))
    records = read_results(tmp_path / "results.jsonl")
    pairs = width_study.pairs(records)
    md = comparisons_markdown(records, pairs)
    rows = {line.split(" | ")[1] + ">" + line.split(" | ")[2]: line for line in md.splitlines()[2:] if "|" in line}
    # best other allconv6 is _2: +2.00 points, se sqrt(2e-4/3), df 4 -> [-0.27, +4.27], not beyond seed noise
    assert rows["allconv6_bn>allconv6_2_bn"].endswith("| +2.00 | [-0.27, +4.27] | no | 0.20 |")
    # _2 vs _1: +7.00 points, same se -> [+4.73, +9.27], beyond seed noise, permutation p at its floor 0.10
    assert rows["allconv6_1_bn>allconv6_2_bn"].endswith("| +7.00 | [+4.73, +9.27] | **yes** | 0.10 |")
    half = 100 * t_quantile(0.975, 50 / 17) * math.sqrt(5e-4 / 3)
    assert f"| +4.00 | [{4 - half:+.2f}, {4 + half:+.2f}] |" in rows["mobilenet_v1/0.25>mobilenet_v1/0.5"]
    # MobileNet 0.5 (823k) is nearest allconv6_bn (557k) in parameters; 0.25 (215k) too (vs 47k)
    assert "allconv6_bn>mobilenet_v1/0.5" in rows and "allconv6_bn>mobilenet_v1/0.25" in rows
    assert "allconv6_3_bn" not in md  # absent members' comparisons are left out, not invented
    assert "cannot give p below 0.100" in md and "never below 0.05" in md
    c = compare(records[1], records[2])
    assert c["exceeds_seed_noise"] and c["n_a"] == 3
    assert comparisons_markdown([_record("a", "A", [0.9]), _record("b", "A", [0.8])], [("q", "a", "b")]) is None


def test_padded_task_keeps_pixels_and_normalisation():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (4, 28, 28, 1), dtype=np.uint8)
    data = TrainData(x, np.arange(4) % 2, x[:2], np.arange(2), 2, np.array([0.13]), np.array([0.3]))
    task = Task("t", data)
    big = task.padded(32)
    assert big.in_shape == (32, 32, 1) and task.in_shape == (28, 28, 1)
    np.testing.assert_array_equal(big.data.x_train[:, 2:30, 2:30], x)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not big.data.x_train[:, border].any() and not big.data.x_test[:, border].any()
    assert big.data.mean is data.mean and big.data.std is data.std
    assert task.padded(None) is task and task.padded(28) is task and task.padded(16) is task
    odd = task.padded(31).in_shape  # 3 extra rows: 1 before, 2 after
    assert odd == (31, 31, 1)


def test_table_and_figures_mark_members_still_improving(tmp_path):
    pytest.importorskip("matplotlib")
    from jaxcnn.study import plot, report

    rising = [[0.80 + 0.02 * e, 0.81 + 0.02 * e] for e in range(10)]  # +4 points over the last 2 epochs
    flat = [[0.95, 0.96]] * 10
    recs = [_record("allconv6_bn", "allconv6", [0.95, 0.96], 557_386, curve=flat),
            _record("mobilenet_v1/0.25", "mobilenet_v1", [0.98, 0.99], 215_498, curve=rising)]
    table = report.table(recs).splitlines()
    assert "| yes (+0.00 pt, loss -0 % in last 2 ep) |" in table[2]
    assert "| **still improving** (+4.00 pt, loss -0 % in last 2 ep) |" in table[3]
    assert "| 28x28 | 10 |" in table[2]
    plot.accuracy_vs_cost(recs, tmp_path / "acc")
    drawn = json.loads((tmp_path / "acc.points.json").read_text())["points"]
    assert [p["still_improving"] for p in drawn] == [False, True]
    assert (tmp_path / "acc.png").stat().st_size > 0
    assert plot.training_curves(recs, tmp_path / "curves")[0].exists()


def test_still_improving_points_are_drawn_hollow_and_nothing_filled_covers_them(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    from jaxcnn.study import plot

    figs = []
    monkeypatch.setattr(plot, "_save", lambda fig, stem: figs.append(fig) or [])
    rising = [[0.80 + 0.02 * e, 0.81 + 0.02 * e] for e in range(10)]
    flat = [[0.95, 0.96]] * 10
    recs = [_record("allconv6_bn", "allconv6", [0.95, 0.96], 557_386, curve=flat),
            _record("allconv6_1_bn", "allconv6", [0.98, 0.99], 35_674, curve=rising)]
    plot.accuracy_vs_cost(recs, tmp_path / "acc")
    ax = figs[0].axes[0]
    at = {}  # (x, y) -> [(facecolour, zorder)] of every marker drawn there
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
            at.setdefault((float(x), round(float(y), 6)), []).append((to_rgba(line.get_markerfacecolor()),
                                                                      line.get_zorder()))
    hollow = at[(35_674.0, round(98.5, 6))]
    top = max(hollow, key=lambda m: m[1])
    assert top[0] == to_rgba("white")  # the marker on top is hollow (white face)
    filled = at[(557_386.0, round(95.5, 6))]
    assert all(face != to_rgba("white") for face, _ in filled)


def test_pareto_front_by_brute_force():
    # (cost, accuracy): a point is on the front when no other point is at most as costly and strictly better
    rng = np.random.default_rng(0)
    pts = sorted({(float(c), float(a)) for c, a in zip(rng.integers(1, 20, 40), rng.integers(0, 10, 40), strict=True)})
    rng.shuffle(pts)
    expected = sorted(i for i, (c, a) in enumerate(pts)
                      if not any(c2 <= c and a2 > a or (c2 < c and a2 >= a) for c2, a2 in pts))
    assert sorted(pareto_front(pts)) == expected


def test_redundancy_counts_partners_by_loops():
    from jaxcnn.study.stats import redundancy
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 2, 6))
    w[..., 1] = -w[..., 0] * 2.0            # a near-negated pair (0, 1)
    w[..., 3] = w[..., 2] + 1e-3            # a near-duplicate pair (2, 3)
    filters = [w[..., j].ravel() for j in range(6)]
    cos = [[float(f @ g / np.linalg.norm(f) / np.linalg.norm(g)) for g in filters] for f in filters]
    dup = [any(cos[i][j] > 0.9 for j in range(6) if j != i) for i in range(6)]
    neg = [any(cos[i][j] < -0.9 for j in range(6) if j != i) for i in range(6)]
    got = redundancy(w)
    assert got == {"duplicate": sum(dup) / 6, "negated": sum(neg) / 6}
    assert got["negated"] >= 2 / 6 and got["duplicate"] >= 2 / 6


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    # plotting builds Figures of its own: no pyplot import, no backend switch in the user's session
    import subprocess
    # the raw rcParams entry: matplotlib.get_backend() would itself import pyplot to resolve "auto"
    code = ("import sys, matplotlib; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend')\n"
            "before = raw()\n"
            "from jaxcnn.study import plot\n"
            "from jaxcnn.study.record import StudyRecord\n"
            "r = StudyRecord('f', 'a', 'a', 10, 5, [8, 8, 1], [0.9], 0.9, 0.01, [[0.5], [0.9]], 1.0,"
            " train_loss_per_epoch=[[1.0], [0.5]])\n"
            f"plot.accuracy_vs_cost([r], __import__('pathlib').Path({str(tmp_path)!r}) / 'acc')\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
            "assert raw() == before, (raw(), before)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    assert (tmp_path / "acc.png").stat().st_size > 1000 and (tmp_path / "acc.svg").exists()


def test_study_record_schema_round_trips_and_names_a_bad_field(tmp_path):
    from jaxcnn.study.record import CSV_FIELDS, REQUIRED, StudyError, write_results

    rec = _record("allconv6_bn", "allconv6", [0.9, 0.8])
    value = {**rec.to_json(), "from_a_newer_version": {"kept": True}}
    back = StudyRecord.from_json(json.loads(json.dumps(value)), "here")
    assert back.to_json() == value and back.extra == {"from_a_newer_version": {"kept": True}}
    assert set(REQUIRED) <= set(CSV_FIELDS) | {"test_accuracy_per_epoch"}  # the CSV shows what a record must have
    for field, bad in [("accuracies", "0.9"), ("learnable_params", -1), ("mean_accuracy", float("nan")),
                       ("input_shape", [28, 0, 1]), ("test_accuracy_per_epoch", [["x"]]), ("label", 3)]:
        with pytest.raises(StudyError, match=f"here: field '{field}'"):
            StudyRecord.from_json({**value, field: bad}, "here")
    with pytest.raises(StudyError, match="missing macs"):
        StudyRecord.from_json({k: v for k, v in value.items() if k != "macs"}, "here")
    write_results(tmp_path, [back])
    assert [r.to_json() for r in read_results(tmp_path / "results.jsonl")] == [value]
    header, row = (tmp_path / "results.csv").read_text().splitlines()
    assert header.split(",") == list(CSV_FIELDS) and row.startswith("allconv6,allconv6_bn,-,1000,,10000,28x28x1,")
