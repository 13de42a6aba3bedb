"""The import direction the architecture fixes: events → pure core → I/O, never backwards."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = [ROOT / "services" / name for name in ("decider.py", "state.py", "interpreter.py", "slots.py")] + [
    ROOT / "projections" / "rows.py"
]
IO_MODULES = {"aiokafka", "faust", "clickhouse_connect", "chdb", "httpx", "fastapi", "uvicorn", "socket", "asyncio"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_events_imports_nothing_of_ours() -> None:
    for path in (ROOT / "events").rglob("*.py"):
        assert not imported(path) & {"services", "projections"}, path


def test_pure_core_imports_only_events_and_no_io() -> None:
    for path in PURE:
        names = imported(path)
        assert not names & IO_MODULES, (path, names & IO_MODULES)
        assert not names & {"services", "projections"} - {path.parent.name}, path
        assert "time" not in names and "random" not in names and "uuid" not in names, path


def test_projections_never_import_services() -> None:
    for path in (ROOT / "projections").rglob("*.py"):
        assert "services" not in imported(path), path
