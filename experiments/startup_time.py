"""How long a `jaxcnn train` takes before its first epoch starts, on a cold and on a warm compile cache.

Command: python experiments/startup_time.py [--runs 3] [--baseline DIR] [-- TRAIN ARGS...]
Default train arguments: allconv6_1_bn --data mnist5k --epochs 1. Each run is a fresh process with a new --out
folder and the same JAXCNN_CACHE_DIR (a new empty folder unless --cache-dir is given), so the first run compiles
and the later ones load their programs from the caches. ``--baseline DIR``: another checkout of jaxcnn (its
native library built, e.g. `git worktree add DIR COMMIT` and the .so copied in) run alternately with this one,
each with its own cache, so that the two are compared on the same minutes of a machine whose speed drifts.
Runtime: about 40 s on 2 cores (twice that with --baseline).
Expected: the first epoch starts ~8-15 s after the start on the first run, ~1.7-2.8 s on the others (2-core
AMD EPYC Zen 3, 2026-12-07/08, with the training programs kept untraced; ~2.9-3.9 s before them in the same
minutes; the 2-core Xeon of 2026-12-04: ~2.2-2.7 s before them).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# run in the child: time from the interpreter's start to the first Trainer.run_epoch call
_CHILD = """
import sys, time
t0 = time.perf_counter()
import jaxcnn.cli as cli
import jaxcnn.train.trainer as T
first = T.Trainer.run_epoch
def run_epoch(self, *a, **k):
    print(f"FIRST_EPOCH {time.perf_counter() - t0:.3f}", file=sys.stderr, flush=True)
    T.Trainer.run_epoch = first
    return first(self, *a, **k)
T.Trainer.run_epoch = run_epoch
rc = cli.main(sys.argv[1:])
print(f"WHOLE {time.perf_counter() - t0:.3f}", file=sys.stderr)
sys.exit(rc)
"""


def _first_epoch(tree: Path, cache: Path, out: Path, train_args: list[str]) -> tuple[float, float, float] | None:
    """(first epoch starts after, compile reported, whole command) in seconds for one run of the jaxcnn in ``tree``."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAXCNN_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", _CHILD, "train", *train_args, "--out", str(out)],
                          env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    text = proc.stderr + proc.stdout
    first = re.search(r"FIRST_EPOCH ([\d.]+)", text)
    whole = re.search(r"WHOLE ([\d.]+)", text)
    comp = re.search(r"compile ([\d.]+) s", text)
    return float(first[1]), float(comp[1]) if comp else float("nan"), float(whole[1])


def main(argv: list[str] | None = None) -> int:
    """Run the train command ``--runs`` times (per tree) and print a markdown table of its start-up times."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=None, help="JAXCNN_CACHE_DIR (default: a new empty folder)")
    p.add_argument("--baseline", type=Path, default=None, help="another jaxcnn checkout, run alternately with this one")
    p.add_argument("train_args", nargs="*", default=["allconv6_1_bn", "--data", "mnist5k", "--epochs", "1"])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jaxcnn-startup-"))
    here = Path(__file__).resolve().parent.parent
    trees = {"this": here} if args.baseline is None else {"baseline": args.baseline.resolve(), "this": here}
    caches = {name: (args.cache_dir or work / "cache") if len(trees) == 1 else work / f"cache-{name}"
              for name in trees}
    print("| run | tree | first epoch starts after s | compile reported s | whole command s |\n"
          "|---:|---|---:|---:|---:|")
    for i in range(1, args.runs + 1):
        for name, tree in trees.items():
            got = _first_epoch(tree, caches[name], work / f"{name}-r{i}", args.train_args)
            if got is None:
                return 1
            print(f"| {i} | {name} | {got[0]:.1f} | {got[1]:.1f} | {got[2]:.1f} |", flush=True)
    print(f"\ncaches: {', '.join(str(c) for c in caches.values())}; train arguments: {' '.join(args.train_args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
