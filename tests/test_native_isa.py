"""Every instruction-set variant of the native kernels, on whatever CPU runs the tests.

The kernels are compiled for AVX-512, AVX2+FMA and baseline x86-64 and pick one when the library loads;
``JAXCNN_NATIVE_ISA`` caps that choice, so each variant at or below this CPU's is run here in a process of
its own and checked against float64 XLA (channel counts chosen to reach every variant's vector blocks and
scalar tails). Without this, a CI machine with AVX-512 would never run the AVX2 or baseline code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from jaxcnn.lowering import native

ROOT = Path(__file__).resolve().parents[1]
on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernels are CPU-only")

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jaxcnn.lowering import native, native_dense
    from jaxcnn.lowering.conv import conv2d

    DN = ("NHWC", "HWIO", "NHWC")

    def rand(shape, seed):
        return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)

    def rel(got, want):
        return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))

    def check(name, f, args, ct):
        # f's value and vjp, with the native kernels (f(..., "native")) and XLA's in float32, against float64
        def run(impl, dtype):
            a = [jnp.asarray(v, dtype) for v in args]
            y, vjp = jax.vjp(lambda *a: f(*a, impl), *a)
            return [np.asarray(v, np.float64) for v in (y, *vjp(jnp.asarray(ct, dtype)))]
        with jax.enable_x64(True):
            want = run("xla", jnp.float64)
        got, xla = run("native", jnp.float32), run("xla", jnp.float32)
        return [(f"{name}[{k}]", rel(g, w), rel(x, w)) for k, (g, x, w) in enumerate(zip(got, xla, want))]

    out = {"isa": native.isa(), "errors": []}
    for c, stride in ((3, 1), (17, 2), (20, 1), (67, 2), (80, 1)):  # depthwise: tails and blocks of 4/8/16
        x, w = rand((2, 9, 7, c), c), rand((3, 3, 1, c), c + 1)
        ct = rand((2, (9 - 1) // stride + 1, (7 - 1) // stride + 1, c), c + 2)
        f = lambda x, w, impl, s=stride, c=c: conv2d(x, w, (s, s), ((1, 1), (1, 1)), (1, 1), c, impl)
        out["errors"] += check(f"depthwise c{c} s{stride}", f, (x, w), ct)
    for k, cin, cout, stride in ((3, 3, 17, 2), (3, 16, 40, 1), (1, 24, 36, 1), (3, 5, 70, 2)):  # dense
        x, w, b = rand((2, 8, 9, cin), cin), rand((k, k, cin, cout), cout), rand((cout,), 7)
        p = k // 2
        oh, ow = (8 + 2 * p - k) // stride + 1, (9 + 2 * p - k) // stride + 1
        ct = rand((2, oh, ow, cout), 9)
        f = lambda x, w, b, impl, s=stride, p=p: conv2d(x, w, (s, s), ((p, p), (p, p)), (1, 1), 1, impl, b)
        out["errors"] += check(f"dense {k}x{k} {cin}->{cout} s{stride}", f, (x, w, b), ct)
        # the forward kernel itself (the rule may route the layer's forward to XLA's), and the weight gradient
        y = native_dense.wconv_p.bind(x, w, b, stride=(stride,) * 2, pads=((p, p),) * 2, kernel=(k, k))
        dw, db = native_dense.wgrad_p.bind(x, ct, stride=(stride,) * 2, pads=((p, p),) * 2, kernel=(k, k), bias=True)
        with jax.enable_x64(True):
            x64, w64, ct64 = (jnp.asarray(a, jnp.float64) for a in (x, w, ct))
            y64 = lax.conv_general_dilated(x64, w64, (stride,) * 2, ((p, p),) * 2, dimension_numbers=DN) + b
            _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x64, w, (stride,) * 2, ((p, p),) * 2,
                                                                dimension_numbers=DN), w64)
            (dw64,) = vjp(ct64)
            db64 = np.asarray(ct64).sum(axis=(0, 1, 2))
        y32, vjp32 = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (stride,) * 2, ((p, p),) * 2,
                                                                dimension_numbers=DN), w)
        (dw32,) = vjp32(ct)
        db32 = jnp.sum(ct, axis=(0, 1, 2))
        name = f"dense kernel {k}x{k} {cin}->{cout}"
        out["errors"] += [(f"{name} y", rel(y, np.asarray(y64)), rel(y32 + b, np.asarray(y64))),
                          (f"{name} dw", rel(dw, np.asarray(dw64)), rel(dw32, np.asarray(dw64))),
                          (f"{name} db", rel(db, db64), rel(db32, db64))]
    print(json.dumps(out))
    """
)


def _cpu_order() -> list[str]:
    """The variants at or below this CPU's own, best first (what the kernels pick with no cap)."""
    best = native.isa()
    return list(native.ISAS[native.ISAS.index(best):]) if best in native.ISAS else []


@on_cpu
@pytest.mark.parametrize("isa", native.ISAS)
def test_each_variant_equals_float64_as_closely_as_xla_float32(isa):
    if not native.available():
        pytest.skip(f"the native library did not load: {native.load_error()}")
    if isa not in _cpu_order():
        pytest.skip(f"this CPU runs {native.isa()}; {isa} is above it")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), native.ISA_VARIABLE: isa})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["isa"] == isa  # the cap took: this process ran the variant named
    assert len(out["errors"]) == 5 * 3 + 4 * (4 + 3)
    for name, err, xla_err in out["errors"]:
        assert err <= 4 * max(xla_err, 1e-7), (isa, name, err, xla_err)


@on_cpu
def test_an_unknown_cap_is_refused_by_name():
    proc = subprocess.run([sys.executable, "-c", "from jaxcnn.lowering import native; print(native.available()); "
                           "print(native.load_error())"], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), native.ISA_VARIABLE: "sse9"})
    assert proc.returncode == 0, proc.stderr
    available, error = proc.stdout.strip().splitlines()[-2:]
    assert available == "False" and "JAXCNN_NATIVE_ISA='sse9'" in error and "avx2" in error
