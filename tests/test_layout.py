"""The package's layout and layering, as the README's Layout section states them.

Accounting sits below training (importing it loads no optax and no engine), the import graph
of jaxcnn's modules has no cycle, the top level holds few public modules, and no module is
over 400 lines but the pickle interpreter.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "jaxcnn"
ENGINE = ("optax", "jaxcnn.train.loop", "jaxcnn.train.trainer", "jaxcnn.train.optimizers")


def _loaded_after(code: str) -> list[str]:
    probe = code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_accounting_and_the_models_command_load_no_training_engine():
    summary_only = _loaded_after("import jaxcnn.summary")
    listing = _loaded_after("from jaxcnn.cli import main\nmain(['models'])")
    for loaded in (summary_only, listing):
        assert not [m for m in ENGINE if m in loaded], [m for m in ENGINE if m in loaded]
    assert "jaxcnn.train.loop" in _loaded_after("from jaxcnn.train import fit")  # the engine itself still loads


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The jaxcnn modules ``path`` imports at module level (function-level imports count too: none may hide a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxcnn"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def test_the_import_graph_has_no_cycle():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    # a package's __init__ re-exporting its own submodules is not a dependency of those submodules on it
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and files[d].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_top_level_is_a_short_map_and_modules_stay_small():
    public = sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
    assert len(public) <= 12, public
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400 and p.name != "safe_pickle.py"}
    assert not long, long
    for pkg in packages:  # each package says what it holds
        assert ast.get_docstring(ast.parse((PKG / pkg / "__init__.py").read_text())), pkg
