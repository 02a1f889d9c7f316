"""README stays true: its model table is regenerated from the library, its commands exist."""

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
    assert ".venv/bin/python -m pytest" in readme and ".venv/bin/python -m pytest" in ci
