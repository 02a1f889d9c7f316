"""Is the input the bottleneck? The streaming pipeline alone against the train step, on generated 224x224 JPEGs.

Writes N random-texture JPEGs (Pillow, quality 90) into a temporary folder, then measures, interleaved in
rounds so that other load on a shared machine hits every configuration alike (the median is reported):

* the pipeline alone: images/s of :class:`jaxcnn.data.stream.ImageStream` (decode + resize) per worker count;
* the train step alone: images/s of one compiled step of ``--model`` on batches already on the device;
* streamed training: images/s of the same steps fed by the stream (decode of step i+1 overlapping step i).

    python experiments/bench_input.py --images 256 --batch 32 --workers 0,1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_jpegs(root: Path, n: int, side: int, classes: int = 4) -> None:
    """``n`` JPEGs of side x side in ``classes`` class folders: smooth colour fields plus noise (camera-like sizes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        c = i % classes
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        f = rng.uniform(1, 6, 3)
        field = np.stack([np.sin(f[k] * (xx + yy * (k + 1)) * np.pi) for k in range(3)], -1)
        img = np.clip(128 + 90 * field + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"c{c}" / f"{i:05d}.jpg", quality=90)


def pipeline_rate(images, batch: int, workers: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s after it) of one pass of a stream over ``images``.

    The first includes starting the worker processes, which a streamed epoch pays once.
    """
    from jaxcnn.data.stream import ImageStream

    order = np.random.default_rng(1).permutation(len(images))
    t0 = time.perf_counter()
    stream = ImageStream(images, order, batch, workers=workers)
    next(stream)
    t1 = time.perf_counter()
    n = sum(len(x) for x in stream)
    stream.close()
    return t1 - t0, n / (time.perf_counter() - t1)


def main() -> None:
    """Parse the options, run the rounds, print the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--side", type=int, default=224, help="side of the generated JPEGs")
    p.add_argument("--size", type=int, default=None, help="decode-and-resize to this (default: --side)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--model", default="mobilenet_v1/0.25")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    size = args.size or args.side

    import jax

    from jaxcnn import models
    from jaxcnn.data.stream import image_files
    from jaxcnn.train import TrainConfig
    from jaxcnn.train.streaming import StreamData, StreamTrainer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_jpegs(root, args.images, args.side)
        mb = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20
        took = time.perf_counter() - t0
        print(f"wrote {args.images} JPEGs of {args.side}x{args.side} ({mb:.1f} MiB) in {took:.1f} s")
        images, y, k, _ = image_files(f"folder:{root}", size=size)
        half = len(y) // 2
        data = StreamData(images, y, images.take(range(half)), y[:half], k)
        model = models.get(args.model, num_classes=k)
        cfg = TrainConfig(batch=args.batch, compile_options="xla", crop_pad=0, flip=False)
        trainer = StreamTrainer(model, cfg, data)
        carry = trainer.init()
        # the step alone: one batch decoded once, put on the device, stepped repeatedly
        xb = jax.device_put(images[np.arange(args.batch)][None])
        yb = jax.device_put(y[: args.batch][None])
        keys = trainer.epoch_records(0)[2]
        carry, out = trainer._step_fn(carry, xb, yb, keys[:, 0])  # compile
        jax.block_until_ready(out)
        steps = trainer.steps_per_epoch
        trainer.epoch_records(0)  # compile the permutation program before anything is timed
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for w in workers:
                start, rate = pipeline_rate(images, args.batch, w)
                rates.setdefault(f"pipeline alone, {w} workers", []).append(rate)
                rates.setdefault(f"pipeline start-up (s to the first batch), {w} workers", []).append(start)
            t0 = time.perf_counter()
            for i in range(steps):
                carry, out = trainer._step_fn(carry, xb, yb, keys[:, i])
            jax.block_until_ready(out)
            rates.setdefault("train step alone", []).append(steps * args.batch / (time.perf_counter() - t0))
            for w in workers:
                trainer.data.workers = w
                t0 = time.perf_counter()
                carry = trainer.run_epoch(carry, None, None, 0).carry
                jax.block_until_ready(carry.params)
                rates.setdefault(f"streamed training, {w} workers", []).append(
                    steps * args.batch / (time.perf_counter() - t0))
    print(f"\n{args.images} images of {args.side}x{args.side} JPEG decoded at {size}x{size}, batch {args.batch}, "
          f"{args.model}, {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.devices()[0].platform}; "
          f"median of {args.rounds} interleaved rounds\n")
    print("| what | images/s (start-up: s) | rounds |")
    print("| --- | ---: | --- |")
    for name, v in rates.items():
        fmt = "{:,.1f}" if "start-up" in name else "{:,.0f}"
        print(f"| {name} | {fmt.format(statistics.median(v))} | {', '.join(fmt.format(r) for r in v)} |")


if __name__ == "__main__":  # Grain's worker processes are spawned: they re-import this file
    main()
