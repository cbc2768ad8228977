"""The dependency direction of docs/ARCHITECTURE.md, checked on the source: the layers below the
recipes never import them, and no two modules import each other (directly or round a loop) when
they are imported."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xlm"
BELOW_RECIPES = ("xlm.models", "xlm.nn", "xlm.data", "xlm.interop", "xlm.assets", "xlm.registry", "xlm.io",
                 "xlm.errors", "xlm.run_dir", "xlm.shipped", "xlm.placement")
ABOVE = ("xlm.recipes", "xlm.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "templates" not in p.parts}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, *, module_scope_only: bool) -> set[str]:
    """The xlm modules `module` imports (with the packages on the way to them), at module scope or anywhere."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    known = _modules()
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}  # itself included
    found: set[str] = set()

    def add(name: str) -> None:  # importing a.b.c imports a and a.b first (but its own packages are already in)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and prefix not in ancestors:
                found.add(prefix)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                add(target)
                for alias in node.names:
                    add(f"{target}.{alias.name}")
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            elif module_scope_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            else:
                visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])

    visit(tree.body)
    return {name for name in found if name.startswith("xlm")}


def test_no_layer_below_the_recipes_imports_them_anywhere():
    offenders = []
    for module, path in _modules().items():
        if module.startswith(BELOW_RECIPES):
            wrong = sorted(i for i in _imports(module, path, module_scope_only=False) if i.startswith(ABOVE))
            if wrong:
                offenders.append(f"{module} imports {', '.join(wrong)}")
    assert not offenders, "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another round a loop (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongly_connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                strongly_connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            strongly_connect(node)
    return cycles


def test_no_import_cycles_at_import_time():
    cycles = _cycles({m: _imports(m, p, module_scope_only=True) for m, p in _modules().items()})
    assert not cycles, "modules importing each other: " + " | ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_import_of_the_recipes_and_a_cycle(tmp_path):
    """The checks above can fail: a function-level import of the recipes is seen, a type-only one is not."""
    path = tmp_path / "probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xlm.cli import main\n"
                    "def f():\n    from xlm.recipes import train\n")
    assert _imports("xlm.models.probe", path, module_scope_only=False) == {"xlm.recipes", "xlm.recipes.train"}
    assert _imports("xlm.models.probe", path, module_scope_only=True) == set()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
