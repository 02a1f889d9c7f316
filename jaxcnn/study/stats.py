"""Statistics of study results: did a member converge, and is a difference between two members real?

Pure Python and NumPy (no SciPy): the Student t quantile comes from the regularized
incomplete beta function, evaluated by its continued fraction and inverted by bisection.

* :func:`convergence` reads a record's per-epoch history: the test-accuracy gain (mean over
  seeds) over the last fifth of the epochs (at least 2) and the relative fall of the training
  loss over the same epochs. A member whose accuracy still rose by ``acc_gain`` points or more, or whose
  loss still fell by ``loss_fall`` or more, is marked *still improving*: its final accuracy is
  a lower bound on what its recipe would reach with more epochs.
* :func:`compare` gives the difference of two members' mean final accuracies with a 95 %
  Welch t interval over seeds and an exact two-sided permutation p-value. With n seeds per
  member the permutation test has C(2n, n) relabellings, so its smallest possible p-value is
  2 / C(2n, n): 0.10 with 3 seeds (it can never reach 0.05), 0.008 with 5.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn.study.record import StudyRecord

# A member is "still improving" when, over the last fifth of its epochs (at least 2: under a
# cosine schedule the very last epoch runs at a learning rate near 0 and is flat even for an
# undertrained model), its mean test accuracy rose by at least ACC_GAIN (0.5 points = 5 of
# MNIST 5k's 1,000 test digits) or its training loss fell by at least LOSS_FALL of its value.
# Calibration, from the committed results: 30-epoch runs gain 0.07 (allconv6_bn) and 0.27
# (mobilenet_v1/0.25) points and fall 10-11 % over their last 6 epochs; the 6-epoch width study
# gained 0.24-0.36 points (allconv6 members, loss -15 to -23 %) and 0.6-5.2 points (the four
# MobileNets, loss -26 to -34 %) over its last 2, where MobileNet was visibly still climbing.
ACC_GAIN = 0.005
LOSS_FALL = 0.30


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily integer) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for Student's t with ``df`` degrees of freedom (bisection to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile probability must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Difference mean(b) - mean(a) with a Welch t interval (unequal variances, sample variances ddof=1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"a Welch interval needs at least 2 values per group, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical seeds in both groups: no spread to scale by
        return {"diff": diff, "low": diff, "high": diff, "df": math.inf, "se": 0.0}
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = t_quantile(0.5 + level / 2.0, df) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": float(df), "se": se}


def permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided permutation p-value of |mean(b) - mean(a)| over every relabelling of the pooled values."""
    pooled = np.concatenate([np.asarray(a, np.float64), np.asarray(b, np.float64)])
    n, na = pooled.size, len(a)
    if na == 0 or na == n:
        raise ValueError("a permutation test needs values in both groups")
    if math.comb(n, na) > 200_000:
        raise ValueError(f"{math.comb(n, na)} relabellings are too many for an exact test; use fewer seeds")
    observed = abs(pooled[na:].mean() - pooled[:na].mean())
    total, hits = 0, 0
    for idx in itertools.combinations(range(n), na):
        mask = np.zeros(n, bool)
        mask[list(idx)] = True
        total += 1
        # a relative tolerance so that ties with the observed split count as ties despite rounding
        hits += abs(pooled[~mask].mean() - pooled[mask].mean()) >= observed - 1e-12 * max(1.0, observed)
    return hits / total


def min_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value an exact permutation test of n_a vs n_b distinct values can give."""
    return 2.0 / math.comb(n_a + n_b, n_a) if n_a == n_b else 1.0 / math.comb(n_a + n_b, n_a)


def compare(a: StudyRecord, b: StudyRecord, level: float = 0.95) -> dict[str, Any]:
    """b's final accuracies against a's: difference of means, Welch interval, permutation p, verdict."""
    w = welch_interval(a.accuracies, b.accuracies, level)
    real = w["low"] > 0 or w["high"] < 0
    return {"a": a.variant, "b": b.variant, "n_a": len(a.accuracies), "n_b": len(b.accuracies),
            **w, "permutation_p": permutation_p(a.accuracies, b.accuracies),
            "min_permutation_p": min_permutation_p(len(a.accuracies), len(b.accuracies)),
            "exceeds_seed_noise": bool(real)}


def convergence(test_accuracy_per_epoch: Sequence[Any], train_loss_per_epoch: Sequence[Any] = (), *,
                acc_gain: float = ACC_GAIN, loss_fall: float = LOSS_FALL) -> dict[str, Any]:
    """Test-accuracy gain and train-loss fall over the last fifth of the epochs, and the verdict.

    With E epochs the window is k = min(E - 1, max(2, ceil(E / 5))) epochs: the change from the
    mean over seeds after epoch E - k to the mean after epoch E. A single epoch has no trend to
    read (``converged`` is then None).
    """
    acc = [float(np.mean(e)) for e in test_accuracy_per_epoch]
    loss = [float(np.mean(e)) for e in train_loss_per_epoch or ()]
    epochs = len(acc)
    if epochs < 2:
        return {"window": 0, "acc_gain": None, "loss_fall": None, "converged": None}
    k = min(epochs - 1, max(2, math.ceil(epochs / 5)))
    gain = acc[-1] - acc[-1 - k]
    fall = 1.0 - loss[-1] / loss[-1 - k] if len(loss) == epochs and loss[-1 - k] > 0 else None
    improving = gain >= acc_gain or (fall is not None and fall >= loss_fall)
    return {"window": k, "acc_gain": gain, "loss_fall": fall, "converged": not improving}


def closest(records: Sequence[StudyRecord], target: StudyRecord, family: str,
            key: str = "learnable_params") -> StudyRecord | None:
    """The record of ``family`` whose ``key`` is nearest ``target``'s on a log scale (None if the family is absent)."""
    pool = [r for r in records if r.family == family and r.variant != target.variant]
    if not pool:
        return None
    return min(pool, key=lambda r: abs(math.log(getattr(r, key)) - math.log(getattr(target, key))))


def best_other(records: Sequence[StudyRecord], baseline: str) -> StudyRecord | None:
    """The highest-mean record of ``baseline``'s family other than the baseline itself."""
    base = next((r for r in records if r.variant == baseline), None)
    pool = [r for r in records if base is not None and r.family == base.family and r is not base]
    return max(pool, key=lambda r: r.mean_accuracy) if pool else None


def comparisons_markdown(records: Sequence[StudyRecord], pairs: Sequence[tuple[str, str, str]]) -> str | None:
    """Markdown table of (question, variant a, variant b) comparisons: b - a in points, 95 % Welch interval.

    Pairs naming a variant that is not in ``records`` are left out; None when no pair is left
    or a member has fewer than 2 seeds (no interval then).
    """
    by = {r.variant: r for r in records}
    rows = [(q, by[a], by[b]) for q, a, b in pairs if a in by and b in by]
    if not rows or any(len(r.accuracies) < 2 for _, a, b in rows for r in (a, b)):
        return None
    seeds = sorted({len(r.accuracies) for _, a, b in rows for r in (a, b)})
    lines = ["| question | a | b | b - a (points) | 95 % interval | exceeds seed noise? | permutation p |",
             "|---|---|---|---:|---|---|---:|"]
    for q, a, b in rows:
        c = compare(a, b)
        verdict = "**yes**" if c["exceeds_seed_noise"] else "no"
        lines.append(f"| {q} | {c['a']} | {c['b']} | {100 * c['diff']:+.2f} | [{100 * c['low']:+.2f}, "
                     f"{100 * c['high']:+.2f}] | {verdict} | {c['permutation_p']:.2f} |")
    n = "/".join(map(str, seeds))
    floor = min_permutation_p(seeds[0], seeds[0])
    lines += ["", f"b - a: difference of the mean final test accuracies over {n} seeds; the interval is Welch's t "
              "interval (unequal variances) and a difference \"exceeds seed noise\" when it excludes 0. "
              f"The exact permutation test of {seeds[0]} against {seeds[0]} seeds cannot give p below {floor:.3f}"
              + (" (so never below 0.05: with this few seeds read it as a sanity check only)" if floor > 0.05 else "")
              + "."]
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats (lower or equal cost and higher accuracy), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def redundancy(kernel: np.ndarray, threshold: float = 0.9) -> dict[str, float]:
    """Fraction of filters with a near-duplicate (cos > t) or near-negated (cos < -t) partner."""
    w = np.asarray(kernel, np.float64)
    f = w.reshape(-1, w.shape[-1]).T  # one row per filter
    f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
    cos = f @ f.T
    np.fill_diagonal(cos, 0.0)
    return {
        "duplicate": float(np.mean(cos.max(axis=1) > threshold)),
        "negated": float(np.mean(cos.min(axis=1) < -threshold)),
    }
