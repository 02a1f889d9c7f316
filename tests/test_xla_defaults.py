"""jaxcnn's default XLA flags: added on import, never over the user's own, opt-out, late-import warning."""

from __future__ import annotations

import os
import subprocess
import sys

from jaxcnn.xla_defaults import DEFAULT_FLAGS, apply_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_added_to_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    added = apply_defaults(env)
    assert added == [f"{FLAG}={DEFAULT_FLAGS[FLAG]}"]
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *added]


def test_a_flag_the_user_set_wins():
    env = {"XLA_FLAGS": f"{FLAG}=dot,eltwise,reduce"}
    assert apply_defaults(env) == []
    assert env["XLA_FLAGS"] == f"{FLAG}=dot,eltwise,reduce"


def test_opt_out_adds_nothing():
    for off in ("0", "false", "OFF"):
        env = {"JAXCNN_XLA_DEFAULTS": off}
        assert apply_defaults(env) == [] and "XLA_FLAGS" not in env


def _python(code: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXCNN_XLA_DEFAULTS")} | extra
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_sets_the_flag_before_the_backend_starts_and_it_takes_effect():
    # the backend starts after import and accepts the flag (an unknown flag would abort the process)
    code = "import jaxcnn, os, jax.numpy as jnp; print(os.environ['XLA_FLAGS']); print(float(jnp.ones(3).sum()))"
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    flags, total = proc.stdout.split("\n")[:2]
    assert f"{FLAG}=dot" in flags.split() and total == "3.0"


def test_importing_after_the_backend_started_warns_and_changes_nothing():
    proc = _python("import os, jax.numpy as jnp; jnp.ones(1); import jaxcnn; print(os.environ.get('XLA_FLAGS'))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
    assert "imported after JAX started its backend" in proc.stderr and "JAXCNN_XLA_DEFAULTS=0" in proc.stderr
