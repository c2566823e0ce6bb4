"""The import graph of unet/ and flows/ has no cycle, counting imports inside functions too (a cycle dodged
with a function-level import is still a cycle), and unet/ never imports Prefect or flows/."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of unet/ and flows/ -> the modules of unet/ and flows/ it imports, anywhere in it."""
    paths = sorted((ROOT / "unet").rglob("*.py")) + sorted((ROOT / "flows").glob("*.py"))
    ours = {module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in ours and m != name}
    return graph


def test_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
    assert len(graph) > 40  # every module was read


def test_the_library_never_imports_prefect_or_the_flows():
    for path in (ROOT / "unet").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("prefect", "flows")], path
