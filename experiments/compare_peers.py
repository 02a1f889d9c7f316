"""Time the same CNN train step in jaxcnn, Flax linen and PyTorch eager (channels_last and NCHW).

Command: python experiments/compare_peers.py [--measure train] [--json out.json] [--markdown out.md]
         python experiments/compare_peers.py --quick          (both models at 32x32 batch 8, ~30 s: MobileNet compiles)
         python experiments/compare_peers.py --quick --cases allconv6:32:4 --reps 1   (smoke test, ~10-15 s)
Expected runtime on the 2-core CPU: about 12 minutes for the five default cases in train and infer mode
(MobileNet's first calls alone take 5-10 s per JAX framework, and jaxcnn tunes its XLA options per
program first: a few more compiles, cached on disk for the next run).
Run nothing else meanwhile: on 2 cores an overlapping process slows steps by 10-200x. Each
repetition records the CPU time other processes used (from /proc/stat) and is redone when they
used more than ``--max-other-load`` cores.

What it measures, per case (model, input size, batch), float32, one fixed random batch in memory:

* train step = forward with BatchNorm in train mode (batch statistics, running statistics
  updated) + mean softmax cross-entropy + backward + SGD momentum 0.9, lr 0.01;
* infer step (``--measure ...,infer``) = forward with BatchNorm in eval mode.

Frameworks, each written the way its users would write it:

* ``jaxcnn``: ``models.get("allconv6", num_classes=10)`` / ``models.get("mobilenet_v1", width=a,
  num_classes=10, padding=1)`` (default lowerings, ``conv_impl="auto"``), the step under
  ``jax.jit(donate_argnums=(0,), compiler_options=...)`` with optax SGD, the options picked as the
  engine picks them (``jaxcnn.lowering.compile_options``: fastest candidate as accurate as XLA's default).
* ``flax``: a hand-written ``flax.linen`` Module of the same architecture (depthwise as ``nn.Conv``
  with ``feature_group_count``), ``apply(..., mutable=['batch_stats'])``, the same jit/donate/optax step,
  plain ``jax.jit`` (no option of jaxcnn's: ``import jaxcnn`` sets no XLA flag).
* ``torch-eager-cl``: hand-written ``torch.nn`` model (experiments/peer_torch.py), model and input in
  ``channels_last``, in a PyTorch process of its own with glibc's malloc defaults, as its users run it.
* ``torch-eager``: the same model in plain NCHW, same process.
* ``torch-eager-cl-hostmem``: ``torch-eager-cl`` in a second PyTorch process given jaxcnn's host-memory
  settings (``jaxcnn.lowering.host_allocator``: no mmap, 2 GiB trim), to show how much of a ratio is the
  allocator: PyTorch gains from them too, up to 1.5x on allconv6 224x224 inference on the 2-core Xeon.

Models: allconv6 = 5 x [conv3x3 stride 2 pad 1 + bias, ReLU] (64, 64, 128, 128, 256), global
average pool, Dense(10); MobileNet v1 = conv3x3 s2 (32a) + BN + ReLU, the paper's 13 depthwise
separable blocks (dw3x3 + BN + ReLU, pw1x1 + BN + ReLU), pad 1 on every 3x3, no conv biases, BN
momentum 0.9 (torch 0.1) and eps 1e-5, global average pool, Dense(10). Parameter counts are checked
equal across frameworks (the run stops otherwise).

Timing (as in /work/shared/research/perf-anchors.md): first call timed separately (JAX: trace +
compile + one step; torch: one step); one warm-up call; calibration picks N steps per repetition so
that a repetition lasts >= ``--min-seconds``; ``--reps`` repetitions, interleaved across frameworks
(rep 1: jaxcnn, flax, torch-eager-cl, torch-eager; rep 2: ...) so slow drift of the shared VM hits all
of them alike; the median per-step time gives images/s = batch / median. JAX work is blocked on at
the end of each repetition (asynchronous dispatch counted). Each runtime's one-time start-up is paid
on a tiny conv before any timing, so first calls are per model. jaxcnn and Flax share this process;
PyTorch runs in worker processes driven over a pipe (a round trip per repetition, well under 1 ms of
>= 2 s), whose CPU time the other-load meter counts as the benchmark's own; torch uses
``--torch-threads`` threads (default: the usable cores), XLA its default pool.

How to read the ratios: ``jaxcnn/<peer>`` = jaxcnn images/s divided by the peer's images/s on the
same case and mode; > 1 means jaxcnn is faster, 0.5 means it takes twice as long per step. Run-to-run
variation on this VM is ~10-15 %, so ratios between about 0.87 and 1.15 are a tie; the rep spread
columns show how noisy each median is. First-call seconds are paid once per shape (JAX compiles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from peer_torch import ALLCONV6, BN_EPS, BN_MOMENTUM, LR, MBV1_BLOCKS, MOMENTUM, NUM_CLASSES, Case, make_batch, scaled

from jaxcnn import models
from jaxcnn.bench import device_info
from jaxcnn.bench.rows import MEASURES
from jaxcnn.bench.timing import LoadMeter, Series, interleave, prepare
from jaxcnn.cli.args import comma_choices
from jaxcnn.lowering import compile_options
from jaxcnn.storage.files import atomic_write_text
from jaxcnn.train import step as train_step_module  # the engine's step, timed for jaxcnn

FRAMEWORKS = ("jaxcnn", "flax", "torch-eager-cl", "torch-eager", "torch-eager-cl-hostmem")
PEERS = ("torch-eager-cl", "torch-eager", "torch-eager-cl-hostmem", "flax")  # ratio denominators: jaxcnn / peer
TORCH_VARIANTS = {  # framework -> (channels_last, the worker's malloc)
    "torch-eager-cl": (True, "glibc"), "torch-eager": (False, "glibc"), "torch-eager-cl-hostmem": (True, "jaxcnn"),
}
DEFAULT_CASES = ("allconv6:32:128", "mbv1_1.0:32:128", "mbv1_0.25:32:128", "allconv6:224:16", "mbv1_1.0:224:8")
QUICK_CASES = ("allconv6:32:8", "mbv1_0.25:32:8")


def parse_case(text: str) -> Case:
    """Parse ``MODEL:SIZE:BATCH`` with MODEL ``allconv6``, ``mbv1_<alpha>`` or ``mobilenet_v1[/<alpha>]``."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"case {text!r}: expected MODEL:SIZE:BATCH, e.g. allconv6:32:128")
    name, size_s, batch_s = parts
    try:
        size, batch = int(size_s), int(batch_s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r}: SIZE and BATCH must be integers") from None
    if size < 32 or batch < 1:
        raise argparse.ArgumentTypeError(f"case {text!r}: need SIZE >= 32 (five stride-2 stages) and BATCH >= 1")
    if name == "allconv6":
        return Case("allconv6", 1.0, size, batch)
    for prefix in ("mbv1_", "mobilenet_v1/", "mobilenet_v1"):
        if name.startswith(prefix):
            rest = name[len(prefix):] or "1.0"
            try:
                alpha = float(rest)
            except ValueError:
                break
            if not 0 < alpha <= 4:
                raise argparse.ArgumentTypeError(f"case {text!r}: alpha must be in (0, 4]")
            return Case("mbv1", alpha, size, batch)
    raise argparse.ArgumentTypeError(f"case {text!r}: MODEL must be allconv6 or mbv1_<alpha> (e.g. mbv1_1.0)")


# -- runners: one per framework, all driven by the same timing loop -------------------------------


@dataclass
class Runner:
    """``run(n)`` performs n steps and returns once they are finished."""

    framework: str
    run: Callable[[int], None]
    param_count: int
    state_count: int  # BatchNorm running statistics (mean + var entries)
    notes: str = ""
    close: Callable[[], Any] | None = None  # frees what the step holds (the PyTorch worker's model)


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


def _jax_runner(
    framework: str, apply_train, apply_infer, params, state, mode: str, x, y, notes: str, tune: bool = False,
    engine_model=None,
) -> Runner:
    """The train step of jaxcnn's engine (given ``engine_model``) or flax's user step, jit + donate carry.

    Both take one SGD-momentum step on the cross-entropy, as the PyTorch runner does; flax's is written
    as its users write it, ``apply_train(p, s, x) -> (logits, new_s)``.

    ``tune``: pick XLA compile options for this program as jaxcnn's engine does (jaxcnn.lowering.compile_options),
    when the step is built (not part of the first call; its seconds go in the notes). Flax gets plain
    ``jax.jit``, as its users write it.
    """
    tx = optax.sgd(LR, momentum=MOMENTUM)
    counts = (_size(params), _size(state))
    engine = train_step_module if engine_model is not None else None

    def jit(fn, args, **kw):
        nonlocal notes
        if not tune:
            return jax.jit(fn, **kw)
        t0 = time.perf_counter()
        choice = compile_options.resolve("auto", fn, args, label=f"compare_peers {framework} {mode}")
        how = ("not tuned" if not choice.seconds else "cached" if choice.cached
               else f"tuned in {time.perf_counter() - t0:.1f} s")
        notes += f"; XLA options {choice.name} ({how})"
        return jax.jit(fn, compiler_options=choice.options, **kw)

    if mode == "train":
        if engine is not None:  # jaxcnn: the engine's own step (jaxcnn.train.step), as fit runs it
            drop_key = jax.random.key(0)

            def train_step(carry, x, y):
                return engine.train_step(engine_model, tx, carry, x, y, drop_key)

            first = engine.TrainState(params, state, tx.init(params), jnp.zeros((), jnp.int32))
        else:  # flax: the step its users write

            def train_step(carry, x, y):
                params, state, opt = carry

                def loss_fn(p):
                    logits, new_state = apply_train(p, state, x)
                    return _ce(logits, y), new_state

                (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
                updates, opt = tx.update(grads, opt, params)
                return (optax.apply_updates(params, updates), new_state, opt), loss

            first = (params, state, tx.init(params))
        box = [first]
        step = jit(train_step, (box[0], x, y), donate_argnums=(0,))

        def run(n: int) -> None:
            out = None
            for _ in range(n):
                box[0], out = step(box[0], x, y)
            jax.block_until_ready((box[0], out))

    else:
        infer = jit(apply_infer, (params, state, x))

        def run(n: int) -> None:
            for _ in range(n):
                # block every call: independent calls may overlap on the CPU pool and undercount
                jax.block_until_ready(infer(params, state, x))

    return Runner(framework, run, *counts, notes)


def _size(tree) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(tree)))


def jaxcnn_runner(case: Case, mode: str, x: np.ndarray, y: np.ndarray) -> Runner:
    """jaxcnn's registry model, as a user would build it."""
    if case.model == "allconv6":
        model = models.get("allconv6", num_classes=NUM_CLASSES)
        notes = 'models.get("allconv6", num_classes=10)'
    else:
        model = models.get("mobilenet_v1", width=case.alpha, num_classes=NUM_CLASSES, padding=1)
        notes = f'models.get("mobilenet_v1", width={case.alpha:g}, num_classes=10, padding=1)'
    params, state = model.init(jax.random.key(0), x.shape[1:])
    return _jax_runner(
        "jaxcnn",
        lambda p, s, xb: model.apply(p, s, xb, train=True),
        lambda p, s, xb: model.apply(p, s, xb, train=False)[0],
        params, state, mode, jnp.asarray(x), jnp.asarray(y), notes, tune=True, engine_model=model,
    )


def _flax_module(case: Case):
    import flax.linen as nn

    pad = ((1, 1), (1, 1))

    class AllConv6(nn.Module):
        num_classes: int = NUM_CLASSES

        @nn.compact
        def __call__(self, x, train: bool = False):
            for c in ALLCONV6:
                x = nn.relu(nn.Conv(c, (3, 3), strides=(2, 2), padding=pad)(x))
            return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))

    class MobileNetV1(nn.Module):
        alpha: float = 1.0
        num_classes: int = NUM_CLASSES

        @nn.compact
        def __call__(self, x, train: bool = False):
            def bn(h):
                return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS)(h)

            x = nn.Conv(scaled(32, self.alpha), (3, 3), strides=(2, 2), padding=pad, use_bias=False)(x)
            x = nn.relu(bn(x))
            for c, s in MBV1_BLOCKS:
                cin = x.shape[-1]
                x = nn.Conv(cin, (3, 3), strides=(s, s), padding=pad, feature_group_count=cin, use_bias=False)(x)
                x = nn.relu(bn(x))
                x = nn.Conv(scaled(c, self.alpha), (1, 1), padding="VALID", use_bias=False)(x)
                x = nn.relu(bn(x))
            return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))

    return AllConv6() if case.model == "allconv6" else MobileNetV1(alpha=case.alpha)


def flax_runner(case: Case, mode: str, x: np.ndarray, y: np.ndarray) -> Runner:
    """A hand-written flax.linen Module of the same architecture."""
    module = _flax_module(case)
    variables = module.init(jax.random.key(0), jnp.asarray(x[:1]), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})

    def apply_train(p, s, xb):
        logits, updated = module.apply({"params": p, "batch_stats": s}, xb, train=True, mutable=["batch_stats"])
        return logits, updated.get("batch_stats", s)

    def apply_infer(p, s, xb):
        return module.apply({"params": p, "batch_stats": s}, xb, train=False)

    return _jax_runner("flax", apply_train, apply_infer, params, stats, mode, jnp.asarray(x), jnp.asarray(y),
                       f"flax.linen {type(module).__name__}, mutable=['batch_stats']")


class TorchWorker:
    """A PyTorch process of its own (experiments/peer_torch.py --serve), driven over a pipe.

    PyTorch runs outside jaxcnn's process so that it keeps the allocator its users get (``malloc="glibc"``)
    or gets jaxcnn's settings on purpose (``"jaxcnn"``); its CPU time counts as the benchmark's own in
    the other-load meter, and a ``run`` round trip costs well under a millisecond of a >= 2 s repetition.
    """

    def __init__(self, malloc: str, threads: int) -> None:
        script = Path(__file__).resolve().with_name("peer_torch.py")
        self.malloc = malloc
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--serve", "--threads", str(threads), "--malloc", malloc],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"the PyTorch worker (--malloc {self.malloc}) exited with {self.proc.wait()}; "
                               "its error is printed above")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"PyTorch worker (--malloc {self.malloc}): {msg['error']}")
        return msg

    def call(self, **msg: Any) -> dict[str, Any]:
        """Send one command and wait for its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ask the worker to quit, and reap it."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def torch_runner(case: Case, mode: str, framework: str, worker: TorchWorker) -> Runner:
    """PyTorch eager (peer_torch.torch_step) built and run in ``worker``'s process."""
    channels_last, _ = TORCH_VARIANTS[framework]
    key = f"{framework}/{case.spec}/{mode}"
    built = worker.call(op="build", key=key, case=[case.model, case.alpha, case.size, case.batch], mode=mode,
                        channels_last=channels_last)

    def run(n: int) -> None:
        worker.call(op="run", key=key, n=n)

    notes = f"{built['notes']}; own process, {worker.info['host_malloc']}"
    return Runner(framework, run, built["params"], built["state"], notes, lambda: worker.call(op="drop", key=key))


# -- the measurement (timing as in jaxcnn.bench.timing: first call, calibration, interleaved reps) -------


def measure(
    case: Case, mode: str, frameworks: list[str], *, reps: int, min_seconds: float, max_other_load: float,
    retries: int, meter: LoadMeter, log: Callable[[str], None], workers: dict[str, TorchWorker],
) -> dict[str, Any]:
    """Build every framework's step for ``case``/``mode``, then time them interleaved; returns a report row."""
    x, y = make_batch(case)
    runners: dict[str, Runner] = {}
    meas: dict[str, Series] = {}
    for fw in frameworks:
        if fw == "jaxcnn":
            runners[fw] = jaxcnn_runner(case, mode, x, y)
        elif fw == "flax":
            runners[fw] = flax_runner(case, mode, x, y)
        else:
            runners[fw] = torch_runner(case, mode, fw, workers[TORCH_VARIANTS[fw][1]])
        m = meas[fw] = prepare(runners[fw].run, min_seconds)  # first call: JAX traces + compiles + one step
        log(f"  {fw:22s} first call {m.first_call_s:7.2f} s, {m.calls_per_rep} steps per repetition")

    params = {fw: r.param_count for fw, r in runners.items()}
    state = {fw: r.state_count for fw, r in runners.items()}
    log("  params: " + ", ".join(f"{fw} {n:,}" for fw, n in params.items())
        + "; BN running stats: " + ", ".join(f"{fw} {n:,}" for fw, n in state.items()))
    if len(set(params.values())) != 1 or len(set(state.values())) != 1:
        raise AssertionError(f"{case.spec}: parameter counts differ between frameworks: params {params}, "
                             f"BN state {state}; the architectures are not the same")

    runs = {fw: runners[fw].run for fw in frameworks}  # interleaved: every framework once per repetition
    for rep in range(reps):
        interleave(runs, meas, 1, meter=meter, max_other_load=max_other_load, retries=retries, log=log)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(
            f"{fw} {case.batch / meas[fw].rep_s[-1]:,.1f} img/s" for fw in frameworks))

    results = {}
    for fw, m in meas.items():
        results[fw] = {
            "images_per_s": case.batch / m.median,
            "step_ms_median": 1e3 * m.median,
            "step_ms_low": 1e3 * m.low,
            "step_ms_high": 1e3 * m.high,
            "rep_spread": m.spread,
            "rep_step_ms": [1e3 * s for s in m.rep_s],
            "first_call_s": m.first_call_s,
            "calls_per_rep": m.calls_per_rep,
            "reps": len(m.rep_s),
            "max_other_load_cores": m.max_other_load,
            "redone_reps": m.redone_reps,
            "contaminated_reps": m.disturbed_reps,
            "param_count": runners[fw].param_count,
            "state_count": runners[fw].state_count,
            "implementation": runners[fw].notes,
        }
    for r in runners.values():
        if r.close is not None:
            r.close()
    ratios = {
        f"jaxcnn/{peer}": results["jaxcnn"]["images_per_s"] / results[peer]["images_per_s"]
        if "jaxcnn" in results and peer in results else None
        for peer in PEERS
    }
    return {
        "case": case.spec, "model": case.label, "input": case.size, "batch": case.batch, "measure": mode,
        "param_count": next(iter(params.values())), "param_counts": params, "state_counts": state,
        "results": results, "ratios": ratios,
    }


# -- report -------------------------------------------------------------------------------------


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """Two tables: images/s and ratios; first-call seconds and repetition spread."""
    fws = report["frameworks"]
    head = ["model", "input", "batch", "measure", "params", *(f"{fw} img/s" for fw in fws),
            *(f"jaxcnn/{p}" for p in PEERS)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---|" + "---:|" * (len(head) - 4)]
    for r in report["rows"]:
        res, rat = r["results"], r["ratios"]
        cells = [r["model"], f"{r['input']}x{r['input']}", str(r["batch"]), r["measure"], f"{r['param_count']:,}"]
        cells += [_fmt_rate(res[fw]["images_per_s"]) for fw in fws]
        cells += ["—" if rat[f"jaxcnn/{p}"] is None else f"{rat[f'jaxcnn/{p}']:.2f}" for p in PEERS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "First call (s; JAX: trace + compile + one step), rep spread (max-min)/median, "
              "most CPU other processes used during a repetition (cores):", ""]
    head2 = ["model", "input", "batch", "measure", *(f"{fw} first call s" for fw in fws),
             *(f"{fw} spread" for fw in fws), "other load"]
    lines += ["| " + " | ".join(head2) + " |", "|---|---|---:|---|" + "---:|" * (len(head2) - 4)]
    for r in report["rows"]:
        res = r["results"]
        loads = [res[fw]["max_other_load_cores"] for fw in fws if res[fw]["max_other_load_cores"] is not None]
        cells = [r["model"], f"{r['input']}x{r['input']}", str(r["batch"]), r["measure"]]
        cells += [f"{res[fw]['first_call_s']:.2f}" for fw in fws]
        cells += [f"{100 * res[fw]['rep_spread']:.0f}%" for fw in fws]
        cells.append(f"{max(loads):.2f}" if loads else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    s = report["settings"]
    d = report["device"]
    lines += ["", f"reps {s['reps']} x >= {s['min_seconds']} s, interleaved; median per-step time; float32; "
              f"torch threads {s['torch_threads']}; {d.get('cpu', d['backend'])}; jax {d['jax']}, "
              f"flax {d.get('flax', '—')}, torch {d.get('torch', '—')}; jaxcnn and flax: {d.get('host_malloc', '')}."]
    variants = [fw for fw in fws if fw in TORCH_VARIANTS]
    workers = report.get("torch_workers", {})
    if variants:
        lines.append("PyTorch runs in processes of its own: " + "; ".join(
            f"{fw}: {workers.get(TORCH_VARIANTS[fw][1], {}).get('host_malloc', TORCH_VARIANTS[fw][1])}"
            for fw in variants) + ".")
    for fw, why in report["skipped"].items():
        lines.append(f"skipped {fw}: {why}")
    bad = [(r["case"], r["measure"], fw) for r in report["rows"] for fw in fws if r["results"][fw]["contaminated_reps"]]
    if bad:
        lines.append("WARNING: other processes were busy during some repetitions (timings unreliable): "
                     + ", ".join(f"{c} {m} {fw}" for c, m, fw in bad))
    return "\n".join(lines)


def available(frameworks: list[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The frameworks that can run, the skipped ones with the reason, and the peers' versions."""
    import importlib.metadata
    import importlib.util

    ok, skipped, versions = [], {}, {}
    for fw in frameworks:
        if fw == "flax":
            try:
                import flax
                import flax.linen  # noqa: F401
            except ImportError as e:
                skipped[fw] = f"flax is not installed ({e}); pip install flax"
                continue
            versions["flax"] = flax.__version__
        elif fw.startswith("torch"):
            # looked up, not imported: PyTorch runs in worker processes, not in this one
            try:
                found = importlib.util.find_spec("torch") is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                skipped[fw] = "torch is not installed; pip install -e '.[torch]'"
                continue
            versions["torch"] = importlib.metadata.version("torch")
        ok.append(fw)
    return ok, skipped, versions


def prewarm() -> None:
    """Pay JAX's one-time start-up (backend, compiler) on a tiny conv, outside every timing.

    Otherwise the first JAX framework would carry it in its first-call time; the PyTorch workers do the
    same for PyTorch before they report ready.
    """
    xs = np.ones((2, 8, 8, 3), np.float32)
    w = np.ones((3, 3, 3, 4), np.float32)

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jax.nn.relu(y))

    jax.block_until_ready(jax.jit(jax.grad(loss))(w, xs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated MODEL:SIZE:BATCH, MODEL allconv6 or mbv1_<alpha> "
                        f"(default {','.join(DEFAULT_CASES)}; with --quick {','.join(QUICK_CASES)})")
    parser.add_argument("--measure", type=comma_choices(MEASURES, "--measure"), default=MEASURES,
                        help="comma-separated: train, infer (default both)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (jaxcnn is always needed)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny cases, 2 repetitions of >= 0.05 s (unless --reps/--min-seconds)")
    parser.add_argument("--reps", type=int, help="timed repetitions per framework (default 5; quick 2)")
    parser.add_argument("--min-seconds", type=float, help="minimum length of one repetition (default 2.0; quick 0.05)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="redo a repetition when other processes used more than this many cores (default 0.25)")
    parser.add_argument("--retries", type=int, default=2, help="redos of a busy repetition before keeping it (2)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: usable cores)")
    parser.add_argument("--json", type=Path, help="write the full report (every repetition) as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown tables here")
    parser.add_argument("--quiet", action="store_true", help="print only the final tables")
    args = parser.parse_args(argv)

    try:
        cases = [parse_case(c) for c in (args.cases.split(",") if args.cases else
                                         (QUICK_CASES if args.quick else DEFAULT_CASES))]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    modes = list(args.measure)
    wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if set(wanted) - set(FRAMEWORKS) or "jaxcnn" not in wanted:
        parser.error(f"--frameworks must be a subset of {','.join(FRAMEWORKS)} including jaxcnn")
    wanted = [f for f in FRAMEWORKS if f in wanted]  # fixed interleaving order
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.05 if args.quick else 2.0)
    if reps < 1 or min_seconds <= 0:
        parser.error("--reps must be >= 1 and --min-seconds > 0")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    frameworks, skipped, versions = available(wanted)
    for fw, why in skipped.items():
        print(f"skipping {fw}: {why}", flush=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers: dict[str, TorchWorker] = {}
    for fw in frameworks:
        malloc = TORCH_VARIANTS.get(fw, (None, None))[1]
        if malloc is not None and malloc not in workers:
            workers[malloc] = TorchWorker(malloc, args.torch_threads or cores)
    torch_threads = next((w.info["threads"] for w in workers.values()), None)
    try:
        return _run(args, cases, modes, reps, min_seconds, frameworks, skipped, versions, workers, torch_threads,
                    argv, log)
    finally:
        for w in workers.values():
            w.close()


def _run(args, cases, modes, reps, min_seconds, frameworks, skipped, versions, workers, torch_threads,
         argv, log) -> int:
    """Time every case and mode, print the tables and write the reports (main's body, workers started)."""
    prewarm()
    meter = LoadMeter(pids=[w.proc.pid for w in workers.values()])
    if not meter.ok:
        log("note: /proc/stat unreadable; other processes' load is not checked")
    device = {**device_info(), **versions, "optax": optax.__version__, "numpy": np.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "platform": platform.platform()}
    rows = []
    t0 = time.perf_counter()
    for case in cases:
        for mode in modes:
            log(f"{case.spec} {mode}:")
            rows.append(measure(case, mode, frameworks, reps=reps, min_seconds=min_seconds,
                                max_other_load=args.max_other_load, retries=max(0, args.retries),
                                meter=meter, log=log, workers=workers))
    report = {
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "settings": {"reps": reps, "min_seconds": min_seconds, "measures": modes, "quick": args.quick,
                     "max_other_load": args.max_other_load, "torch_threads": torch_threads,
                     "cases": [c.spec for c in cases], "num_classes": NUM_CLASSES, "dtype": "float32",
                     "train_step": "BN train mode + softmax CE + backward + SGD momentum 0.9 lr 0.01"},
        "device": device,
        "torch_workers": {m: {k: w.info[k] for k in ("pid", "host_malloc", "jax_imported")}
                          for m, w in workers.items()},
        "frameworks": frameworks,
        "skipped": skipped,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    text = markdown(report)
    print("\n" + text, flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
