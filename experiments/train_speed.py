"""Training-engine speed: compiled epochs vs the per-step path vs a hand-written raw-JAX step,
and K seeds in one program (vmap or unrolled) vs K separate runs.

Command: python experiments/train_speed.py --reps 15 --json results/train_speed.json   (the README table)
Runtime: about 5 minutes on the 2-core CPU machine. Run nothing else meanwhile.
What it measures (allconv6, 32x32x3 synthetic data, batch 128, float32, SGD momentum):
  1. images/s of one epoch (after compilation) for: jaxcnn's compiled-epoch path
     (loop="device"), jaxcnn's per-step path (loop="host"), and a raw-JAX train step written
     out by hand (lax.conv_general_dilated, a params dict, optax, jit with donation) doing the
     same math: normalise, forward, softmax cross-entropy, backward, SGD momentum update.
     The three are interleaved over repetitions; medians are reported with ratios.
  2. wall time of K=4 seeds trained together (seed_batching "vmap" and "unroll") vs 4 separate 1-seed runs
     (same epochs, including compilation, as a user would experience it), on 2,048 bundled
     MNIST images, with the largest per-seed difference in accuracy, loss and parameters.
Expected: epoch path >= 1.0x raw JAX and >= the per-step path; 4 seeds together faster than
4 separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import data as jdata
from jaxcnn import models
from jaxcnn.storage.files import atomic_write_text
from jaxcnn.train import TrainConfig, TrainData, Trainer, fit


def raw_jax_epoch_fn(mean: np.ndarray, std: np.ndarray):
    """A hand-written allconv6 train step (no jaxcnn), jitted with donation."""
    chans = [3, 64, 64, 128, 128, 256]
    k = jax.random.key(0)
    params = {}
    for i in range(5):
        fan_in = 9 * chans[i]
        shape = (3, 3, chans[i], chans[i + 1])
        params[f"w{i}"] = jax.random.normal(jax.random.fold_in(k, i), shape) * (2 / fan_in) ** 0.5
        params[f"b{i}"] = jnp.zeros(chans[i + 1])
    params["wf"] = jax.random.normal(jax.random.fold_in(k, 9), (256, 10)) * (1 / 256) ** 0.5
    params["bf"] = jnp.zeros(10)
    tx = optax.sgd(0.05, momentum=0.9)
    m, s = jnp.asarray(mean * 255.0), jnp.asarray(std * 255.0)

    def forward(p, x):
        for i in range(5):
            x = jax.lax.conv_general_dilated(x, p[f"w{i}"], (2, 2), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + p[f"b{i}"])
        return x.mean(axis=(1, 2)) @ p["wf"] + p["bf"]

    def step(p, o, xb, yb):
        x = (xb.astype(jnp.float32) - m) / s

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), yb).mean()

        value, g = jax.value_and_grad(loss)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, value

    return params, tx.init(params), jax.jit(step, donate_argnums=(0, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)  # +-7 % noise per rep: 5 reps gave 0.95-1.06x
    parser.add_argument("--n", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    ds = jdata.synthetic(args.n + 256, (32, 32, 3), 10, seed=0)
    mean, std = jdata.normalization_stats(ds.x[: args.n])
    data = TrainData(ds.x[: args.n], ds.y[: args.n], ds.x[args.n:], ds.y[args.n:], 10, mean, std)
    model = models.get("allconv6", num_classes=10)
    cfg = TrainConfig(batch=128, lr=0.05, weight_decay=0.0, schedule="constant", epochs=10**6)
    steps = args.n // 128

    trainers = {loop: Trainer(model, replace(cfg, loop=loop), data) for loop in ("device", "host")}
    carries = {loop: t.init() for loop, t in trainers.items()}
    x_dev, y_dev = jax.device_put(data.x_train), jax.device_put(data.y_train)
    trainers["device"].compile(carries["device"], x_dev, y_dev)
    raw_p, raw_o, raw_step = raw_jax_epoch_fn(mean, std)
    perm = np.random.default_rng(0).permutation(args.n)[: steps * 128].reshape(steps, 128)
    xb_all = [jax.device_put(data.x_train[i]) for i in perm]
    yb_all = [jax.device_put(data.y_train[i]) for i in perm]

    def run(name: str, epoch: int) -> float:
        nonlocal raw_p, raw_o
        t0 = time.perf_counter()
        if name == "raw":
            loss = None
            for xb, yb in zip(xb_all, yb_all, strict=True):
                raw_p, raw_o, loss = raw_step(raw_p, raw_o, xb, yb)
            loss.block_until_ready()
        else:
            out = trainers[name].run_epoch(carries[name], x_dev, y_dev, epoch)  # losses: host arrays, so done
            carries[name] = out.carry
        return steps * 128 / (time.perf_counter() - t0)

    for name in ("device", "host", "raw"):  # warm-up (and compilation of the lazy paths)
        run(name, 0)
    speeds: dict[str, list[float]] = {"device": [], "host": [], "raw": []}
    for rep in range(args.reps):
        for name in speeds:  # interleaved so drift hits every path alike
            speeds[name].append(run(name, rep + 1))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print("allconv6 32x32x3, batch 128, one epoch of", steps, "steps; images/s, median of", args.reps, "reps")
    for k, v in speeds.items():
        print(f"  {k:6s} {med[k]:8,.0f}   reps: {', '.join(f'{s:,.0f}' for s in v)}")
    print(f"  device loop / raw-JAX step = {med['device'] / med['raw']:.2f}x;  device / host loop = "
          f"{med['device'] / med['host']:.2f}x")

    # K seeds in one program vs K separate runs, wall time including compilation. Real data (bundled
    # MNIST, 2,000 train / 1,000 test): on random labels float-level differences between the
    # batched and unbatched programs get amplified, so accuracies there say nothing.
    k, epochs = 4, 2
    train, test = jdata.stratified_split(jdata.load_mnist5k(), test_fraction=0.2, seed=0)
    train = jdata.stratified_subset(train, 2048, seed=0)
    m_mean, m_std = jdata.normalization_stats(train.x)
    small = TrainData(train.x, train.y, test.x, test.y, 10, m_mean, m_std)
    rcfg = TrainConfig(batch=128, lr=0.05, epochs=epochs, crop_pad=2, flip=False)
    seconds, together = {}, {}
    for how in ("vmap", "unroll"):
        t0 = time.perf_counter()
        cfg_k = replace(rcfg, num_seeds=k, seed_batching=how)
        together[how] = fit(model, small, cfg_k, quiet=True)
        seconds[how] = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [fit(model, small, replace(rcfg, seed=s), quiet=True) for s in range(k)]
    t_sep = time.perf_counter() - t0
    t_vmap = seconds["vmap"]
    diff = loss_diff = param_diff = 0.0
    for tog in together.values():
        diff = max(diff, *(abs(a.test_accuracy[0] - tog.test_accuracy[s]) for s, a in enumerate(alone)))
        loss_diff = max(loss_diff, *(abs(a.history[-1].train_loss[0] - tog.history[-1].train_loss[s])
                                     for s, a in enumerate(alone)))
        for s, a in enumerate(alone):
            for t, u in zip(jax.tree_util.tree_leaves(tog.params), jax.tree_util.tree_leaves(a.params), strict=True):
                u = np.asarray(u)[0]
                scale = float(np.max(np.abs(u))) or 1.0
                param_diff = max(param_diff, float(np.max(np.abs(np.asarray(t)[s] - u))) / scale)
    print(f"K={k} seeds x {epochs} epochs x {len(train.y)} MNIST images: vmap {t_vmap:.1f} s, unrolled "
          f"{seconds['unroll']:.1f} s, {k} separate runs {t_sep:.1f} s; largest per-seed difference from the "
          f"separate runs: test accuracy {diff:.4f}, final train loss {loss_diff:.2e}, parameters (relative to the "
          f"largest) {param_diff:.2e}")
    if args.json:
        atomic_write_text(args.json, json.dumps(
            {"images_per_s": speeds, "median": med, "vmap_seconds": t_vmap, "unroll_seconds": seconds["unroll"],
             "separate_seconds": t_sep,
             "max_accuracy_difference": diff, "max_loss_difference": loss_diff, "max_param_difference": param_diff,
             "device": str(jax.devices()[0]), "xla_flags": os.environ.get("XLA_FLAGS", "")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
