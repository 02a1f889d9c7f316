"""jaxcnn's host-memory settings, read through the kernel's own page-fault counter in fresh processes.

Each case runs a program whose 80 MB temporary (above glibc's 64 MB arena-heap limit, so mapped per
call by default) is allocated on every call, and counts the minor page faults of each of nine calls after
warm-up: about 80 MB / 4 KB = 20,480 per call when the buffer is mapped anew, next to none when it is
kept. The reference is the buffer's size and the kernel's counter, not a timing. The median call is
compared: on a busy machine (CI, another test process beside it) the kept buffer was once faulted in
again in one call of five (the heap's top moved under it), which says nothing about the other calls.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, os, resource, sys
if os.environ.get("START_JAX_FIRST"):
    import jax
    jax.numpy.zeros(1).block_until_ready()
import jaxcnn
import jax, jax.numpy as jnp
from jaxcnn.lowering import host_allocator

@jax.jit
def f(x):
    y = jax.lax.optimization_barrier(x * 2.0)  # materialised: an 80 MB temporary
    return (y[::-1] * x).sum()

x = jnp.ones(20 * 2**20, jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
per_call = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(per_call)[len(per_call) // 2]  # the median call
s = host_allocator.status()
print(json.dumps({"faults": faults, "per_call": per_call, "cached": s.cached, "reason": s.reason, "line": s.describe(),
                  "async": jax.config.read("jax_cpu_enable_async_dispatch")}))
"""

GLIBC_LINUX = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
PAGES = 20 * 2**20 * 4 // 4096  # 4 KB pages of the temporary


def probe(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("JAXCNN_MALLOC", "JAX_CPU_ENABLE_ASYNC_DISPATCH")}
    full.update(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC_LINUX, reason="the settings are glibc's; elsewhere jaxcnn leaves malloc alone")
def test_import_keeps_a_large_temporary_between_calls_and_the_switch_restores_the_default():
    kept = probe()
    assert kept["cached"] and kept["async"] is False, kept
    assert kept["faults"] < 0.05 * PAGES, kept  # the buffer is reused: almost no page is faulted in again
    default = probe(JAXCNN_MALLOC="0")
    assert not default["cached"] and default["reason"] == "JAXCNN_MALLOC=0" and default["async"] is True
    assert default["faults"] > 0.5 * PAGES, default  # glibc's default: every call maps and faults it anew
    assert "not cached (JAXCNN_MALLOC=0)" in default["line"]


@pytest.mark.skipif(not GLIBC_LINUX, reason="the settings are glibc's; elsewhere jaxcnn leaves malloc alone")
def test_a_backend_started_before_import_or_a_user_dispatch_choice_is_left_alone_and_said_so():
    late = probe(START_JAX_FIRST="1")
    assert not late["cached"] and "backend started" in late["reason"] and late["async"] is True
    chosen = probe(JAX_CPU_ENABLE_ASYNC_DISPATCH="1")
    assert not chosen["cached"] and "JAX_CPU_ENABLE_ASYNC_DISPATCH" in chosen["reason"] and chosen["async"] is True
