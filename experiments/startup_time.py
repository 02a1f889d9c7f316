"""How long a `jaxcnn train` takes before its first epoch starts, on a cold and on a warm compile cache.

Command: python experiments/startup_time.py [--runs 3] [-- TRAIN ARGS...]
Default train arguments: allconv6_1_bn --data mnist5k --epochs 1. Each run is a fresh process with a new --out
folder and the same JAXCNN_CACHE_DIR (a new empty folder unless --cache-dir is given), so the first run compiles
and the later ones load their programs from the persistent compilation cache. Runtime: about 40 s on 2 cores.
Expected: the first epoch starts ~13-15 s after the start on the first run, ~2.2-2.7 s on the others (2-core
Xeon, 2026-12-03 and late 2026-12-04; 3.5-5.8 s when that machine ran slow; the 2-core Zen 4 of the round
before: ~20 s and ~4.5 s).
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


def main(argv: list[str] | None = None) -> int:
    """Run the train command ``--runs`` times and print a markdown table of its start-up times."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=None, help="JAXCNN_CACHE_DIR (default: a new empty folder)")
    p.add_argument("train_args", nargs="*", default=["allconv6_1_bn", "--data", "mnist5k", "--epochs", "1"])
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jaxcnn-startup-"))
    cache = args.cache_dir or work / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAXCNN_CACHE_DIR"] = str(cache)
    print("| run | first epoch starts after s | compile reported s | whole command s |\n|---:|---:|---:|---:|")
    for i in range(1, args.runs + 1):
        proc = subprocess.run([sys.executable, "-c", _CHILD, "train", *args.train_args, "--out", str(work / f"r{i}")],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        text = proc.stderr + proc.stdout
        first = re.search(r"FIRST_EPOCH ([\d.]+)", text)
        whole = re.search(r"WHOLE ([\d.]+)", text)
        comp = re.search(r"compile ([\d.]+) s", text)
        print(f"| {i} | {float(first[1]):.1f} | {float(comp[1]) if comp else float('nan'):.1f} "
              f"| {float(whole[1]):.1f} |", flush=True)
    print(f"\ncache: {cache}; train arguments: {' '.join(args.train_args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
