"""vlkernels/train's module layering: no import cycle (function-local imports included), and the command
line's entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vlkernels.train

PKG = "vlkernels.train"
ROOT = Path(vlkernels.train.__file__).parent


def _module_name(path: Path) -> str:
    return PKG if path.stem == "__init__" else f"{PKG}.{path.stem}"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (top level or inside functions).
    ``from vlkernels.train import data`` is an edge to ``vlkernels.train.data``; importing a name from the
    package itself is an edge to ``vlkernels.train`` (its __init__)."""
    modules = {_module_name(p): p for p in ROOT.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .x import y
                    parts = PKG.split(".")[: len(PKG.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            graph[mod].update(t for t in targets if t in modules and t != mod)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_cycle_finder_sees_function_local_imports():
    """The checker is not vacuous: the old layout (compare imported config_from_args from __main__ inside
    compare(), __main__ imported compare inside main()) is a cycle."""
    old = {f"{PKG}.__main__": {f"{PKG}.compare", f"{PKG}.loop"}, f"{PKG}.compare": {f"{PKG}.__main__"}}
    assert find_cycle(old) == [f"{PKG}.__main__", f"{PKG}.compare", f"{PKG}.__main__"]
    src = "def f():\n    from vlkernels.train.__main__ import config_from_args\n"
    tree = ast.parse(src)
    assert any(isinstance(n, ast.ImportFrom) and n.module == f"{PKG}.__main__" for n in ast.walk(tree))


def test_train_package_has_no_import_cycle():
    graph = import_graph()
    assert f"{PKG}.cli" in graph and f"{PKG}.compare" in graph[f"{PKG}.cli"]
    assert f"{PKG}.loop" in graph[f"{PKG}.compare"]  # function-local imports are in the graph
    assert find_cycle(graph) is None, find_cycle(graph)
    assert graph[f"{PKG}.__main__"] == {f"{PKG}.cli"}  # the shim
    assert not any(f"{PKG}.__main__" in deps for deps in graph.values())  # nothing imports the shim


def test_entry_points():
    from vlkernels.train import cli
    from vlkernels.train.__main__ import main, run  # run: the vlkernels-train console script's target

    assert main is cli.main and run is cli.run
    out = subprocess.run([sys.executable, "-m", "vlkernels.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m vlkernels.train")
    assert "--memory-budget" in out.stdout and "--overwrite" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "vlkernels.train", "--batch-size", "-4"], capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and "--batch-size must be >= 2" in bad.stderr and "Traceback" not in bad.stderr
