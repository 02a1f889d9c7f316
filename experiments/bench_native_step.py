"""Whole MobileNet v1 train/infer steps with the native depthwise kernels on and off, in one process.

Both variants use ``conv_impl="auto"``; "off" is ``jaxcnn.lowering.native.set_enabled(False)`` (today's
lowerings: ``shift`` for depthwise). The variants alternate per workload, so a shared machine's
load hits both alike; compare the ratios. About 5 minutes on the 2-core CPU. XLA options are
chosen per program as everywhere else (``--compile-options`` of the bench CLI pins them).

    python experiments/bench_native_step.py
"""

from __future__ import annotations

from jaxcnn import bench
from jaxcnn.lowering import native

WORKLOADS = ((32, 128), (224, 8))


def main() -> None:
    for size, batch in WORKLOADS:
        for measure in ("train", "infer"):
            for on in (False, True):
                native.set_enabled(on)
                r = bench.bench_model("mobilenet_v1", input_size=size, batch=batch, measure=measure, conv_impl="auto")
                print(f"mobilenet_v1 {size}x{size} b{batch} {measure} native={'on' if on else 'off'} "
                      f"[{'+'.join(r.lowerings)}]: {r.images_per_s:.1f} img/s, step {r.step_ms_median:.1f} ms "
                      f"({r.step_ms_low:.1f}-{r.step_ms_high:.1f}), compile {r.compile_s:.1f} s", flush=True)
    native.set_enabled(None)


if __name__ == "__main__":
    main()
