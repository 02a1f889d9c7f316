"""XLA options that jaxcnn turns on by default, because they measurably speed up CNNs.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so these are added to the
environment when ``jaxcnn`` is imported. Measured on the 2-core AMD EPYC (Zen 4) CPU
this project is developed on (``jaxcnn bench allconv6 mobilenet_v1/0.25 --input-size 32
--batch 128 --mode train infer`` with and without the flag):

* ``--xla_cpu_experimental_ynn_fusion_type=dot`` hands dots and convolutions to the YNNPACK
  library: at 32x32, batch 128, allconv6 train 1.3x, MobileNet v1 0.25 train 1.6x and
  inference 1.45x; allconv6 at 224x224 (batch 16) train 1.2x. One measured loss: MobileNet
  v1 1.0 *training* at 224x224 (batch 8) runs 2.1x slower with it (7 -> 3 images/s), so
  set ``JAXCNN_XLA_DEFAULTS=0`` for that workload. The wider ``dot,eltwise,reduce`` setting
  is slower for MobileNet (it also claims the element-wise ops of the shifted depthwise
  convolution), so only ``dot`` is used. The width study (28x28 inputs) runs 13 min 59 s
  with the flag; it is what keeps the study inside its 15-minute budget.

Opt out with ``JAXCNN_XLA_DEFAULTS=0``. A flag you set yourself in ``XLA_FLAGS`` always
wins: jaxcnn adds nothing for an option already named there. The flag is CPU-only; GPU and
TPU backends ignore it.
"""

from __future__ import annotations

import os
import warnings

DEFAULT_FLAGS: dict[str, str] = {
    "--xla_cpu_experimental_ynn_fusion_type": "dot",
}


def apply_defaults(environ: dict[str, str] | None = None) -> list[str]:
    """Add jaxcnn's default XLA flags to ``XLA_FLAGS`` (unless opted out); return the flags added."""
    env = os.environ if environ is None else environ
    if env.get("JAXCNN_XLA_DEFAULTS", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    current = env.get("XLA_FLAGS", "")
    named = {part.split("=", 1)[0] for part in current.split()}
    added = [f"{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in named]
    if not added:
        return []
    if environ is None and _backends_started():
        # Too late: XLA parsed XLA_FLAGS already. Say so rather than pretend.
        warnings.warn(
            "jaxcnn was imported after JAX started its backend, so its default XLA flags "
            f"({' '.join(added)}) do not apply; import jaxcnn before the first JAX computation, "
            "or set them in XLA_FLAGS yourself (JAXCNN_XLA_DEFAULTS=0 silences this)",
            stacklevel=4,
        )
        return []
    env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _backends_started() -> bool:
    """Whether a JAX backend has already parsed XLA_FLAGS."""
    try:
        from jax._src import xla_bridge  # private, hence the guard: only used to give a warning

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


APPLIED: list[str] = apply_defaults()
"""The flags jaxcnn added when it was imported (empty when opted out, overridden or too late)."""
