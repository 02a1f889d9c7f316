"""The persistent compilation cache of jaxcnn's commands: where it lives, how it is turned off, what it reuses.

Each case runs in a child process whose environment has no JAX_COMPILATION_CACHE_DIR (the test session sets one
for itself and its children), so what is checked is what a user's fresh shell gets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXCNN_COMPILE_CACHE")}
    env.update(JAXCNN_CACHE_DIR=str(cache), PYTHONPATH=str(_ROOT), **extra)
    return env


def _entries(cache: Path) -> set[str]:
    folder = cache / "xla"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_enable_after_a_compile_still_caches_and_respects_off_and_the_users_folder(tmp_path):
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from jaxcnn.lowering import compile_cache\n"
        "jax.jit(lambda x: x * 3)(jnp.ones(3)).block_until_ready()  # JAX decides 'no cache' here\n"
        "print(compile_cache.enable(sys.argv[1] == 'on'))\n"
        "jax.jit(lambda x: jnp.sin(x) + 2)(jnp.ones(5)).block_until_ready()\n"
    )
    on = subprocess.run([sys.executable, "-c", script, "on"], env=_env(tmp_path / "a"), capture_output=True,
                        text=True, timeout=120)
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == str(tmp_path / "a" / "xla") and _entries(tmp_path / "a"), on.stdout
    for env, arg in ((_env(tmp_path / "b"), "off"), (_env(tmp_path / "b", JAXCNN_COMPILE_CACHE="0"), "on")):
        off = subprocess.run([sys.executable, "-c", script, arg], env=env, capture_output=True, text=True,
                             timeout=120)
        assert off.returncode == 0 and off.stdout.strip() == "None" and not (tmp_path / "b").exists(), off.stderr
    mine = tmp_path / "mine"
    user = subprocess.run([sys.executable, "-c", script, "on"], capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path / "c", JAX_COMPILATION_CACHE_DIR=str(mine)))
    assert user.returncode == 0 and user.stdout.strip() == str(mine), user.stderr
    assert not (tmp_path / "c").exists()  # the user's own cache folder is left in charge


def test_a_second_identical_train_loads_every_program_and_gives_the_same_result(tmp_path):
    cache = tmp_path / "cache"

    def train(out: str, *extra: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "jaxcnn.cli", "train", "allconv6_1", "--data", "synthetic:128", "--input-size",
             "12", "--epochs", "1", "--batch", "32", "--compile-options", "xla", "--out", str(tmp_path / out),
             "--quiet", *extra], env=_env(cache, JAXCNN_KEEP_PROGRAMS="1"), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / out / "result.json").read_text())

    first = train("a")
    kept = _entries(cache)
    assert len(kept) >= 5, kept  # init, the chunk(s) of steps, evaluation, ...
    programs = {p.name for p in (cache / "programs").iterdir()}
    assert len(programs) == 6, programs  # init, permutation and chunk, exported and described (program_cache)
    second = train("b")
    assert _entries(cache) == kept  # nothing compiled that the first run had not kept
    assert {p.name for p in (cache / "programs").iterdir()} == programs  # nor traced anew
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["final_train_loss"] == first["final_train_loss"]


def test_the_commands_that_compile_turn_the_cache_on_unless_told_not_to(tmp_path, monkeypatch):
    from jaxcnn import cli

    calls = []
    monkeypatch.setattr(cli.compile_cache, "enable", lambda on=True: calls.append(on))
    base = ["--data", "nosuch", "--out", str(tmp_path / "o")]  # fails after the cache step: nothing trains
    assert cli.main(["train", "allconv6_1", *base]) == 2
    assert cli.main(["train", "allconv6_1", *base, "--no-compile-cache"]) == 2
    assert cli.main(["study", "allconv6_1", *base, "--no-compile-cache"]) == 2
    assert cli.main(["models"]) == 0  # accounting compiles nothing: the cache is left alone
    assert calls == [True, False, False]
