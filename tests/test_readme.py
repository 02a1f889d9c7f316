"""README stays true: its model table is regenerated from the library, its commands exist."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_model_table_is_generated_and_fresh():
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "readme_tables.py"), "--check", str(ROOT / "README.md")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_readme_lists_every_model():
    from jaxcnn import models

    readme = (ROOT / "README.md").read_text()
    missing = [n for n in models.names() if f"`{n}`" not in readme]
    assert not missing


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/run" in readme
    command = next(line for line in ci.splitlines() if line.startswith(".venv/bin/python -m pytest"))
    assert f"`{command}`" in readme  # the very command CI runs, flags included


def test_custom_loop_runs(tmp_path):
    """The README's custom training loop (between the custom-loop markers) runs as written and learns."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- custom-loop:begin -->", 1)[1].split("<!-- custom-loop:end -->", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 15 <= len(code.strip().splitlines()) <= 25  # "about 20 lines"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = float(result.stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert accuracy > 0.5, result.stdout  # four balanced classes: chance is 0.25
    assert sorted(p.name for p in (tmp_path / "runs" / "custom").iterdir())[-2:] == [
        "ckpt-000003.json", "ckpt-000003.safetensors"]


def test_readme_study_commands_parse_with_the_cli():
    """Every `jaxcnn ...` command of the README's study blocks is accepted by the CLI's parser as written."""
    import re
    import shlex

    from jaxcnn.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in ("study-commands", "study-full-scale"):
        section = readme.split(f"<!-- {block}:begin -->", 1)[1].split(f"<!-- {block}:end -->", 1)[0]
        text = section.replace("\\\n", " ")
        commands += [c for c in re.findall(r"(jaxcnn study [^\"\n]+)", text)]
    assert len(commands) >= 4
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # argparse exits 2 on an unknown or bad flag
        assert args.command == "study" and args.out is not None, command
