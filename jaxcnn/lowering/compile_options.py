"""XLA compile options chosen per program, by measurement and an accuracy check, never globally.

``import jaxcnn`` changes no environment variable and no JAX setting. Instead, each
program the engine or the benchmark compiles gets its options through
``jax.jit(..., compiler_options=...)`` from :func:`tune`, which

1. compiles a probe function (one training step for one seed: loss, gradients and
   BatchNorm statistics) once per candidate and once in float64 (the reference);
2. keeps a candidate only if every output's error against float64 is at most
   ``4x`` the error of XLA's own default compile (or of float32 rounding, whichever is
   larger) -- so an option that trades accuracy for speed is refused, whatever it gains;
3. times the accepted candidates interleaved (median of a few calls) and picks the fastest;
4. caches the choice on disk keyed by the probe's program text (model, shapes, dtypes),
   backend, device, CPU and versions, so a workload is tuned once per machine.

A training run also says how many probe-sized calls it will make (``calls``: steps x seeds), and
tuning is an investment only a long enough run pays back. The reference candidate is compiled and
timed first; when even :data:`GAIN_BOUND` of the run's time (the largest gain any candidate has shown
over XLA's default: 1.5x, a third of the step) is less than compiling the other candidates and the
float64 check would cost, the reference is kept untuned (a short study member on MNIST: 2-3 s of
possible gain against 4-5 s of tuning). Otherwise every candidate is timed, and only a candidate whose
gain over the run exceeds the float64 check's cost (estimated as :data:`FLOAT64_COST` times the float32
probe's lowering and compile, as measured) is checked: the fastest one that passes is picked,
so a field of candidates within a few percent of each other costs no float64 program at all. Without
``calls`` (benchmarks, tests) every candidate is compiled, checked and timed.

Why per program: the options that help differ between workloads. On the 2-core Zen 4 CPU
(jaxlib 0.10.2), ``ynn-dot`` (YNNPACK fusions of dots with their neighbours, XLA's own
convolutions, YNNPACK reductions) trains allconv6 at 32x32 about 1.5x faster than XLA's
default (which hands every convolution to YNNPACK). ``ynn-dot-only`` leaves the reductions to
XLA as well: on a 2-core Xeon (family 6 model 167) it trains MobileNet v1 0.25 at 32x32 1.4x
faster than ``ynn-dot`` (YNNPACK's reductions of BatchNorm's small maps cost more than XLA's),
while allconv6 with BatchNorm on 28x28 MNIST is 1.2x slower under it. XLA's own reduction sums
a long row in few sequential runs (a BatchNorm mean over N, H, W: 1.7e-6 relative error
against float64, 14x PyTorch's float32), so BatchNorm sums in two stages forward and backward
(:mod:`jaxcnn.lowering.reductions`) and is as accurate under ``ynn-dot-only`` as under
YNNPACK. A model whose own long plain sums lose accuracy under ``ynn-dot-only`` fails the
accuracy check and gets another candidate.

``JAXCNN_TUNE=0`` (or ``compile_options="xla"`` in :class:`~jaxcnn.train.TrainConfig` and
``--compile-options xla`` on the CLI) skips tuning; ``JAXCNN_CACHE_DIR`` moves the cache
(default ``~/.cache/jaxcnn``). GPU and TPU have one candidate, XLA's default.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.lowering import compile_cache

_YNN = "xla_cpu_experimental_ynn_fusion_type"

CANDIDATES: dict[str, dict[str, str]] = {
    "xla": {},  # XLA's own choice (jaxlib 0.10: YNNPACK for each dot, convolution and reduction)
    "ynn-dot": {_YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    # reductions stay with XLA too (the flag jaxcnn once set on import): accurate only for two-stage sums
    "ynn-dot-only": {_YNN: "LIBRARY_FUSION_TYPE_DOT"},
}
TUNED: dict[str, tuple[str, ...]] = {"cpu": ("xla", "ynn-dot", "ynn-dot-only")}  # per backend; others: ("xla",)
CHOICES = ("auto", *CANDIDATES)
# for programs run once (parameter initialisation): LLVM optimisation level 1 instead of XLA's default 2 compiles
# random-number-heavy programs 2-2.5x faster on CPU and gave bit-identical parameters (allconv6_bn, MobileNet v1);
# level 0 was as fast to compile but changed values by an ulp. Never for programs that run many times.
ONE_SHOT: dict[str, str] = {"xla_backend_optimization_level": "1"}
TOLERANCE_FACTOR = 4.0
# the most a candidate has saved over XLA's default anywhere measured (ynn-dot, allconv6 32x32 on the Zen 4
# machine: 1.5x faster, a third of the step); a run whose whole time times this cannot repay tuning skips it
GAIN_BOUND = 0.35
# what the float64 check costs (tracing, compiling and running the probe in float64) per second of lowering
# and compiling the float32 probe: 3.0x for MobileNet v1 0.25 at 32x32 (9.0 s against 3.0 s; float64
# convolutions compile 3x slower), 1.5x for allconv6_bn at 28x28 (2.6 s against 1.8 s), Zen 3, jaxlib 0.10
FLOAT64_COST = 3.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)
CACHE_VERSION = 1


@dataclass
class Choice:
    """The options picked for one program, and the measurements behind the pick."""

    name: str
    options: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per call, per candidate timed
    errors: dict[str, float] = field(default_factory=dict)  # worst relative error vs float64, per candidate
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was refused
    cached: bool = False
    key: str = ""
    # not tuned because the run was too short to repay it: tuning pays only for runs of more calls than this
    tune_above_calls: int = 0

    def record(self) -> dict[str, Any]:
        """A JSON-ready record (for checkpoints, results and benchmark rows)."""
        return asdict(self)


def options(name: str) -> dict[str, str]:
    """The compiler options of candidate ``name``; ValueError naming the choices otherwise."""
    if name not in CANDIDATES:
        raise ValueError(f"compile_options must be one of {', '.join(CHOICES)}, got {name!r}")
    return dict(CANDIDATES[name])


def candidates_for(backend: str | None = None) -> tuple[str, ...]:
    """The candidates :func:`tune` tries on ``backend`` (default: JAX's default backend)."""
    return TUNED.get(backend or jax.default_backend(), ("xla",))


def tuning_enabled() -> bool:
    """False when ``JAXCNN_TUNE`` is 0/false/no/off."""
    return os.environ.get("JAXCNN_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def tunes(choice: str) -> bool:
    """Whether :func:`resolve` measures candidates for ``choice``: ``auto``, tuning on, more than one candidate."""
    return choice == "auto" and tuning_enabled() and len(candidates_for()) > 1


def resolve(choice: str, fn: Callable[..., Any], args: tuple, **kwargs: Any) -> Choice:
    """``auto`` -> :func:`tune` (or XLA's default when tuning is off); a candidate name -> that candidate."""
    if choice == "auto":
        return tune(fn, args, **kwargs) if tunes(choice) else Choice("xla", {})
    return Choice(choice, options(choice))


def relative_errors(got: Any, want: Any) -> list[float]:
    """Normwise relative error ``||got - want|| / ||want||`` of each floating leaf (in float64)."""
    errs = []
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        w = np.asarray(w)
        if not np.issubdtype(w.dtype, np.floating) or w.size == 0:
            continue
        w, g = w.astype(np.float64), np.asarray(g, np.float64)
        scale = float(np.linalg.norm(w.ravel()))
        errs.append(float(np.linalg.norm((g - w).ravel())) / scale if scale else float(np.linalg.norm(g.ravel())))
    return errs


def accuracy_verdict(errs: list[float], reference: list[float], factor: float = TOLERANCE_FACTOR) -> str | None:
    """None when every leaf error is within ``factor`` x max(reference error, float32 eps); else why not."""
    for i, (e, r) in enumerate(zip(errs, reference, strict=True)):
        bound = factor * max(r, FLOAT32_EPS)
        if not e <= bound:  # also catches NaN
            return f"output leaf {i}: relative error {e:.2e} vs float64 exceeds {factor:g} x {max(r, FLOAT32_EPS):.2e}"
    return None


def _to_float64(tree: Any) -> Any:
    def cast(v):
        if isinstance(v, jax.Array | np.ndarray) and jnp.issubdtype(v.dtype, jnp.floating):
            return jnp.asarray(np.asarray(v, np.float64))
        return v

    return jax.tree_util.tree_map(cast, tree)


def _float64_reference(fn: Callable[..., Any], args: tuple) -> Any:
    with jax.enable_x64(True):
        out = jax.jit(fn)(*_to_float64(args))
        return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), out)


def _cache_dir() -> Path:
    return compile_cache.cache_root() / "compile-options"


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(fn: Callable[..., Any], args: tuple, names: tuple[str, ...], label: str = "", *,
              text: str | None = None) -> str:
    """sha256 of the probe's lowered program (``text``, if already lowered), backend, device, CPU, versions
    and candidates."""
    text = jax.jit(fn).lower(*args).as_text() if text is None else text
    d = jax.devices()[0]
    parts = [str(CACHE_VERSION), label, text, jax.default_backend(), d.device_kind, str(jax.device_count()),
             _machine(), jax.__version__, ",".join(names)]
    try:
        import jaxlib

        parts.append(jaxlib.__version__)
    except ImportError:  # pragma: no cover - jaxlib is a dependency
        pass
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cache_problem(rec: Any, names: tuple[str, ...], factor: float) -> str | None:
    """Why a decoded cache entry cannot be used for a program tuned over ``names``, or None if it can."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    name = rec.get("name")
    if name not in names:
        return f"its candidate {str(name)[:40]!r} is not one of those tuned here ({', '.join(names)})"
    def number(x: Any) -> bool:  # an int beyond float range (10**400 in an edited file) is no number of ours
        return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e300 and math.isfinite(x) \
            and x >= 0

    for f, ok, what in (("seconds", number, "seconds"), ("errors", number, "errors"),
                        ("rejected", lambda x: isinstance(x, str), "reasons")):
        v = rec.get(f, {})
        if not isinstance(v, dict) or not all(isinstance(k, str) and ok(x) for k, x in v.items()):
            return f"field {f!r} is not a map of candidate names to {what}"
    if name in rec.get("rejected", {}):
        return f"it names {name}, which its own measurement refused"
    errors = rec.get("errors", {})
    if name != names[0] and (name not in errors or names[0] not in errors
                             or accuracy_verdict([errors[name]], [errors[names[0]]], factor) is not None):
        return f"its recorded errors do not show that {name} passed the accuracy check"
    return None


def _read_cache(key: str, names: tuple[str, ...] = ("xla",), factor: float = TOLERANCE_FACTOR,
                calls: int | None = None) -> Choice | None:
    """The cached choice for ``key``, or None: a missing entry is measured; a damaged one too, with a warning.

    An entry that records a skipped tuning (``tune_above_calls``) serves only runs of at most that many calls.
    """
    from jaxcnn.storage import files

    path = _cache_dir() / f"{key}.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        rec = json.loads(files.read_regular(path, "compile-options cache entry"))
        why = _cache_problem(rec, names, factor)
        above = rec.get("tune_above_calls", 0) if why is None else 0
        if not (isinstance(above, int) and not isinstance(above, bool) and 0 <= above < 2**62):
            why = "field 'tune_above_calls' is not a count"
    except (OSError, ValueError, RecursionError) as e:  # FileProblem is a ValueError
        why = str(e)[:200]
    if why is not None:  # a damaged or edited entry only costs a new measurement, which replaces it
        print(f"warning: ignoring compile-options cache entry {path} ({why}); measuring again", file=sys.stderr)
        return None
    if above and (calls is None or calls > above):  # tuning was skipped for a shorter run: this one may repay it
        return None
    fields = {k: rec[k] for k in ("name", "seconds", "errors", "rejected") if k in rec}
    return Choice(options=options(rec["name"]), cached=True, key=key, tune_above_calls=above, **fields)


def program_key(text: str, names: tuple[str, ...] | None = None) -> str:
    """The cache key of a whole program's choice, from its lowered text (see :func:`cached_choice`)."""
    return cache_key(None, (), names or candidates_for(), "program", text=text)  # type: ignore[arg-type]


def cached_choice(key: str, names: tuple[str, ...] | None = None, calls: int | None = None) -> Choice | None:
    """The choice once made for the program of :func:`program_key` ``key``, or None (then tune its probe).

    A training run keys its choice by its training program as well as by the probe the choice was
    measured on: a repeated run finds it from the program it has to lower anyway, without tracing and
    lowering the probe again (half a second to a second of a short run's start).
    """
    return _read_cache(key, names or candidates_for(), calls=calls)


def remember(choice: Choice, key: str) -> None:
    """Store ``choice`` under a program's key too (a measured choice only: XLA's default needs no entry)."""
    if choice.seconds:
        _write_cache(replace(choice, cached=False, key=key))


def _write_cache(choice: Choice) -> None:
    from jaxcnn.storage.files import atomic_write_text

    try:
        d = _cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / f"{choice.key}.json", json.dumps({**choice.record(), "cached": False}, indent=1))
    except OSError:
        pass  # an unwritable cache must not stop training; the next run measures again


def tune(
    fn: Callable[..., Any],
    args: tuple,
    *,
    names: tuple[str, ...] | None = None,
    reps: int = 5,
    label: str = "",
    use_cache: bool = True,
    factor: float = TOLERANCE_FACTOR,
    calls: int | None = None,
) -> Choice:
    """Pick the fastest candidate whose outputs of ``fn(*args)`` are as accurate as XLA's default compile.

    ``fn`` must be pure and return the outputs to check (for a training step: loss,
    gradients and BatchNorm statistics); it is called with ``args`` unchanged (no donation).
    The first name is the reference and is never refused. ``calls``: how many times the run will
    call a program of ``fn``'s cost; given, tuning stops where it cannot repay itself (module docstring).
    """
    names = names or candidates_for()
    # traced and lowered once: the cache key hashes it and every candidate compiles it with its own options
    # (tracing a training step again per candidate cost ~0.3 s each)
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lower_s = time.perf_counter() - t0
    key = cache_key(fn, args, names, label, text=lowered.as_text()) if use_cache else ""
    if use_cache and (hit := _read_cache(key, names, factor, calls)) is not None:
        return hit
    ref = names[0]
    t0 = time.perf_counter()
    compiled = {ref: lowered.compile(compiler_options=options(ref) or None)}
    compile_s = time.perf_counter() - t0
    check_s = FLOAT64_COST * (lower_s + compile_s)  # what the float64 check will cost, if it is needed
    if calls is not None and len(names) > 1:
        t_ref = _median_seconds(compiled[ref], args, 3)
        cost = (len(names) - 1) * compile_s + check_s  # the other candidates' compiles and the float64 check
        if GAIN_BOUND * calls * t_ref < cost:
            choice = Choice(ref, options(ref), {ref: t_ref}, key=key, tune_above_calls=int(cost / (GAIN_BOUND * t_ref)))
            if use_cache:
                _write_cache(choice)
            return choice
    for name in names[1:]:
        compiled[name] = lowered.compile(compiler_options=options(name) or None)
    errors: dict[str, float] = {}
    rejected: dict[str, str] = {}
    want: Any = None
    reference: list[float] = []

    def check(name: str) -> str | None:  # why ``name`` is less accurate than the reference, or None
        nonlocal want, reference
        if want is None:
            want = _float64_reference(fn, args)
            reference = relative_errors(compiled[ref](*args), want)
            errors[ref] = max(reference, default=0.0)
        if name == ref:
            return None
        errs = relative_errors(compiled[name](*args), want)
        errors[name] = max(errs, default=0.0)
        return accuracy_verdict(errs, reference, factor)

    if calls is None:  # every candidate checked before any is timed (benchmarks, tests: the full record)
        for name in names:
            if (why := check(name)) is not None:
                rejected[name] = why
                del compiled[name]
    seconds = _interleaved_seconds(compiled, args, reps)
    best = ref
    for name in sorted(seconds, key=seconds.__getitem__):
        if name == ref or calls is None:  # the fastest left (all checked already when calls is None)
            best = name
            break
        if (seconds[ref] - seconds[name]) * calls < check_s:  # the gain would not pay for the float64 check
            break
        if (why := check(name)) is None:
            best = name
            break
        rejected[name] = why
    choice = Choice(best, options(best), seconds, errors, rejected, False, key)
    if use_cache:
        _write_cache(choice)
    return choice


def _median_seconds(exe: Any, args: tuple, reps: int) -> float:
    """Median seconds of ``reps`` calls of ``exe(*args)`` after one warm-up call."""
    return _interleaved_seconds({"": exe}, args, reps)[""]


def _interleaved_seconds(compiled: dict[str, Any], args: tuple, reps: int) -> dict[str, float]:
    """Median seconds per call of each executable, after a warm-up, the calls interleaved."""
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for exe in compiled.values():  # warm-up
        jax.block_until_ready(exe(*args))
    for _ in range(reps):  # interleaved, so a busy moment hurts every candidate alike
        for name, exe in compiled.items():
            t = time.perf_counter()
            jax.block_until_ready(exe(*args))
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}
