"""Benchmarks: how fast each model trains and infers here, and how close to the device limit.

For each (model, batch, dtype, mode) the report gives compile time, the median step
time and its spread over repetitions, images/s, achieved FLOP/s from the analytic
MACs (inference 2 x MACs per image; training 3 x that, the usual estimate), and that
as a percentage of the device's measured peak: a large matmul and a dense 3x3
convolution timed in the same run. Timing: one warm-up call, then repetitions of
enough calls to last ``min_seconds`` each; results are blocked on (async dispatch
counted). Run one benchmark process at a time: on 2 cores an overlapping process can
slow a step by orders of magnitude.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn import models
from jaxcnn.core import Layer
from jaxcnn.lowering import compile_options as xla_options
from jaxcnn.lowering.conv import lowerings_used
from jaxcnn.summary import summary
from jaxcnn.train import step
from jaxcnn.train.config import TrainConfig
from jaxcnn.train.optimizers import make_optimizer
from jaxcnn.transforms import mixed_precision, with_conv_impl


@dataclass
class Timing:
    """Per-call seconds: median over repetitions, min and max, and compile time."""

    median: float
    low: float
    high: float
    reps: int
    calls_per_rep: int
    compile_seconds: float


def time_calls(
    fn: Callable[..., Any], args: tuple, *, reps: int = 5, min_seconds: float = 1.0, carry: bool = False,
    compiler_options: dict[str, str] | None = None,
) -> Timing:
    """Time ``fn(*args)``; with ``carry=True`` the output's first element replaces ``args[0]`` (donation)."""
    t0 = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=(0,) if carry else (), compiler_options=compiler_options or {})
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    state = list(args)

    def call(n: int) -> None:
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

    call(1)  # warm-up
    t = time.perf_counter()
    call(1)
    one = max(time.perf_counter() - t, 1e-6)
    n = max(1, int(min_seconds / one))
    per_call = []
    for _ in range(reps):
        t = time.perf_counter()
        call(n)
        per_call.append((time.perf_counter() - t) / n)
    return Timing(statistics.median(per_call), min(per_call), max(per_call), reps, n, compile_s)


def device_info() -> dict[str, Any]:
    """Backend, device kind and count, versions, and CPU model where readable."""
    d = jax.devices()[0]
    info = {
        "backend": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
        "jax": jax.__version__, "python": platform.python_version(), "machine": platform.machine(),
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


def peak_flops(dtype: str = "float32", *, quick: bool = False) -> dict[str, float]:
    """Measured FLOP/s of a square matmul and of a dense 3x3 convolution (the device's practical peak)."""
    dt = jnp.dtype(dtype)
    n = 512 if quick else (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    mm = time_calls(lambda x, y: x @ y, (a, a), reps=3 if quick else 5, min_seconds=0.2 if quick else 1.0)
    b, hw, c = (2, 28, 32) if quick else (32, 56, 64)
    x = jax.random.normal(jax.random.key(1), (b, hw, hw, c), dt)
    w = jax.random.normal(jax.random.key(2), (3, 3, c, c), dt)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    cv = time_calls(conv, (x, w), reps=3 if quick else 5, min_seconds=0.2 if quick else 1.0)
    return {
        "matmul_n": n, "matmul_flops": 2 * n**3 / mm.median,
        "conv_shape": f"{b}x{hw}x{hw}x{c}->{c} 3x3", "conv_flops": 2 * b * hw * hw * c * c * 9 / cv.median,
    }


def _steps(model: Layer, in_shape: tuple[int, ...]):
    """The engine's own programs: ``jaxcnn.train.step.train_step`` with the default recipe's optimizer, and apply."""
    tx = make_optimizer(TrainConfig(), 100, model)  # momentum, decoupled weight decay, cosine: what fit runs
    drop_key = jax.random.key(0)  # a fixed key: dropout masks cost the same whatever they are

    def train_step(carry: step.TrainState, x, y):
        return step.train_step(model, tx, carry, x, y, drop_key)

    def infer_step(params, state, x):
        return model.apply(params, state, x, train=False)[0]

    return step.init(model, jax.random.key(0), in_shape, tx), train_step, infer_step


def bench_model(
    name: str, *, input_size: int, batch: int, dtype: str = "float32", mode: str = "train",
    conv_impl: str | None = "auto", num_classes: int = 10, quick: bool = False, compile_options: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Benchmark one registry model; returns a flat record (see the module docstring).

    ``compile_options``: "auto" picks XLA options per program by measurement and accuracy
    (:mod:`jaxcnn.lowering.compile_options`; tuning time is reported apart from compile time), or a candidate name.
    """
    model = models.get(name, num_classes=num_classes, **options)
    if conv_impl:
        model = with_conv_impl(model, conv_impl)
    if dtype != "float32":
        model = mixed_precision(model, dtype)
    c = models.entry(name).input_shape[-1]
    in_shape = (input_size, input_size, c)
    macs = summary(model, in_shape).totals["macs"]
    carry, train_step, infer_step = _steps(model, in_shape)
    x = jax.random.normal(jax.random.key(1), (batch, *in_shape), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
    reps, secs = (2, 0.1) if quick else (5, 1.0)
    if mode == "train":
        fn, args, flops = train_step, (carry, x, y), 3 * 2 * macs * batch
    elif mode == "infer":
        fn, args, flops = infer_step, (carry.params, carry.state, x), 2 * macs * batch
    else:
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
    with lowerings_used() as ran:  # which lowerings 'auto' (or a fallback) resolved to, for the table
        t0 = time.perf_counter()
        choice = xla_options.resolve(compile_options, fn, args, label=f"bench {name} {mode}")
        tune_s = time.perf_counter() - t0
        t = time_calls(fn, args, reps=reps, min_seconds=secs, carry=mode == "train",
                       compiler_options=choice.options)
    return {
        "model": name, "input": f"{input_size}x{input_size}x{c}", "batch": batch, "dtype": dtype, "mode": mode,
        "conv_impl": conv_impl, "lowerings": sorted(ran), "compile_options": choice.name, "tune_s": tune_s,
        "tune": choice.record(), "macs_per_image": macs, "compile_s": t.compile_seconds,
        "step_ms_median": 1e3 * t.median, "step_ms_low": 1e3 * t.low, "step_ms_high": 1e3 * t.high,
        "reps": t.reps, "calls_per_rep": t.calls_per_rep, "images_per_s": batch / t.median,
        "achieved_flops": flops / t.median, "device_memory_peak_bytes": memory_in_use(),
    }


def run(
    specs: list[dict[str, Any]], *, quick: bool = False, dtypes: tuple[str, ...] = ("float32",),
    modes: tuple[str, ...] = ("train", "infer"),
) -> dict[str, Any]:
    """Benchmark every spec x dtype x mode; peaks measured in the same run for each dtype.

    A spec may carry its own ``dtypes`` tuple (e.g. bfloat16 only where it is worth the time).
    """
    wanted = set(dtypes) | {dt for spec in specs for dt in spec.get("dtypes", ())}
    peaks = {dt: peak_flops(dt, quick=quick) for dt in sorted(wanted, key=lambda d: d != "float32")}
    rows = []
    for spec in specs:
        spec = dict(spec)
        for dt in spec.pop("dtypes", dtypes):
            for mode in modes:
                r = bench_model(**spec, dtype=dt, mode=mode, quick=quick)
                best = max(peaks[dt]["matmul_flops"], peaks[dt]["conv_flops"])
                r["percent_of_peak"] = 100 * r["achieved_flops"] / best
                rows.append(r)
    return {"device": device_info(), "peaks": peaks, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (plus the measured peaks)."""
    lines = [
        "| model | input | batch | dtype | mode | conv | XLA options | MMAC/img | compile s | step ms (min-max) |"
        " images/s | GFLOP/s | % of peak |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['batch']} | {r['dtype']} | {r['mode']} | {_conv_column(r)} "
            f"| {r.get('compile_options', 'xla')} "
            f"| {r['macs_per_image'] / 1e6:.2f} | {r['compile_s']:.1f} "
            f"| {r['step_ms_median']:.1f} ({r['step_ms_low']:.1f}-{r['step_ms_high']:.1f}) "
            f"| {r['images_per_s']:,.0f} | {r['achieved_flops'] / 1e9:.1f} | {r['percent_of_peak']:.0f} |"
        )
    for dt, p in report["peaks"].items():
        lines.append(
            f"\npeak {dt}: matmul {p['matmul_n']}^3 {p['matmul_flops'] / 1e9:.1f} GFLOP/s; "
            f"conv {p['conv_shape']} {p['conv_flops'] / 1e9:.1f} GFLOP/s"
        )
    d = report["device"]
    lines.append(f"\ndevice: {d['backend']} {d['device_kind']} x{d['device_count']} ({d.get('cpu', '')}), "
                 f"jax {d['jax']}")
    return "\n".join(lines)


def _conv_column(r: dict[str, Any]) -> str:
    """The requested lowering and, when it differs, the ones that ran (e.g. ``auto: native+phase+xla``)."""
    ran = r.get("lowerings") or []
    return r["conv_impl"] if ran == [r["conv_impl"]] or not ran else f"{r['conv_impl']}: {'+'.join(ran)}"


def to_json(report: dict[str, Any]) -> str:
    """JSON text of the report."""
    return json.dumps(report, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))

