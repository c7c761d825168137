"""The package's import graph: no circle (function-local imports included) and every import points down
the layers (checks / dist -> ops -> dispatch -> functional -> nn -> package root -> trainer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vlkernels"

# Lower rank = lower layer. A module may import modules of a lower rank, or of its own rank within its
# own package (siblings), as long as there is no circle.
RANKS = [
    ("vlkernels._C", 0),
    ("vlkernels._checks", 0),
    ("vlkernels._dist", 0),
    ("vlkernels._triton", 0),
    ("vlkernels._ext", 0),
    ("vlkernels.ops", 1),
    ("vlkernels.reference", 1),
    ("vlkernels.augment", 1),
    ("vlkernels._dispatch", 2),
    ("vlkernels.functional", 3),
    ("vlkernels.nn", 4),
    # The package root imports patch_open_clip; the integrations build on nn.
    ("vlkernels.integrations", 4.5),
    ("vlkernels.open_clip_train", 5.5),
    ("vlkernels.train", 6),
    ("vlkernels", 5),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path | None]:
    """Every module of the package; the compiled extension ``vlkernels._C`` is a leaf (built or not)."""
    return {"vlkernels._C": None, **{_module_name(p): p for p in ROOT.rglob("*.py")}}


def _resolve(name: str, modules) -> str | None:
    """The most specific vlkernels module that ``name`` (a module or module.attribute) refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path | None, modules, me: str | None = None) -> set[str]:
    """Every vlkernels module that ``path`` imports, at module level or inside functions."""
    if path is None:
        return set()
    me = me or _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target.startswith("vlkernels") and target != me:
                found.add(target)
    return found


def _rank(module: str) -> int:
    for prefix, rank in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"{module} has no layer in RANKS")


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_imports_point_down():
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            if _rank(target) > _rank(module):
                bad.append(f"{module} (layer {_rank(module)}) imports {target} (layer {_rank(target)})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_circles_and_upward_imports(tmp_path):
    """The two checks above can fail: a planted circle and a planted upward import are found."""
    graph = _graph()
    assert _cycle({**graph, "vlkernels._checks": {"vlkernels.nn"}}) is not None
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from vlkernels.nn import ClipLoss\n")
    found = _imports(probe, _modules(), me="vlkernels.ops.probe")
    assert "vlkernels.nn" in found
    assert _rank("vlkernels.nn") > _rank("vlkernels.ops.contrastive")


@pytest.mark.parametrize("module", ["vlkernels.ops.contrastive", "vlkernels.functional", "vlkernels.nn"])
def test_layers_import_alone(module):
    """Each layer imports on its own in a fresh interpreter (no reliance on import order)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT.parent)
