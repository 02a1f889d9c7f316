"""The XLA flags the suite compiles with, for this process (conftest) and the processes tests start.

LLVM optimisation level 0 for XLA:CPU's own loops: most of the suite's time is compiling small programs that
then run a few steps, and level 0 compiles them ~30% faster (tests/test_train.py: 67 s -> 48 s on 2 cores).
Results are the same: the level changes the machine code XLA emits for its own loops, not the HLO, the float
semantics (no fast-math at either level) or the library kernels (YNNPACK, jaxcnn's native code). Speed is
measured by the benchmarks, which run at XLA's default level. No imports: conftest sets it before jax starts.
"""

OPT = "--xla_backend_optimization_level=0"


def with_opt(flags: str = "") -> str:
    """``flags`` plus the suite's optimisation level, unless ``flags`` sets a level itself."""
    return flags.strip() if "xla_backend_optimization_level" in flags else f"{flags} {OPT}".strip()
