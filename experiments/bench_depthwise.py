"""Depthwise 3x3 convolution, layer by layer: native kernel vs shift vs XLA, forward and gradients.

MobileNet v1's depthwise layer shapes at 32x32 (stem stride 1, batch 128) and 224x224 (batch 8).
Candidates are interleaved round by round in one process and the median per call is reported
(the machine is shared, so compare ratios).

    python experiments/bench_depthwise.py [--size 32|224|both] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.lowering import native
from jaxcnn.lowering.conv import conv2d

# (H=W, channels, stride) of the 13 depthwise layers; input-size -> batch
SHAPES = {
    32: (128, [(32, 32, 1), (32, 64, 2), (16, 128, 1), (16, 128, 2), (8, 256, 1), (8, 256, 2), (4, 512, 1),
               (4, 512, 2), (2, 1024, 1)]),
    224: (8, [(112, 32, 1), (112, 64, 2), (56, 128, 1), (56, 128, 2), (28, 256, 1), (28, 256, 2), (14, 512, 1),
              (14, 512, 2), (7, 1024, 1)]),
}
# how many times each shape occurs in MobileNet v1 (the 14x14x512 / 4x4x512 block is repeated 5 times)
REPEAT = {(14, 512, 1): 5, (4, 512, 1): 5}
IMPLS = ("native", "shift", "xla")


def _pads(h, s):
    out = -(-h // s)
    total = max((out - 1) * s + 3 - h, 0)
    return ((total // 2, total - total // 2),) * 2


def _fns(impl, stride, pads, c):
    def f(x, w):
        return conv2d(x, w, (stride, stride), pads, (1, 1), c, impl)

    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w, ct: jax.vjp(lambda x: f(x, w), x)[1](ct)[0])
    dw = jax.jit(lambda x, w, ct: jax.vjp(lambda w: f(x, w), w)[1](ct)[0])
    return {"fwd": fwd, "dx": dx, "dw": dw}


def _time(fn, args, n):
    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
        jax.block_until_ready(out)
    return (time.perf_counter() - t) / n


def bench(size: int, rounds: int) -> None:
    batch, shapes = SHAPES[size]
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"\n## {size}x{size}, batch {batch}, XLA_FLAGS={flags!r}, native={native.available()}")
    print("| H=W | C | stride | kernel | native ms | shift ms | xla ms | shift/native | xla/native |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    totals = {i: {k: 0.0 for k in ("fwd", "dx", "dw")} for i in IMPLS}
    rng = np.random.default_rng(0)
    for h, c, s in shapes:
        pads = _pads(h, s)
        x = jnp.asarray(rng.normal(size=(batch, h, h, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)
        oh = -(-h // s)
        ct = jnp.asarray(rng.normal(size=(batch, oh, oh, c)), jnp.float32)
        fns = {i: _fns(i, s, pads, c) for i in IMPLS}
        for kind in ("fwd", "dx", "dw"):
            args = (x, w) if kind == "fwd" else (x, w, ct)
            one = _time(fns["xla"][kind], args, 1)
            n = max(1, int(0.05 / max(one, 1e-5)))
            samples = {i: [] for i in IMPLS}
            for _ in range(rounds):
                for i in IMPLS:
                    samples[i].append(_time(fns[i][kind], args, n))
            med = {i: 1e3 * statistics.median(v) for i, v in samples.items()}
            for i in IMPLS:
                totals[i][kind] += med[i] * REPEAT.get((h, c, s), 1)
            print(f"| {h} | {c} | {s} | {kind} | {med['native']:.3f} | {med['shift']:.3f} | {med['xla']:.3f} "
                  f"| {med['shift'] / med['native']:.2f} | {med['xla'] / med['native']:.2f} |", flush=True)
    print("\nwhole network (13 layers), ms: " + "; ".join(
        f"{i}: fwd {t['fwd']:.1f}, dx {t['dx']:.1f}, dw {t['dw']:.1f}" for i, t in totals.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["32", "224", "both"], default="both")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    for size in (32, 224) if a.size == "both" else (int(a.size),):
        bench(size, a.rounds)


if __name__ == "__main__":
    main()
