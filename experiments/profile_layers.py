"""Per-layer profile of training: forward, input gradient, weight gradient and BatchNorm, jaxcnn vs PyTorch.

Command: python experiments/profile_layers.py [--models allconv6:32:128,mbv1_1.0:32:128,mbv1_0.25:32:128]
                                              [--reps 5] [--min-ms 30] [--markdown out.md]
         python experiments/profile_layers.py --models mbv1_1.0:224:8      (the optional 224x224 case)
         python experiments/profile_layers.py --step --min-ms 300   (whole train steps, dense rule off/on)
Expected runtime on the 2-core CPU: about 4 minutes for the three default cases (one compile per
layer and direction, then interleaved timing).

For every convolution of allconv6 (5 x conv3x3 stride 2 + bias) and MobileNet v1 (width 1.0 or 0.25;
conv3x3 stride 2, then 13 x [depthwise 3x3, pointwise 1x1]), at the shapes the layer sees in the
model, it times (median of ``--reps`` interleaved repetitions, each ``>= --min-ms``):

* ``fwd``: the convolution (+ bias) alone;
* ``dx``: the input gradient alone (the first layer's is never needed in training, shown anyway);
* ``dW``: the weight (+ bias) gradient alone, with jaxcnn's default lowering (``auto``) and, as
  ``dW before``, with the lowering ``auto`` picked before the native dense weight gradient
  (``phase`` for strided, ``xla`` otherwise; depthwise layers: the native kernel in both);
* ``BN``: BatchNorm in training mode after the layer, forward and backward (allconv6 has none);
* the same four in PyTorch eager, channels_last (``torch.nn.Conv2d`` / ``BatchNorm2d``, autograd
  with only the input or only the weight requiring grad), in the same process, right after the
  layer's jaxcnn timings (interleaved among themselves, not with JAX's: switching between the two
  runtimes' thread pools call by call slowed PyTorch 10-100x on the shared 2-core machine).

Every timing is of the operation alone in its own program, so fusion with neighbours (ReLU,
BatchNorm) that a whole train step gets is not included, and each call writes a fresh output
buffer (its page faults are charged to the operation: about 0.9 ms for an 8 MB output on the Xeon
of README's tables), which a model's intermediate buffers do not pay. Route by whole programs.
The table goes into README ("Speed").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jaxcnn.layers.normalization import BatchNorm  # noqa: E402
from jaxcnn.lowering import conv as convmod  # noqa: E402


@dataclass(frozen=True)
class ConvLayer:
    """One convolution as the model runs it."""

    name: str
    n: int
    h: int
    cin: int
    cout: int
    k: int
    stride: int
    pad: int
    groups: int
    bias: bool
    bn: bool

    @property
    def out_h(self) -> int:
        """Output height (= width)."""
        return (self.h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def mflop(self) -> float:
        """Forward multiply-adds x 2, in millions."""
        return 2 * self.n * self.out_h ** 2 * self.k ** 2 * self.cin // self.groups * self.cout / 1e6


def layers_of(case: str) -> list[ConvLayer]:
    """The convolutions of ``allconv6:SIZE:BATCH`` or ``mbv1_ALPHA:SIZE:BATCH``."""
    model, size, batch = case.split(":")
    size, n = int(size), int(batch)
    out = []
    if model == "allconv6":
        c, h = 3, size
        for i, co in enumerate((64, 64, 128, 128, 256), start=1):
            lay = ConvLayer(f"conv{i}", n, h, c, co, 3, 2, 1, 1, True, False)
            out.append(lay)
            c, h = co, lay.out_h
        return out
    if not model.startswith("mbv1_"):
        raise SystemExit(f"--models: {case!r}: expected allconv6:SIZE:BATCH or mbv1_ALPHA:SIZE:BATCH")
    alpha = float(model[5:])
    from jaxcnn.models.mobilenet import BLOCKS

    c = int(32 * alpha)
    out.append(ConvLayer("conv0", n, size, 3, c, 3, 2, 1, 1, False, True))
    h = out[0].out_h
    for i, (co, s) in enumerate(BLOCKS, start=1):
        co = int(co * alpha)
        dw = ConvLayer(f"b{i}.dw", n, h, c, c, 3, s, 1, c, False, True)
        out.append(dw)
        h = dw.out_h
        out.append(ConvLayer(f"b{i}.pw", n, h, c, co, 1, 1, 0, 1, False, True))
        c = co
    return out


def _jax_fns(lay: ConvLayer, impl: str) -> dict[str, Callable]:
    stride, pads = (lay.stride,) * 2, ((lay.pad,) * 2,) * 2

    def f(x, w, b):
        return convmod.conv2d(x, w, stride, pads, (1, 1), lay.groups, impl, b)

    fns = {
        "fwd": jax.jit(f),
        "dx": jax.jit(lambda x, w, b, ct: jax.vjp(lambda x_: f(x_, w, b), x)[1](ct)),
        "dW": jax.jit(lambda x, w, b, ct: jax.vjp(lambda w_, b_: f(x, w_, b_), w, b)[1](ct)),
    }
    return fns


def _jax_bn(lay: ConvLayer):
    bn = BatchNorm()
    shape = (lay.out_h, lay.out_h, lay.cout)
    params, state = bn.init(jax.random.key(0), shape)

    def loss(p, y, ct):
        out, _ = bn.apply(p, state, y, train=True)
        return jnp.vdot(out, ct)

    return jax.jit(lambda y, ct: jax.grad(loss, argnums=(0, 1))(params, y, ct))


def _torch_fns(lay: ConvLayer, threads: int):
    import torch

    torch.set_num_threads(threads)
    cl = torch.channels_last
    conv = torch.nn.Conv2d(lay.cin, lay.cout, lay.k, lay.stride, lay.pad, groups=lay.groups, bias=lay.bias)
    conv = conv.to(memory_format=cl)
    x = torch.randn(lay.n, lay.cin, lay.h, lay.h).to(memory_format=cl)
    ct = torch.randn(lay.n, lay.cout, lay.out_h, lay.out_h).to(memory_format=cl)

    def fwd():
        with torch.no_grad():
            conv(x)

    def dx():
        xi = x.detach().requires_grad_(True)
        for p in conv.parameters():
            p.requires_grad_(False)
        conv(xi).backward(ct)

    def dw():
        for p in conv.parameters():
            p.requires_grad_(True)
            p.grad = None
        conv(x).backward(ct)

    fns = {"fwd": fwd, "dx": dx, "dW": dw}
    if lay.bn:
        bn = torch.nn.BatchNorm2d(lay.cout).to(memory_format=cl)
        y = torch.randn(lay.n, lay.cout, lay.out_h, lay.out_h).to(memory_format=cl)

        def bnf():
            yi = y.detach().requires_grad_(True)
            bn(yi).backward(ct)

        fns["BN"] = bnf
    return fns


def _time(fn: Callable[[], object], min_s: float, calls: int | None) -> tuple[float, int]:
    """Seconds per call over a run of ``calls`` calls (calibrated to ``min_s`` when None)."""
    if calls is None:
        calls, t = 1, 0.0
        while True:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            t = time.perf_counter() - t0
            if t >= min_s:
                break
            calls = max(calls + 1, int(calls * min(10.0, 1.5 * min_s / max(t, 1e-6))))
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls, calls


def _profile_layer(lay: ConvLayer, rng: np.random.Generator, reps: int, min_s: float, threads: int, torch_on: bool,
                   routing: bool) -> dict:
    x = jnp.asarray(rng.standard_normal((lay.n, lay.h, lay.h, lay.cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((lay.k, lay.k, lay.cin // lay.groups, lay.cout)) * 0.1, jnp.float32)
    b = jnp.zeros((lay.cout,), jnp.float32) if lay.bias else None
    ct = jnp.asarray(rng.standard_normal((lay.n, lay.out_h, lay.out_h, lay.cout)), jnp.float32)

    def call(fns: dict, d: str) -> Callable[[], object]:
        f = fns[d]
        return lambda: jax.block_until_ready(f(x, w, b) if d == "fwd" else f(x, w, b, ct))

    with convmod.lowerings_used() as ran:
        auto = _jax_fns(lay, "auto")
        jax.block_until_ready(auto["dW"](x, w, b, ct))
    before_impl = "native" if lay.groups > 1 else ("phase" if lay.stride > 1 else "xla")
    cands = {d: call(auto, d) for d in ("fwd", "dx", "dW")}
    cands["dW before"] = call(_jax_fns(lay, before_impl), "dW")
    if routing and lay.groups == 1:  # the candidates auto's rules choose between (printed, not tabled)
        for impl in ("xla", "phase", "native") + (("dot",) if lay.k == 1 and lay.stride == 1 else ()):
            fns = _jax_fns(lay, impl)
            for d in fns:
                cands[f"{d} {impl}"] = call(fns, d)
    if lay.bn:
        bnf = _jax_bn(lay)
        cands["BN"] = lambda: jax.block_until_ready(bnf(ct, ct))
    row = {"layer": lay, "lowering": "+".join(sorted(ran))}
    row.update(_medians(cands, reps, min_s))
    if torch_on:  # timed apart from JAX: alternating the two runtimes' thread pools on 2 cores slowed torch 10-100x
        row.update(_medians({f"torch {k}": f for k, f in _torch_fns(lay, threads).items()}, reps, min_s))
    return row


def _medians(cands: dict[str, Callable[[], object]], reps: int, min_s: float) -> dict[str, float]:
    for f in cands.values():  # compile / warm up
        f()
    calls = {k: _time(f, min_s, None)[1] for k, f in cands.items()}
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(reps):  # interleaved: a busy moment of the shared machine hits all alike
        for k, f in cands.items():
            times[k].append(_time(f, min_s, calls[k])[0])
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def profile(case: str, reps: int, min_s: float, threads: int, torch_on: bool, routing: bool = False) -> list[dict]:
    """Per-layer medians (ms) of every direction, jaxcnn and PyTorch, for one case."""
    rows = []
    rng = np.random.default_rng(0)
    for lay in layers_of(case):
        row = _profile_layer(lay, rng, reps, min_s, threads, torch_on, routing)
        rows.append(row)
        print(f"  {case} {lay.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)),
              file=sys.stderr, flush=True)
    return rows


def _step_fn(case: str, dense_native: bool) -> tuple[Callable[[], object], str]:
    """One jitted train step (forward, loss, backward, SGD) of the case's model, with or without the dense rule."""
    from jaxcnn import models

    model, size, batch = case.split(":")
    size, n = int(size), int(batch)
    net = (models.get("allconv6", num_classes=10) if model == "allconv6"
           else models.get("mobilenet_v1", width=float(model[5:]), num_classes=10, padding=1))
    params, state = net.init(jax.random.key(0), (size, size, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)

    def loss(p, s):
        out, s = net.apply(p, s, x, train=True)
        return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(n), y]), s

    def step(p, s):
        (_, s), g = jax.value_and_grad(loss, has_aux=True)(p, s)
        return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), s

    rules = convmod.dense_native_wins, convmod.dot_wins
    try:  # "before": the rules say no, so auto picks what it picked before the native dense kernel
        if not dense_native:
            convmod.dense_native_wins, convmod.dot_wins = (lambda *a: False), (lambda *a: False)
        with convmod.lowerings_used() as ran:
            exe = jax.jit(step).lower(params, state).compile()
    finally:
        convmod.dense_native_wins, convmod.dot_wins = rules
    return (lambda: jax.block_until_ready(exe(params, state))), "+".join(sorted(ran))


def step_ab(case: str, reps: int, min_s: float) -> str:
    """Whole train steps with the dense rule on and off, interleaved; one markdown row."""
    fns = {on: _step_fn(case, on) for on in (False, True)}
    for f, _ in fns.values():
        f()
    calls = {on: _time(f, min_s, None)[1] for on, (f, _) in fns.items()}
    times: dict[bool, list[float]] = {on: [] for on in fns}
    for _ in range(reps):
        for on, (f, _) in fns.items():
            times[on].append(_time(f, min_s, calls[on])[0])
    off, on = (1e3 * statistics.median(times[k]) for k in (False, True))
    n = int(case.split(":")[2])
    return (f"| {case} | {fns[False][1]} | {off:.1f} | {n / off * 1e3:,.0f} | {fns[True][1]} | {on:.1f} | "
            f"{n / on * 1e3:,.0f} | {off / on:.2f} |")


COLS = ("fwd", "dx", "dW", "dW before", "BN", "torch fwd", "torch dx", "torch dW", "torch BN")


def markdown(case: str, rows: list[dict]) -> str:
    """One markdown table for a case, with a totals row."""
    head = "| layer | in -> out | k/s | MFLOP | lowering | " + " | ".join(f"{c} ms" for c in COLS) + " |"
    lines = [f"**{case}**", "", head, "|" + "---|" * 5 + "---:|" * len(COLS)]
    tot = dict.fromkeys(COLS, 0.0)
    for r in rows:
        lay = r["layer"]
        cells = []
        for c in COLS:
            v = r.get(c)
            if c == "dx" and lay.name in ("conv0", "conv1"):
                cells.append(f"({v:.2f})")  # the first layer's input gradient is not computed in training
                continue
            cells.append("" if v is None else f"{v:.2f}")
            tot[c] += v or 0.0
        kind = "dw" if lay.groups > 1 else "dense"
        lines.append(f"| {lay.name} | {lay.h}x{lay.h}x{lay.cin} -> {lay.out_h}x{lay.out_h}x{lay.cout} | "
                     f"{lay.k}/{lay.stride} {kind} | {lay.mflop:.0f} | {r['lowering']} | " + " | ".join(cells) + " |")
    lines.append("| **total** (training: dx of the first layer left out) | | | | | "
                 + " | ".join(f"**{tot[c]:.1f}**" for c in COLS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the profile and print its markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="allconv6:32:128,mbv1_1.0:32:128,mbv1_0.25:32:128")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-ms", type=float, default=30.0)
    ap.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-torch", action="store_true", help="jaxcnn only")
    ap.add_argument("--markdown", help="also write the tables to this file")
    ap.add_argument("--step", action="store_true",
                    help="instead: whole train steps (SGD, XLA default options) before/after the native dense rule")
    ap.add_argument("--routing", action="store_true",
                    help="also time every lowering auto chooses between (xla, phase, native, dot), printed per layer")
    args = ap.parse_args(argv)
    torch_on = not args.no_torch
    if torch_on:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("profile_layers: torch is not installed (pip install -e '.[peers]'); timing jaxcnn only",
                  file=sys.stderr)
            torch_on = False
    if args.step:
        print("| case | before: lowerings | ms | img/s | after: lowerings | ms | img/s | speed-up |\n"
              "|---|---|---:|---:|---|---:|---:|---:|")
        for case in args.models.split(","):
            print(step_ab(case, args.reps, args.min_ms / 1e3), flush=True)
        return 0
    parts = []
    for case in args.models.split(","):
        rows = profile(case, args.reps, args.min_ms / 1e3, args.torch_threads, torch_on, args.routing)
        parts.append(markdown(case, rows))
    from jaxcnn.bench import device_info

    text = "\n\n".join(parts) + (
        f"\n\nmedian of {args.reps} interleaved repetitions (each >= {args.min_ms:g} ms), float32; "
        f"torch threads {args.torch_threads}; {device_info()}\n")
    print(text)
    if args.markdown:
        from jaxcnn.storage.files import atomic_write_text

        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
