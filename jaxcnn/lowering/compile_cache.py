"""JAX's persistent compilation cache for jaxcnn's commands: a second identical run loads its programs.

A training run compiles its init, its chunks of steps and its evaluation (and, on first use of a model,
the compile-options candidates): 5-30 s that a short run or a study member pays every time. JAX can keep
each compiled executable on disk keyed by the program, its compile options, the devices and the jax/jaxlib
versions, so what runs is exactly what a fresh compile gives. :func:`enable` points that cache at
``$JAXCNN_CACHE_DIR/xla`` (default ``~/.cache/jaxcnn/xla``, beside the compile-options cache in
``.../compile-options``). The ``jaxcnn`` commands and the studies call it unless ``--no-compile-cache`` or
``JAXCNN_COMPILE_CACHE=0`` says not to; Python users call it themselves. A cache the user configured
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["cache_root", "enable", "enabled_dir"]

_OFF = ("0", "false", "no", "off")


def cache_root() -> Path:
    """Where jaxcnn keeps its caches: ``$JAXCNN_CACHE_DIR``, else ``~/.cache/jaxcnn``."""
    return Path(os.environ.get("JAXCNN_CACHE_DIR") or Path.home() / ".cache" / "jaxcnn")


def enabled_dir() -> str | None:
    """The persistent compilation cache folder JAX uses now, or None when it keeps none."""
    return jax.config.jax_compilation_cache_dir or None


def enable(on: bool = True) -> str | None:
    """Turn JAX's persistent compilation cache on at ``cache_root()/xla``; returns the folder in use.

    Args:
        on: False (or the environment's ``JAXCNN_COMPILE_CACHE=0``) leaves the cache off, unless the user
            configured one, which is always left as it is.

    Every program is kept, however fast it compiled (JAX's default keeps only those over one second): a
    training run's many small init programs add up to seconds. An unwritable folder only costs the cache
    (JAX warns and compiles as before).
    """
    if enabled_dir() is not None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return enabled_dir() or os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not on or os.environ.get("JAXCNN_COMPILE_CACHE", "1").strip().lower() in _OFF:
        return None
    folder = cache_root() / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # e.g. a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:  # a program compiled before this call made JAX decide "no cache" for the process; decide again
        from jax._src import compilation_cache as _jax_cache

        if _jax_cache._cache_checked and not _jax_cache._cache_used:
            _jax_cache.reset_cache()
    except (ImportError, AttributeError):  # a JAX without these internals: the cache works from a fresh process
        pass
    return str(folder)
