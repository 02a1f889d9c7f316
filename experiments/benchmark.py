"""Benchmark suite: train-step and inference speed of each model family on the device at hand.

Command: python experiments/benchmark.py                 (the README table; ~8 min on the 2-core CPU)
         python experiments/benchmark.py --quick         (seconds; checks the report, not the speed)
         python experiments/benchmark.py --suite full    (adds 224x224 VGG-16/ResNet-50; long on CPU)
Output: results/benchmark/{report.json, report.md, images_per_s.png, images_per_s.svg}

For each (model, input, batch, dtype, mode): compile time, median step time with its spread
over 5 repetitions (each >= 1 s), images/s, achieved FLOP/s from the analytic MACs (training
counted as 3 x forward), and the percentage of the device's measured peak (a matmul and a
dense 3x3 convolution timed in the same run). The same script runs on GPU and TPU: it only
uses jax.devices(). Run nothing else meanwhile: on 2 cores an overlapping process can slow a
step by orders of magnitude.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxcnn import bench
from jaxcnn.storage.files import atomic_write_text
from jaxcnn.study import plot

SUITES = {
    "quick": [dict(name="allconv6_1", input_size=16, batch=8)],
    "default": [
        dict(name="allconv6", input_size=32, batch=128, dtypes=("float32", "bfloat16")),
        dict(name="allconv6_1", input_size=32, batch=128),
        dict(name="mobilenet_v1", input_size=32, batch=128, dtypes=("float32", "bfloat16")),
        dict(name="mobilenet_v1/0.25", input_size=32, batch=128),
        dict(name="allconv6", input_size=224, batch=16),
        dict(name="mobilenet_v1", input_size=224, batch=8),
        dict(name="vgg16", input_size=32, batch=32),
        dict(name="resnet50", input_size=32, batch=32, small_input=True),
    ],
}
SUITES["full"] = SUITES["default"] + [
    dict(name="vgg16", input_size=224, batch=8),
    dict(name="resnet50", input_size=224, batch=8),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="default")
    parser.add_argument("--quick", action="store_true", help="same as --suite quick, with short repetitions")
    parser.add_argument("--dtypes", default="float32", help="comma-separated compute dtypes for every row "
                        "(rows of the suite may add bfloat16 themselves)")
    parser.add_argument("--out", default="results/benchmark")
    args = parser.parse_args(argv)
    suite = "quick" if args.quick else args.suite
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    report = bench.run([{**s, "num_classes": 10} for s in SUITES[suite]], quick=args.quick or suite == "quick",
                       dtypes=dtypes)
    out = Path(args.out)
    text = bench.markdown(report)
    atomic_write_text(out / "report.json", bench.to_json(report))
    atomic_write_text(out / "report.md", text + "\n")
    paths = plot.benchmark_speeds(report, out / "images_per_s")
    print(text)
    print("\nwrote", out / "report.json", out / "report.md", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
