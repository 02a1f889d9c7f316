"""Training on image files streamed from disk: :class:`StreamData` and the :class:`StreamTrainer` it brings.

The streamed run does the math of the in-memory ``loop="host"`` run, batch for batch: each epoch draws the
same per-seed permutations (:meth:`Trainer.epoch_keys`), and the records of every step -- seed by seed, this
process's rows of the global batch -- are decoded by Grain workers (:class:`jaxcnn.data.stream.ImageStream`)
instead of gathered from a decoded array. Normalisation, crops and flips stay in the compiled step, on the
device, with the same keys, so the images a step sees are the very ones the in-memory run sees. Each of K
seeds reads its own order (seed ``s`` of a K-seed run still equals a 1-seed run of seed ``s``), so a step
decodes K x batch images.

Checkpoints come at epoch ends (as for every run): each records the stream's state after the epoch, which
a resumed run checks before it starts the next epoch's stream at its first batch.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import numpy as np

from jaxcnn.data import stream as jstream
from jaxcnn.train.inputs import TrainData
from jaxcnn.train.trainer import EpochOut, Trainer

STATS_SAMPLE = 2048  # training images decoded for the normalisation statistics (all of them when fewer)
EVAL_CHUNK_BYTES = 256 << 20  # decoded test images held at once while evaluating


@dataclass
class StreamData(TrainData):
    """:class:`TrainData` whose images are :class:`jaxcnn.data.stream.ImageFiles`, decoded as they are read.

    ``workers`` Grain processes decode ahead of the step (0: in this process); ``augment`` is an optional
    :data:`jaxcnn.data.stream.Augment` run in them on every training image (seeded by seed, epoch and the
    image's position in the epoch). The statistics, when not given, come from a stratified sample of
    :data:`STATS_SAMPLE` training images (all of them when there are fewer).
    """

    workers: int = 0
    augment: jstream.Augment | None = None

    trainer_class: ClassVar[type] = None  # type: ignore[assignment]  # set below: StreamTrainer

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            if not isinstance(getattr(self, name), jstream.ImageFiles):
                raise TypeError(f"StreamData: {name} must be jaxcnn.data.stream.ImageFiles, got "
                                f"{type(getattr(self, name)).__name__}; use TrainData for arrays")
        if self.mean is None:
            from jaxcnn.data import normalization_stats
            from jaxcnn.data.splits import subset_indices

            sample = subset_indices(np.asarray(self.y_train, np.int64), int(self.num_classes), STATS_SAMPLE, seed=0)
            self.mean, self.std = normalization_stats(self.x_train[sample])
        super().__post_init__()
        for name, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise ValueError(f"StreamData: {len(x)} {name} images but {len(y)} labels")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ValueError(f"StreamData: `workers={self.workers}` must be an int >= 0")

    def digest(self) -> str:
        """sha256 of the file lists (names and sizes, not pixels), labels and normalisation."""
        import hashlib

        h = hashlib.sha256(f"stream:{self.x_train.digest()}:{self.x_test.digest()};".encode())
        for name in ("y_train", "y_test", "mean", "std"):
            a = np.ascontiguousarray(np.asarray(getattr(self, name)))
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            h.update(a.data)
        return h.hexdigest()


class StreamTrainer(Trainer):
    """The :class:`Trainer` of :class:`StreamData`: step by step (``loop="host"``), batches from Grain streams."""

    def __init__(self, model: Any, cfg: Any, data: StreamData, devices: Any = None, **kw: Any):
        if not isinstance(data, StreamData):
            raise TypeError(f"StreamTrainer takes StreamData, got {type(data).__name__}")
        # streamed images never sit on the device whole: the compiled epochs of loop="device" do not apply
        super().__init__(model, dataclasses.replace(cfg, loop="host"), data, devices, **kw)
        self.rows = self._local_rows()
        self._input: dict[str, Any] = {}

    def _local_rows(self) -> np.ndarray:
        """The positions of the global batch this process's devices hold (all of them on one process)."""
        k, b = len(self.seeds), self.cfg.batch
        if not self.multiprocess:
            return np.arange(b)
        shards = self.batch_sharding.addressable_devices_indices_map((k, b))
        return np.asarray(sorted({r for idx in shards.values() for r in range(*idx[1].indices(b))}))

    def _put(self, x_local: np.ndarray) -> jax.Array:
        """(K, local rows, ...) host values as the (K, batch, ...) global batch, this process filling its rows."""
        if not self.multiprocess:
            return jax.device_put(x_local)
        b = self.cfg.batch
        where = {int(r): j for j, r in enumerate(self.rows)}

        def shard(idx):
            cols = [where[r] for r in range(*idx[1].indices(b))]
            return x_local[idx[0]][:, cols][(slice(None), slice(None), *idx[2:])]

        shape = (x_local.shape[0], b, *x_local.shape[2:])
        return jax.make_array_from_callback(shape, self.batch_sharding, shard)

    def epoch_records(self, epoch: int) -> tuple[np.ndarray, np.ndarray, jax.Array]:
        """``(file indices (steps, K, rows), their positions in the epoch, step keys)`` this process reads."""
        perms, step_keys = self._perm_fn(self.epoch_keys(epoch))
        perms = np.asarray(perms)  # (K, steps, batch): the in-memory run's permutations
        local = perms[:, :, self.rows].transpose(1, 0, 2)
        k, steps, b = perms.shape
        positions = np.arange(steps * k * b).reshape(steps, k, b)[:, :, self.rows]
        return local, positions, step_keys

    def run_epoch(self, carry: Any, x_dev: Any, y_dev: Any, epoch: int) -> EpochOut:
        """One epoch of every seed, its batches decoded by Grain while the previous step runs."""
        local, positions, step_keys = self.epoch_records(epoch)
        steps, k, n = local.shape
        stream = jstream.ImageStream(self.data.x_train, local.reshape(-1), k * n, workers=self.data.workers,
                                     positions=positions.reshape(-1), augment=self.data.augment,
                                     key=(self.cfg.seed, epoch))
        y_host = np.asarray(self.data.y_train)

        def put(i: int) -> tuple[jax.Array, jax.Array]:
            x = next(stream)
            return self._put(x.reshape(k, n, *x.shape[1:])), self._put(y_host[local[i]])

        outs = []
        try:
            nxt = put(0)
            for i in range(steps):
                xb, yb = nxt
                carry, out = self._step_fn(carry, xb, yb, step_keys[:, i])  # dispatched; runs while we decode
                if i + 1 < steps:
                    nxt = put(i + 1)
                outs.append(out)
            self._input = {"epoch": epoch, **stream.get_state()}
        finally:
            stream.close()
        return EpochOut(carry, np.stack([np.asarray(o[0]) for o in outs], 1),
                        np.stack([np.asarray(o[1]) for o in outs], 1),
                        {m: np.stack([np.asarray(o[2][m]) for o in outs], 1) for m in self.metrics})

    def input_meta(self) -> dict[str, Any]:
        """The stream's state after the last epoch (``input`` in the checkpoint)."""
        return {"input": dict(self._input)} if self._input else {}

    def restore_input(self, saved: Any, start: int, where: Any) -> None:
        """Check that the checkpoint's stream finished epoch ``start - 1``; the next epoch's stream starts fresh."""
        from jaxcnn.storage.checkpoint import CheckpointError

        ok = (isinstance(saved, dict) and saved.get("epoch") == start - 1
              and saved.get("batches_done") == self.steps_per_epoch)
        if not ok:
            raise CheckpointError(f"`resume=True`: {where} does not record its input stream at the end of epoch "
                                  f"{start} ('input' is {str(saved)[:80]}); it was not written by this streamed "
                                  "run: resume it as it was written (in memory or streamed), or use another folder")
        self._input = dict(saved)

    def evaluate(self, carry: Any, x_test: Any = None, y_test: Any = None) -> dict[str, np.ndarray]:
        """Test loss, top-1 and top-5 accuracy per seed, the test images streamed in chunks."""
        if x_test is not None:
            return super().evaluate(carry, x_test, y_test)
        images, y = self.data.x_test, np.asarray(self.data.y_test)
        n = len(y)
        b = min(self.cfg.eval_batch, n)
        nb = -(-n // b)
        per = int(min(nb, max(1, EVAL_CHUNK_BYTES // (b * int(np.prod(images.shape[1:]))))))
        records = np.concatenate([np.arange(n), np.zeros(nb * b - n, np.int64)])  # pad rows: decoded, masked
        mask = (np.arange(nb * b) < n).astype(np.float32).reshape(nb, b)
        yp = np.concatenate([y, np.zeros(nb * b - n, y.dtype)]).reshape(nb, b)
        stream = jstream.ImageStream(images, records, b, workers=self.data.workers)
        totals = np.zeros((3, len(self.seeds)))
        try:
            for i in range(0, nb, per):
                m = mask[i:i + per]
                xp = np.stack([next(stream) for _ in range(len(m))])
                xp[m == 0] = 0  # as the in-memory padding: zero images
                ys = yp[i:i + per]
                if len(m) < per:  # the last chunk padded with masked batches: one compiled shape
                    pad = per - len(m)
                    xp = np.concatenate([xp, np.zeros((pad, *xp.shape[1:]), xp.dtype)])
                    ys, m = (np.concatenate([a, np.zeros((pad, b), a.dtype)]) for a in (ys, m))
                args = (xp, ys, m)
                if self.multiprocess:
                    args = self.put(args)
                sums = self._eval_fn(carry.params, carry.state, *args)
                totals += np.asarray([np.asarray(v, np.float64) for v in sums])
        finally:
            stream.close()
        return {"loss": totals[0] / n, "accuracy": totals[1] / n, "top5": totals[2] / n}


StreamData.trainer_class = StreamTrainer


def streamed(images: jstream.ImageFiles, y: np.ndarray, num_classes: int, *, test_fraction: float,
             subset: tuple[int, int] | None = None, workers: int = 0) -> StreamData:
    """The :class:`StreamData` of a listed set, split (and subsampled) exactly as ``prepare`` splits it in memory."""
    from jaxcnn.data.splits import split_indices, subset_indices

    train, test = split_indices(y, num_classes, test_fraction=test_fraction, seed=0)
    if subset is not None:
        train = train[subset_indices(y[train], num_classes, subset[0], seed=0)]
        test = test[subset_indices(y[test], num_classes, subset[1], seed=0)]
    return StreamData(images.take(train), y[train], images.take(test), y[test], num_classes, workers=workers)


def note(spec: str, images: jstream.ImageFiles, budget: int) -> None:
    """Say on stderr why ``spec`` is streamed."""
    print(f"note: streaming {spec} from disk: its {len(images):,} images decoded at "
          f"{'x'.join(map(str, images.shape[1:]))} would take {jstream.human(images.nbytes)}, over the memory "
          f"budget of {jstream.human(budget)} (--memory-budget, memory_budget=; --no-stream, stream=False, loads "
          "them anyway)", file=sys.stderr)
