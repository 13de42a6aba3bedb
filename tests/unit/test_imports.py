"""The import rules of the layout, checked transitively over the source tree (ARCHITECTURE.md, "Import direction").

* one import root: no module anywhere in the tree imports the bare folders ``events``, ``services`` or
  ``projections`` (that would load a second copy of a module beside ``tickflow.…`` and split its registries);
* ``tickflow.events`` imports nothing else of tickflow;
* the pure core (``tickflow.core`` and the pure projection modules) reaches, through every import it makes, only
  pure modules and no clock, randomness, uuid, os or I/O;
* ``tickflow.projections`` never imports the services (``tickflow.core`` … ``tickflow.cli``);
* the SDK (``tickflow.client``) reaches no server library;
* no import circles at all.

Imports are read with ``ast`` from the files, including those inside functions and ``TYPE_CHECKING`` blocks: a lazy
import is still a dependency, and a circle through one is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.paths import REPO_ROOT

#: Where each part of the ``tickflow`` package lives (pyproject.toml's package-dir).
PACKAGE_DIRS = {"tickflow": "services", "tickflow.events": "events", "tickflow.projections": "projections"}
PURE_PROJECTIONS = {"tickflow.projections.rows", "tickflow.projections.facts", "tickflow.projections.fold"}
IMPURE = {"time", "random", "uuid", "os", "secrets", "socket", "asyncio", "threading", "subprocess", "io", "pathlib",
          "shutil", "tempfile", "logging", "datetime", "urllib", "http", "select", "signal"}
SERVER_LIBS = {"fastapi", "starlette", "uvicorn", "sse_starlette", "aiokafka", "kafka", "chdb", "clickhouse_connect",
               "faust", "openai"}
IO_LIBS = SERVER_LIBS | {"httpx", "requests"}


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        root = REPO_ROOT / folder
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            modules.setdefault(name, path)  # tickflow.events lives in events/, not services/events
    return modules


MODULES = _module_files()


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module ``module`` imports: tickflow modules by full name, anything else by its top-level name."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(_resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else _resolve(base))
    out.discard(module)
    return frozenset(out)


def _resolve(name: str) -> str:
    if not name.startswith("tickflow"):
        return name.split(".")[0]
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def reach(start: str) -> set[str]:
    """``start`` and every tickflow module it reaches through imports."""
    seen, todo = {start}, [start]
    while todo:
        for dep in imports_of(todo.pop()):
            if dep in MODULES and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def external(modules: set[str]) -> dict[str, set[str]]:
    """The non-tickflow top-level modules each of ``modules`` imports."""
    return {m: {d for d in imports_of(m) if d not in MODULES} for m in modules}


def test_no_module_imports_a_bare_top_level_folder() -> None:
    offenders = []
    for path in REPO_ROOT.rglob("*.py"):
        if {".venv", "build", "node_modules", ".git"} & set(path.relative_to(REPO_ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno}: {n}" for n in names
                          if n.split(".")[0] in {"events", "services", "projections"}]
    assert not offenders, "import these through `tickflow.…` instead:\n" + "\n".join(offenders)


def test_events_imports_nothing_else_of_tickflow() -> None:
    for module in MODULES:
        if module.startswith("tickflow.events"):
            assert reach(module) <= {m for m in MODULES if m.startswith("tickflow.events")}, module


def test_pure_core_reaches_only_pure_modules() -> None:
    pure = [m for m in MODULES if m.startswith("tickflow.core")] + sorted(PURE_PROJECTIONS)
    allowed = {m for m in MODULES if m.startswith(("tickflow.events", "tickflow.core"))} | PURE_PROJECTIONS
    for module in pure:
        reached = reach(module)
        assert reached <= allowed, (module, sorted(reached - allowed))
        for dep, libs in external(reached).items():
            assert not libs & (IMPURE | IO_LIBS), (module, "reaches", dep, "which imports", libs & (IMPURE | IO_LIBS))


def test_projections_never_import_the_services() -> None:
    for module in MODULES:
        if module.startswith("tickflow.projections"):
            outside = {m for m in reach(module) if not m.startswith(("tickflow.projections", "tickflow.events"))}
            assert not outside, (module, sorted(outside))


def test_sdk_reaches_no_server_library_statically() -> None:
    for dep, libs in external(reach("tickflow.client")).items():
        assert not libs & SERVER_LIBS, ("tickflow.client reaches", dep, "which imports", libs & SERVER_LIBS)


def test_sdk_loads_no_server_library() -> None:
    """What the static check cannot see (a package ``__init__`` with side effects): import it for real."""
    probe = (
        "import sys, tickflow.client, tickflow; from tickflow import Client, RunStatus, NonRetryableError; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(SERVER_LIBS)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over every import edge; each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in imports_of(node):
            if dep not in MODULES:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not circles, circles
