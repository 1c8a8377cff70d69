"""The package's import direction (docs/architecture.md): leaves below floors below two apps side by side.

Read from the source, every import counts, module level or not, under TYPE_CHECKING or not: a function-level
import hides a circle from Python, not from this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"

# Leaves import nothing of ours but other leaves: the SDK and both apps stand on them.
LEAVES = ("gateway.wire", "gateway.principal", "gateway.tokens")
SDK = ("gateway.client",)
APPS = ("gateway.proxy", "gateway.issuer")
# The composition root and the commands: they alone may see both apps.
ENTRY = ("gateway.__main__", "gateway.cli", "gateway.serve", "gateway.demo", "gateway.explain")


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from gateway.proxy import stamp` imports the module gateway.proxy.stamp
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in _imports(path, name) if target in modules and target != name}
        for name, path in modules.items()
    }


GRAPH = _graph()


def _allowed(source: str, target: str) -> bool:
    """May `source` import `target`?"""
    if target == "gateway" or _under(target, LEAVES):
        return True  # the package root holds only __version__
    if _under(source, LEAVES):
        return False
    if _under(source, SDK):
        return _under(target, SDK)
    if _under(target, ENTRY):
        return _under(source, ENTRY)
    for app in APPS:
        if _under(target, (app,)):
            return _under(source, (app, *ENTRY))  # proxy and issuer never import each other
    return not _under(target, SDK) or _under(source, ENTRY)


def test_the_graph_is_read_from_the_source() -> None:
    # Guards the test itself: a reader that found no edges would pass everything below.
    assert "gateway.tokens.access_token" in GRAPH["gateway.proxy.identify"]
    assert "gateway.config" in GRAPH["gateway.trust"]


@pytest.mark.parametrize("source", sorted(GRAPH))
def test_imports_point_down(source: str) -> None:
    upward = sorted(target for target in GRAPH[source] if not _allowed(source, target))
    assert not upward, f"{source} imports {', '.join(upward)}: see docs/architecture.md for the layers"


def test_the_rules_refuse_the_edges_they_name() -> None:
    assert not _allowed("gateway.proxy.identify", "gateway.issuer.keystore")
    assert not _allowed("gateway.issuer.app", "gateway.proxy.stamp")
    assert not _allowed("gateway.client.auth", "gateway.config")
    assert not _allowed("gateway.tokens.jwk", "gateway.config")
    assert not _allowed("gateway.config", "gateway.proxy.snapshot")
    assert _allowed("gateway.serve", "gateway.proxy.app")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert _cycles(GRAPH) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_the_sdk_imports_with_the_server_packages_removed() -> None:
    """An agent installs the SDK without the proxy, the token service, config or state (a server's parts)."""
    server = sorted(
        {name.split(".")[1] for name in GRAPH if name.count(".") >= 1}
        - {name.split(".")[1] for name in GRAPH if _under(name, (*LEAVES, *SDK))}
    )
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys
        SERVER = {server!r}
        class Removed(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                parts = name.split(".")
                if len(parts) > 1 and parts[0] == "gateway" and parts[1] in SERVER:
                    raise ModuleNotFoundError(f"{{name}} is not installed", name=name)
                return None
        sys.meta_path.insert(0, Removed())
        import gateway.client
        for info in pkgutil.walk_packages(gateway.client.__path__, "gateway.client."):
            importlib.import_module(info.name)
        from gateway.client import TollboothAuth
        print("ok", TollboothAuth.__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert "proxy" in server and "issuer" in server and "config" in server
