"""The layout is the architecture: who may import whom, and where trust code lives."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import shared

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "agent", "coordinator")


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
