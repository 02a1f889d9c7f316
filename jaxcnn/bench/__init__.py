"""Benchmarks: how fast each model trains and infers here, and how close to the device limit.

For each (model, batch, dtype, measure) the report gives the first call (compile + one step), the median
step time and its spread over repetitions, images/s, achieved FLOP/s from the analytic MACs (inference
2 x MACs per image; training 3 x that, the usual estimate), and that as a percentage of the device's peak.

Timing (:mod:`jaxcnn.bench.timing`): every program (each model row and the two peak programs) is timed
the same way, in one run: first call, warm-up, repetitions of enough calls to last ``min_seconds``,
interleaved across programs, each repetition watched by the other-load meter (redone when other processes
used more than ``max_other_load`` cores; the report warns about any kept anyway).

The peak: a square float32 matmul and a dense 3x3 convolution, timed interleaved with the models. Its
figure is the best-of repetitions (disturbance only slows a program down, so the fastest repetition is
the closest to what the hardware does), reported with its median and spread; ``% of peak`` is a row's
median FLOP/s over the larger of the two best-of figures. A peak whose repetitions spread by more than
``PEAK_SPREAD_LIMIT`` is flagged: the machine was not steady enough for the percentages to mean much.
Run one benchmark process at a time: on 2 cores an overlapping process can slow a step by orders of
magnitude.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import models
from jaxcnn.bench.rows import MEASURES, BenchRow
from jaxcnn.bench.timing import LoadMeter, Run, Series, interleave, prepare, timed
from jaxcnn.core import Layer
from jaxcnn.lowering import compile_options as xla_options
from jaxcnn.lowering import host_allocator
from jaxcnn.lowering.conv import lowerings_used
from jaxcnn.summary import summary
from jaxcnn.train import step
from jaxcnn.train.config import TrainConfig
from jaxcnn.train.optimizers import make_optimizer
from jaxcnn.transforms import mixed_precision, with_conv_impl

PEAK_SPREAD_LIMIT = 0.25  # (max - min) / median of the peak's repetitions beyond which it is flagged


@dataclass
class Timing:
    """Per-call seconds: median over repetitions, min and max, and compile time."""

    median: float
    low: float
    high: float
    reps: int
    calls_per_rep: int
    compile_seconds: float


def _program(fn: Callable[..., Any], args: tuple, *, carry: bool = False,
             compiler_options: dict[str, str] | None = None) -> tuple[Run, float]:
    """``fn`` compiled for ``args``, as ``run(n)``; with ``carry=True`` output[0] replaces args[0] (donated)."""
    t0 = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=(0,) if carry else (), compiler_options=compiler_options or {})
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    state = list(args)

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = compiled(*state)
            if carry:
                state[0] = out[0]  # each call depends on the last: waiting for the final one waits for all
            else:
                # independent calls may overlap on the CPU thread pool; block each so a step's time
                # is its latency, comparable with the chained train steps and with eager PyTorch
                jax.block_until_ready(out)
        jax.block_until_ready(out)

    return run, compile_s


def _timed_series(runs: dict[str, Run], compile_s: dict[str, float], *, reps: int, min_seconds: float,
                  meter: LoadMeter, max_other_load: float, log: Callable[[str], None] | None = None
                  ) -> dict[str, Series]:
    """First call, calibration and interleaved repetitions of every program in ``runs``."""
    series = {k: prepare(run, min_seconds, first_call_s=compile_s[k] + timed(run, 1)) for k, run in runs.items()}
    interleave(runs, series, reps, meter=meter, max_other_load=max_other_load, log=log)
    return series


def time_calls(
    fn: Callable[..., Any], args: tuple, *, reps: int = 5, min_seconds: float = 1.0, carry: bool = False,
    compiler_options: dict[str, str] | None = None,
) -> Timing:
    """Time ``fn(*args)``; with ``carry=True`` the output's first element replaces ``args[0]`` (donation)."""
    run, compile_s = _program(fn, args, carry=carry, compiler_options=compiler_options)
    s = _timed_series({"fn": run}, {"fn": compile_s}, reps=reps, min_seconds=min_seconds, meter=LoadMeter(),
                      max_other_load=float("inf"))["fn"]
    return Timing(s.median, s.low, s.high, len(s.rep_s), s.calls_per_rep, compile_s)


def device_info() -> dict[str, Any]:
    """Backend, device kind and count, versions, and CPU model where readable."""
    d = jax.devices()[0]
    info = {
        "backend": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
        "jax": jax.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "host_malloc": host_allocator.status().describe(),  # a 20-30% difference in big CPU steps
    }
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        # the family matters: AMD family 25 is Zen 3/4, 26 is Zen 5 (twice the AVX-512 width)
        info["cpu"] = f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, " \
                      f"model {fields.get('model', '?')}, {fields.get('cpu cores', '?')} cores)"
    except OSError:
        pass
    return info


def memory_in_use() -> int | None:
    """Peak bytes in use on the first device where the backend reports it (GPU/TPU), else None."""
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def _peak_programs(dtype: str, quick: bool) -> dict[str, tuple[Run, float, float, str]]:
    """{"matmul"|"conv": (run, compile seconds, FLOPs per call, shape text)}: the two peak programs."""
    dt = jnp.dtype(dtype)
    n = 512 if quick else (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b, hw, c = (2, 28, 32) if quick else (32, 56, 64)
    x = jax.random.normal(jax.random.key(1), (b, hw, hw, c), dt)
    w = jax.random.normal(jax.random.key(2), (3, 3, c, c), dt)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    mm, mm_s = _program(lambda p, q: p @ q, (a, a))
    cv, cv_s = _program(conv, (x, w))
    return {"matmul": (mm, mm_s, 2.0 * n**3, f"{n}^3"),
            "conv": (cv, cv_s, 2.0 * b * hw * hw * c * c * 9, f"{b}x{hw}x{hw}x{c}->{c} 3x3")}


def _peak_record(programs: dict[str, tuple[Run, float, float, str]], series: dict[str, Series]) -> dict[str, Any]:
    """Best-of, median and spread of each peak program, the peak they define, and whether it is steady."""
    rec: dict[str, Any] = {}
    for kind, (_, _, flops, shape) in programs.items():
        s = series[kind]
        rec.update({f"{kind}_shape": shape, f"{kind}_flops": flops / s.low, f"{kind}_flops_median": flops / s.median,
                    f"{kind}_spread": s.spread, f"{kind}_max_other_load": s.max_other_load})
    rec["matmul_n"] = int(rec["matmul_shape"].split("^")[0])
    rec["peak_flops"] = max(rec["matmul_flops"], rec["conv_flops"])
    rec["steady"] = max(rec["matmul_spread"], rec["conv_spread"]) <= PEAK_SPREAD_LIMIT
    return rec


def peak_flops(dtype: str = "float32", *, quick: bool = False) -> dict[str, Any]:
    """Measured FLOP/s of a square matmul and of a dense 3x3 convolution (the device's practical peak)."""
    programs = _peak_programs(dtype, quick)
    series = _timed_series({k: v[0] for k, v in programs.items()}, {k: v[1] for k, v in programs.items()},
                           reps=3 if quick else 5, min_seconds=0.2 if quick else 1.0, meter=LoadMeter(),
                           max_other_load=0.25)
    return _peak_record(programs, series)


def _steps(model: Layer, in_shape: tuple[int, ...]):
    """The engine's own programs: ``jaxcnn.train.step.train_step`` with the default recipe's optimizer, and apply."""
    tx = make_optimizer(TrainConfig(), 100, model)  # momentum, decoupled weight decay, cosine: what fit runs
    drop_key = jax.random.key(0)  # a fixed key: dropout masks cost the same whatever they are

    def train_step(carry: step.TrainState, x, y):
        return step.train_step(model, tx, carry, x, y, drop_key)

    def infer_step(params, state, x):
        return model.apply(params, state, x, train=False)[0]

    return step.init(model, jax.random.key(0), in_shape, tx), train_step, infer_step


def _model_program(
    name: str, *, input_size: int, batch: int, dtype: str = "float32", measure: str = "train",
    conv_impl: str | None = "auto", num_classes: int = 10, compile_options: str = "auto", **options: Any,
) -> tuple[Run, float, dict[str, Any], float]:
    """One row's program as ``run(n)``, its compile seconds, the row's description, and FLOPs per call."""
    model = models.get(name, num_classes=num_classes, **options)
    if conv_impl:
        model = with_conv_impl(model, conv_impl)
    if dtype != "float32":
        model = mixed_precision(model, dtype)
    c = models.entry(name).input_shape[-1]
    in_shape = (input_size, input_size, c)
    macs = summary(model, in_shape).totals.macs
    carry, train_step, infer_step = _steps(model, in_shape)
    x = jax.random.normal(jax.random.key(1), (batch, *in_shape), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if measure == "train":
        fn, args, flops = train_step, (carry, x, y), 3 * 2 * macs * batch
    else:
        fn, args, flops = infer_step, (carry.params, carry.state, x), 2 * macs * batch
    with lowerings_used() as ran:  # which lowerings 'auto' (or a fallback) resolved to, for the table
        t0 = time.perf_counter()
        choice = xla_options.resolve(compile_options, fn, args, label=f"bench {name} {measure}")
        tune_s = time.perf_counter() - t0
        run, compile_s = _program(fn, args, carry=measure == "train", compiler_options=choice.options)
    row = {"model": name, "input": f"{input_size}x{input_size}x{c}", "batch": batch, "dtype": dtype,
           "measure": measure, "conv_impl": conv_impl, "lowerings": sorted(ran), "compile_options": choice.name,
           "tune_s": tune_s, "tune": choice.record(), "macs_per_image": macs}
    return run, compile_s, row, flops


def _row(row: dict[str, Any], compile_s: float, flops: float, s: Series) -> BenchRow:
    """A row's description with its measured figures."""
    return BenchRow(**row, **{"compile_s": compile_s, "first_call_s": s.first_call_s,
            "step_ms_median": 1e3 * s.median, "step_ms_low": 1e3 * s.low, "step_ms_high": 1e3 * s.high,
            "reps": len(s.rep_s), "calls_per_rep": s.calls_per_rep, "images_per_s": row["batch"] / s.median,
            "achieved_flops": flops / s.median, "max_other_load": s.max_other_load,
            "disturbed_reps": s.disturbed_reps, "redone_reps": s.redone_reps,
            "device_memory_peak_bytes": memory_in_use()})


def bench_model(
    name: str, *, input_size: int, batch: int, dtype: str = "float32", measure: str = "train",
    conv_impl: str | None = "auto", num_classes: int = 10, quick: bool = False, compile_options: str = "auto",
    **options: Any,
) -> BenchRow:
    """Benchmark one registry model alone (``measure``: "train" or "infer"); its row without ``percent_of_peak``.

    ``compile_options``: "auto" picks XLA options per program by measurement and accuracy
    (:mod:`jaxcnn.lowering.compile_options`; tuning time is reported apart from compile time), or a candidate name.
    """
    run_, compile_s, row, flops = _model_program(
        name, input_size=input_size, batch=batch, dtype=dtype, measure=measure, conv_impl=conv_impl,
        num_classes=num_classes, compile_options=compile_options, **options)
    reps, secs = (2, 0.1) if quick else (5, 1.0)
    s = _timed_series({"row": run_}, {"row": compile_s}, reps=reps, min_seconds=secs, meter=LoadMeter(),
                      max_other_load=0.25)["row"]
    return _row(row, compile_s, flops, s)


def run(
    specs: list[dict[str, Any]], *, quick: bool = False, dtypes: tuple[str, ...] = ("float32",),
    measures: tuple[str, ...] = MEASURES, max_other_load: float = 0.25,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every spec x dtype x measure and the peak of each dtype, all interleaved in one run.

    A spec may carry its own ``dtypes`` tuple (e.g. bfloat16 only where it is worth the time).
    The report's ``warnings`` name every row (and peak) that other processes disturbed and an unsteady peak.
    """
    wanted = set(dtypes) | {dt for spec in specs for dt in spec.get("dtypes", ())}
    runs: dict[str, Run] = {}
    compile_s: dict[str, float] = {}
    peak_programs = {}
    for dt in sorted(wanted, key=lambda d: d != "float32"):
        peak_programs[dt] = _peak_programs(dt, quick)
        for kind, (r, c, _, _) in peak_programs[dt].items():
            runs[f"peak {dt} {kind}"], compile_s[f"peak {dt} {kind}"] = r, c
    described = []
    for spec in specs:
        spec = dict(spec)
        for dt in spec.pop("dtypes", dtypes):
            for measure in measures:
                r, c, row, flops = _model_program(**spec, dtype=dt, measure=measure)
                key = f"{len(described)} {row['model']} {dt} {measure}"
                runs[key], compile_s[key] = r, c
                described.append((key, row, flops))
    reps, secs = (2, 0.1) if quick else (5, 1.0)
    series = _timed_series(runs, compile_s, reps=reps, min_seconds=secs, meter=LoadMeter(),
                           max_other_load=max_other_load, log=log)
    peaks = {dt: _peak_record(p, {k: series[f"peak {dt} {k}"] for k in p}) for dt, p in peak_programs.items()}
    rows, warnings = [], []
    for key, row, flops in described:
        r = _row(row, compile_s[key], flops, series[key])
        r = replace(r, percent_of_peak=100 * r.achieved_flops / peaks[r.dtype]["peak_flops"])
        rows.append(r)
        if r.disturbed_reps:
            warnings.append(f"{r.model} {r.dtype} {r.measure}: {r.disturbed_reps} of {r.reps} "
                            f"repetitions ran while other processes used up to {r.max_other_load:.2f} cores")
    for dt, p in peaks.items():
        for kind in ("matmul", "conv"):
            if series[f"peak {dt} {kind}"].disturbed_reps:
                warnings.append(f"peak {dt} {kind}: disturbed by other processes (up to "
                                f"{p[f'{kind}_max_other_load']:.2f} cores)")
        if not p["steady"]:
            warnings.append(f"peak {dt}: repetitions spread by {max(p['matmul_spread'], p['conv_spread']):.0%} "
                            f"(> {PEAK_SPREAD_LIMIT:.0%}); the machine was not steady, % of peak is unreliable")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    timing = {"reps": reps, "min_seconds": secs, "max_other_load": max_other_load, "interleaved": True,
              "peak": "best-of repetitions of the matmul and the conv, the larger; % of peak = median / that"}
    return {"device": device_info(), "peaks": peaks, "rows": rows, "warnings": warnings, "timing": timing}


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (plus the measured peaks, their definition and any warning)."""
    lines = [
        "| model | input | batch | dtype | measure | conv | XLA options | MMAC/img | first call s | step ms (min-max) |"
        " images/s | GFLOP/s | % of peak |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        r = r if isinstance(r, BenchRow) else BenchRow.from_dict(r)
        lines.append(
            f"| {r.model} | {r.input} | {r.batch} | {r.dtype} | {r.measure} | {_conv_column(r)} "
            f"| {r.compile_options} | {r.macs_per_image / 1e6:.2f} | {r.first_call_s:.1f} "
            f"| {r.step_ms_median:.1f} ({r.step_ms_low:.1f}-{r.step_ms_high:.1f}) "
            f"| {r.images_per_s:,.0f} | {r.achieved_flops / 1e9:.1f} | {r.percent_of_peak or 0:.0f} |"
        )
    for dt, p in report["peaks"].items():
        lines.append(
            f"\npeak {dt}: {p['peak_flops'] / 1e9:.1f} GFLOP/s = best of matmul {p['matmul_shape']} "
            f"{p['matmul_flops'] / 1e9:.1f} (median {p['matmul_flops_median'] / 1e9:.1f}, spread "
            f"{p['matmul_spread']:.0%}) and conv {p['conv_shape']} {p['conv_flops'] / 1e9:.1f} (median "
            f"{p['conv_flops_median'] / 1e9:.1f}, spread {p['conv_spread']:.0%})" + ("" if p["steady"] else
                                                                                   "; UNSTEADY")
        )
    lines.append("\n% of peak: a row's median FLOP/s (analytic MACs) over the peak, the faster best-of repetitions "
                 "of the two peak programs, timed interleaved with the rows; first call = compile + one step")
    lines.extend(f"\nwarning: {w}" for w in report.get("warnings", []))
    d = report["device"]
    lines.append(f"\ndevice: {d['backend']} {d['device_kind']} x{d['device_count']} ({d.get('cpu', '')}), "
                 f"jax {d['jax']}; {d.get('host_malloc', '')}")
    return "\n".join(lines)


def _conv_column(r: BenchRow) -> str:
    """The requested lowering and, when it differs, the ones that ran (e.g. ``auto: native+phase+xla``)."""
    ran = r.lowerings or []
    return str(r.conv_impl) if ran == [r.conv_impl] or not ran else f"{r.conv_impl}: {'+'.join(ran)}"


def to_json(report: dict[str, Any]) -> str:
    """JSON text of the report."""
    return json.dumps(report, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))

