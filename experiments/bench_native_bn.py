"""One train step with BatchNorm's native sums against the same step with XLA's, interleaved in one process.

The two programs differ only in BatchNorm's sums (``jaxcnn.lowering.native_bn.applicable`` forced off
while the second is traced; every convolution lowers alike); both compile with XLA's default options.
Medians of interleaved repetitions, so a busy moment hurts both alike; about 2 minutes on the 2-core CPU.

    python experiments/bench_native_bn.py                      # the three workloads below
    python experiments/bench_native_bn.py mobilenet_v1         # one of them
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import models
from jaxcnn.lowering import native_bn
from jaxcnn.train import step

# (registry name, input size, batch, builder options): the width study's two families and the peer row
WORKLOADS = (("allconv6_bn", 28, 125, {}), ("mobilenet_v1/0.25", 32, 125, {"stem_stride": 1}),
             ("mobilenet_v1", 224, 8, {}))


def _step(name: str, size: int, batch: int, options: dict):
    model = models.get(name, num_classes=10, **options)
    channels = 1 if size == 28 else 3
    tx = optax.sgd(0.01, momentum=0.9)
    state = step.init(model, jax.random.key(0), (size, size, channels), tx)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, channels)), jnp.float32)
    y = jnp.asarray(np.arange(batch) % 10)

    def train(state, x, y):
        return step.train_step(model, tx, state, x, y, jax.random.key(1), unroll=True)[0]

    return jax.jit(train).lower(state, x, y).compile(), (state, x, y)


def main(names: list[str]) -> None:
    native = native_bn.applicable
    for name, size, batch, options in WORKLOADS:
        if names and name not in names:
            continue
        programs = {}
        for label, rule in (("native", native), ("xla", lambda x: False)):
            native_bn.applicable = rule
            try:
                programs[label] = _step(name, size, batch, options)
            finally:
                native_bn.applicable = native
        times: dict[str, list[float]] = {label: [] for label in programs}
        for exe, args in programs.values():  # warm-up
            jax.block_until_ready(exe(*args))
        for _ in range(7 if size >= 224 else 15):
            for label, (exe, args) in programs.items():
                t = time.perf_counter()
                jax.block_until_ready(exe(*args))
                times[label].append(time.perf_counter() - t)
        a, b = statistics.median(times["native"]), statistics.median(times["xla"])
        print(f"{name} {size}x{size} batch {batch}: native BatchNorm sums {1e3 * a:.1f} ms, XLA's {1e3 * b:.1f} ms "
              f"per train step (medians), {b / a:.3f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
