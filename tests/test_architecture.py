"""The layout is the architecture: who may import whom, and where trust code lives."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import shared

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "agent", "coordinator")
MAX_MODULE_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if name.split(".")[0] in forbidden or name in forbidden
    ]


def test_shared_imports_neither_agent_nor_coordinator() -> None:
    assert _offending(_modules("shared"), ("agent", "coordinator")) == []


def test_agent_and_coordinator_never_import_each_other() -> None:
    assert _offending(_modules("agent"), ("coordinator",)) == []
    server = [p for p in _modules("coordinator") if "client" not in p.relative_to(ROOT).parts]
    assert _offending(server, ("agent",)) == []


def test_client_imports_only_shared() -> None:
    client = _modules("coordinator/client")
    offending = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in client
        for name in sorted(_imports(path))
        if name.split(".")[0] in ("agent", "coordinator")
        and not name.startswith("coordinator.client")
    ]
    assert offending == []
    # relative imports and imports inside functions count too
    graph = _import_graph()
    first_party = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if module.startswith("coordinator.client")
        for target in sorted(targets)
        if not target.startswith(("shared", "coordinator.client"))
    ]
    assert first_party == []


@pytest.mark.parametrize("package", ["agent", "coordinator"])
def test_only_shared_touches_signatures_and_log_hashing(package: str) -> None:
    assert _offending(_modules(package), ("cryptography", "nacl")) == []


def test_shared_all_is_complete_and_resolves() -> None:
    assert len(set(shared.__all__)) == len(shared.__all__)
    for name in shared.__all__:
        assert getattr(shared, name) is not None, name
    modules = {p.stem for p in (ROOT / "shared").glob("*.py") if not p.stem.startswith("_")}
    modules |= {p.parent.name for p in (ROOT / "shared").glob("*/__init__.py")}
    assert modules == set(shared.PUBLIC_MODULES)
    assert set(shared.PUBLIC_MODULES) <= set(shared.__all__)


def test_every_error_is_exported_and_has_its_own_code() -> None:
    errors = [
        value
        for module_name in shared.PUBLIC_MODULES
        for value in vars(getattr(shared, module_name)).values()
        if inspect.isclass(value) and issubclass(value, shared.SuanliError)
    ]
    assert {error.__name__ for error in errors} <= set(shared.__all__)
    codes = {error.code for error in set(errors)}
    assert len(codes) == len(set(errors))


# -- the import graph -------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or in a function, outside TYPE_CHECKING blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]
) -> set[str]:
    """The first-party modules an import statement runs: `from p import name` is p.name when
    that is a module, else p itself (its `__init__`)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    found = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            found.add(f"{base}.{alias.name}")
        elif base in known:
            found.add(base)
    return found


def _import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in _modules(package)]
    known = {_module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in _runtime_imports(tree):
            targets |= _targets(module, path.name == "__init__.py", node, known)
        graph[module] = targets - {module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(graph, group) for group in groups]


def _path_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest cycle through the group's first module (breadth first, inside the group)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def test_the_cycle_finder_names_a_circle_and_ignores_a_tree() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_resolves_packages_relative_and_type_checking_imports() -> None:
    known = {"p", "p.q", "p.r"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "from p import Name\n"
        "from . import r\n"
        "if TYPE_CHECKING:\n"
        "    import p.q\n"
        "def later():\n"
        "    from p.q import thing\n"
    )
    found = set()
    for node in _runtime_imports(ast.parse(source)):
        found |= _targets("p.r", False, node, known)
    assert found == {"p", "p.r", "p.q"}


def test_no_import_circles() -> None:
    cycles = _cycles(_import_graph())
    assert cycles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_the_line_limit() -> None:
    over = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for package in PACKAGES
        for path in _modules(package)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert over == [], f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(over)


def test_no_two_test_modules_share_a_name() -> None:
    # tests/ has no __init__.py files: pytest imports each test module by its bare name, so a
    # second one of the same name stops the whole run at collection
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
