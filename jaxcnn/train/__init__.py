"""Training engine: on-device data, compiled epochs, K seeds trained together in one program.

* The training set lives on the device as uint8 (or float) NHWC; each epoch draws a
  permutation with ``jax.random``, and the steps run as compiled ``lax.scan`` chunks
  with no Python per step (``loop="device"``). On GPU/TPU a chunk is the whole epoch.
  On CPU a chunk is a few fully unrolled steps (``chunk``: 4 for one seed and runs of 1,000
  steps or more, else 1, as with several seeds, which already fill a program): XLA:CPU runs
  convolutions inside a while loop about 10x slower than outside one (measured here;
  jax issue #12868), and an unrolled chunk has no loop. ``loop="host"`` is the streaming path: one
  jitted step per batch, batches gathered on the host and prefetched to the device,
  for data that does not fit in device memory. Both do exactly the same math. Image files too large to
  decode whole stream from disk (:mod:`jaxcnn.train.streaming`: the host loop's batches, decoded by Grain).
* K seeds of one architecture train together: init, shuffles, augmentation and
  dropout keys are independent per seed, and every step runs all seeds: ``vmap``-ed over seeds on
  GPU/TPU, unrolled (one copy of the step per seed) on CPU, where it is faster (``seed_batching``).
  Seed ``s`` of a K-seed run equals a 1-seed run with ``seed=s``.
* Data parallel over all local devices with ``jax.sharding``: batches are sharded on
  a 1-D mesh, parameters replicated; XLA inserts the gradient all-reduce. The same
  code runs on one device, and over several processes (``fit(..., distributed=True)``,
  :mod:`jaxcnn.train.distributed`): the mesh then spans every process's devices, each process
  computes (and in ``loop="host"`` gathers on its host) only its devices' part of the global
  batch, and only process 0 writes checkpoints and metrics.
* Keys: seed s -> ``key(s)``; init uses ``fold_in(key, 0)``; epoch e uses
  ``fold_in(fold_in(key, 1), e)``; so a resumed run replays the same randomness.

Public import paths: ``jaxcnn.train`` (``fit``, ``TrainConfig``, ``TrainData``, ``Trainer``),
``jaxcnn.train.step`` (the pure train step and ``TrainState`` for a loop of one's own),
``jaxcnn.train.prepare`` (data spec -> split -> normalisation -> ``TrainData``),
``jaxcnn.train.loggers`` (TensorBoard and MLflow logging, ``fit(loggers=...)``),
``jaxcnn.train.evaluation`` (accuracy per seed, top-k, confusion of loaded weights), and
``jaxcnn.train.distributed`` (the multi-process runtime).
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names load their module on first use (PEP 562), so `import jaxcnn.train.config` (the CLI's flag
# definitions) costs no optax, checkpoint or trainer import; `from jaxcnn.train import fit` loads the engine.
_WHERE = {
    "SEED_BATCHING": "config", "TrainConfig": "config", "TrainingError": "config", "OPTIMIZERS": "config",
    "SCHEDULES": "config", "TrainData": "inputs", "augment": "inputs", "epoch_permutation": "inputs",
    "FitResult": "loop", "fit": "loop", "run_identity": "loop", "make_optimizer": "optimizers", "Trainer": "trainer",
}

if TYPE_CHECKING:
    from jaxcnn.train.config import OPTIMIZERS, SCHEDULES, SEED_BATCHING, TrainConfig, TrainingError
    from jaxcnn.train.inputs import TrainData, augment, epoch_permutation
    from jaxcnn.train.loop import FitResult, fit, run_identity
    from jaxcnn.train.optimizers import make_optimizer
    from jaxcnn.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name`` (or a submodule itself: ``jaxcnn.train.step``)."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"jaxcnn.train.{_WHERE[name]}"), name)
    try:
        return importlib.import_module(f"jaxcnn.train.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"jaxcnn.train.{name}":
            raise
        raise AttributeError(f"module 'jaxcnn.train' has no attribute {name!r}") from None


__all__ = [
    "OPTIMIZERS", "SCHEDULES", "SEED_BATCHING", "FitResult", "TrainConfig", "TrainData", "Trainer", "TrainingError",
    "augment", "epoch_permutation", "fit", "make_optimizer", "run_identity",
]
