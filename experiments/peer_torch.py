"""compare_peers.py's PyTorch side: the shared workload definitions, the torch models, and a worker process.

The worker (``python experiments/peer_torch.py --serve``) builds and runs PyTorch steps on command, so
that compare_peers can time PyTorch in a process of its own, as PyTorch's users run it: importing jaxcnn
changes the process's malloc settings (``jaxcnn.lowering.host_allocator``), and PyTorch measured in
jaxcnn's process gains from them (up to 1.5x on allconv6 224x224 inference on the 2-core Xeon), which
no stock PyTorch process gets. ``--malloc jaxcnn`` gives the worker jaxcnn's settings instead, to show
how much of a ratio is the allocator.

This module imports only NumPy at the top (torch inside functions), so compare_peers can share its
definitions without the worker importing JAX.

Protocol: one JSON object per line on stdin, one reply per line on stdout (anything PyTorch prints goes
to stderr): ``{"op": "build", "key": k, "case": [model, alpha, size, batch], "mode": "train"|"infer",
"channels_last": bool}`` -> ``{"params": n, "state": n, "notes": text}``; ``{"op": "run", "key": k,
"n": n}`` -> ``{"ok": true}`` once n steps finished; ``{"op": "drop", "key": k}``; ``{"op": "quit"}``.
Errors reply ``{"error": text}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9
BN_MOMENTUM, BN_EPS = 0.9, 1e-5  # flax/jaxcnn convention; torch momentum = 1 - 0.9

# Architectures, written out here independently of jaxcnn's builders (the parameter-count check
# compares the three implementations).
ALLCONV6 = (64, 64, 128, 128, 256)  # 3x3 stride-2 convs
MBV1_BLOCKS = (  # (pointwise channels, depthwise stride), Howard et al. 2017 Table 1
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def scaled(c: int, alpha: float) -> int:
    """Channels times the width multiplier alpha, rounded (alpha 0.25..1 keeps every count integral)."""
    return max(1, int(round(c * alpha)))


@dataclass(frozen=True)
class Case:
    """One workload: ``model`` is ``allconv6`` or ``mbv1`` (width ``alpha``), square input, batch."""

    model: str
    alpha: float
    size: int
    batch: int

    @property
    def label(self) -> str:
        """Short name, e.g. ``mbv1_1.0`` or ``allconv6``."""
        return f"mbv1_{self.alpha:g}" if self.model == "mbv1" else "allconv6"

    @property
    def spec(self) -> str:
        """The ``--cases`` spelling of this case."""
        return f"{self.label}:{self.size}:{self.batch}"


def make_batch(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The case's one fixed batch: NHWC float32 images and int32 labels (seed 0, the same in every process)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.size, case.size, 3), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, case.batch).astype(np.int32)
    return x, y


def torch_module(case: Case):
    """The case's model as a ``torch.nn.Sequential``."""
    import torch.nn as nn

    if case.model == "allconv6":
        layers: list[nn.Module] = []
        cin = 3
        for c in ALLCONV6:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES)]
        return nn.Sequential(*layers)

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, momentum=1 - BN_MOMENTUM, eps=BN_EPS),
            nn.ReLU(inplace=True),
        ]

    cin = scaled(32, case.alpha)
    layers = conv_bn(3, cin, 3, 2)
    for c, s in MBV1_BLOCKS:
        cout = scaled(c, case.alpha)
        layers += conv_bn(cin, cin, 3, s, groups=cin) + conv_bn(cin, cout, 1, 1)
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES)]
    return nn.Sequential(*layers)


def torch_step(case: Case, mode: str, *, channels_last: bool) -> tuple[Callable[[int], None], int, int, str]:
    """PyTorch eager, NCHW or channels_last, on :func:`make_batch`'s batch (transposed from NHWC).

    Returns ``(run, parameter count, BatchNorm running-statistics count, notes)``; ``run(n)`` takes n
    steps (train: SGD momentum on the cross-entropy; infer: eval-mode forward under inference_mode).
    """
    import torch

    x, y = make_batch(case)
    torch.manual_seed(0)
    model = torch_module(case)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    n_state = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()

        def run(n: int) -> None:
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt), yt)
                loss.backward()
                opt.step()

    else:
        model.eval()

        def run(n: int) -> None:
            with torch.inference_mode():
                for _ in range(n):
                    model(xt)

    layout = "channels_last" if channels_last else "NCHW"
    return run, n_params, n_state, f"torch.nn.Sequential, eager, {layout}, {torch.get_num_threads()} threads"


def prewarm_torch() -> None:
    """Pay PyTorch's one-time start-up (oneDNN, thread pool) on a tiny conv, in both layouts."""
    import torch

    for fmt in (torch.contiguous_format, torch.channels_last):
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(memory_format=fmt)
        conv(torch.ones(2, 3, 8, 8).contiguous(memory_format=fmt)).mean().backward()


def _malloc(choice: str) -> str:
    """Apply the worker's allocator choice; returns the line compare_peers reports."""
    if choice == "glibc":
        return "host malloc: glibc defaults (a stock PyTorch process)"
    # the same settings jaxcnn applies on import, applied by jaxcnn's own code
    from jaxcnn.lowering import host_allocator

    status = host_allocator.configure(True)
    return "host malloc: jaxcnn's settings (no mmap, 2 GiB trim)" if status.cached else status.describe()


def serve(threads: int, malloc: str) -> int:
    """Answer build/run/drop commands from stdin until ``quit`` or end of input."""
    out = sys.stdout
    sys.stdout = sys.stderr  # keep the protocol channel clean of anything a library prints
    allocator = _malloc(malloc)
    import torch

    torch.set_num_threads(threads)
    prewarm_torch()
    steps: dict[str, Callable[[int], None]] = {}

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True, "pid": os.getpid(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "host_malloc": allocator, "jax_imported": "jax" in sys.modules})
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            op = msg["op"]
            if op == "quit":
                break
            if op == "build":
                run, n_params, n_state, notes = torch_step(
                    Case(*msg["case"]), msg["mode"], channels_last=bool(msg["channels_last"]))
                steps[msg["key"]] = run
                reply({"params": n_params, "state": n_state, "notes": notes})
            elif op == "run":
                steps[msg["key"]](int(msg["n"]))
                reply({"ok": True})
            elif op == "drop":
                steps.pop(msg["key"], None)
                reply({"ok": True})
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as e:  # the parent reports it and stops; the worker stays usable
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run as compare_peers's PyTorch worker")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--malloc", choices=("glibc", "jaxcnn"), default="glibc",
                        help="glibc: stock PyTorch process; jaxcnn: jaxcnn's host-memory settings")
    args = parser.parse_args(argv)
    if not args.serve:
        parser.error("this module is compare_peers.py's worker: run it with --serve")
    return serve(args.threads, args.malloc)


if __name__ == "__main__":
    sys.exit(main())
