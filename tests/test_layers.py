"""Acyclic layers, enforced: every import between kernelcert modules (top level or inside a function)
goes to a strictly lower layer of the table in docs/architecture.md, every module has a row there,
and no function imports a kernelcert module (only optional third-party dependencies may be imported
inside functions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kernelcert"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`(kernelcert[\w.]*)`\s*\|")


def layer_table() -> dict[str, int]:
    """module -> layer, read from the table in docs/architecture.md."""
    table = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            table[m.group(2)] = int(m.group(1))
    return table


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every kernelcert module: the .py sources, and the compiled extensions by their type stubs (.pyi
    next to a .c source; a stub has no kernelcert imports)."""
    found = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    found.update({module_name(p): p for p in sorted(PACKAGE.rglob("*.pyi")) if p.with_suffix(".c").exists()})
    return found


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Absolute kernelcert module names an ImportFrom node imports (submodules named in `names`)."""
    if node.level:
        base = importer.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("kernelcert"):
        return []
    known = modules()
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return subs or [target]


def imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported kernelcert module, line, inside a function) for every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    is_package = path.name == "__init__.py"

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("kernelcert"))
            elif isinstance(child, ast.ImportFrom):
                out.extend((t, child.lineno, in_function) for t in _resolve(child, name, is_package))
            visit(child, inner)

    visit(tree, False)
    return out


def test_the_table_is_read():
    table = layer_table()
    assert len(table) >= 30 and table["kernelcert"] > table["kernelcert.pipeline"] > table["kernelcert.evidence"]


def test_every_module_has_a_layer():
    table = layer_table()
    missing = sorted(set(modules()) - set(table))
    assert not missing, f"modules without a row in the layer table of docs/architecture.md: {missing}"


def test_imports_go_strictly_downward():
    table = layer_table()
    bad = []
    for name, path in modules().items():
        for target, line, _ in imports(name, path):
            if target == name or target not in table or name not in table:
                continue
            if table[target] >= table[name]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (layer {table[name]}) imports {target} "
                           f"(layer {table[target]})")
    assert not bad, "imports the layer table does not allow:\n" + "\n".join(bad)


def test_no_function_local_imports_of_kernelcert_modules():
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {target} inside a function"
           for name, path in modules().items() for target, line, local in imports(name, path) if local]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Independent of the table: the module import graph (top level and function-local) is acyclic."""
    graph = {name: {t for t, _, _ in imports(name, path) if t != name and t in modules()}
             for name, path in modules().items()}
    # a package imports its own submodules; a submodule importing its package is the circle to catch
    state: dict[str, int] = {}

    def dfs(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if not state.get(nxt):
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            dfs(node, [node])
