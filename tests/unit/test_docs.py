"""The docs name only files that exist, every page is on the site, and the generated reference matches the code.

MkDocs' strict build (``make docs``) catches a broken link between pages; what it cannot see is a path written in
backticks (``tests/integration/checker.py``), a link from README.md, or a docstring that points at a file. This test
reads README.md, every page under ``docs/``, pyproject.toml and the docstrings and comments of the code and tests,
and fails on any repository path among them that does not exist.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.paths import REPO_ROOT, site_pages

DOCS = REPO_ROOT / "docs"
ROOTS = ("services", "events", "projections", "tests", "infra", "docs", "examples")
#: A repository path as prose writes it: from a top-level folder to a file with a known suffix.
SUFFIXES = "py|md|toml|ya?ml|json|jsonl|sql|sh|png|html|js|css|xml"
PATH = re.compile(r"(?<![\w./-])(?:\.\./)*((?:" + "|".join(ROOTS) + r")/[\w./-]*?\.(?:" + SUFFIXES + r"))(?![\w/-])")
#: Where a named path may start: the repository, or infra/ (whose own files name their neighbours from there).
BASES = (REPO_ROOT, REPO_ROOT / "infra")
#: A Markdown link to a relative target (no scheme, not an anchor on the same page).
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)")


def _texts() -> list[Path]:
    pages = [REPO_ROOT / "README.md", REPO_ROOT / "pyproject.toml", *DOCS.rglob("*.md")]
    code = [p for root in ("services", "events", "projections", "tests", "infra", "examples")
            for p in (REPO_ROOT / root).rglob("*.py") if "__pycache__" not in p.parts]
    return pages + code


@pytest.mark.parametrize("path", _texts(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_repository_path_named_exists(path: Path) -> None:
    text = path.read_text()
    missing = sorted({m for m in PATH.findall(text) if not any((base / m).exists() for base in BASES)})
    assert not missing, f"{path.relative_to(REPO_ROOT)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", [REPO_ROOT / "README.md", *DOCS.rglob("*.md")],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_link_of_a_page_reaches_a_file(page: Path) -> None:
    broken = sorted({t for t in LINK.findall(page.read_text()) if not (page.parent / t).exists()})
    assert not broken, f"{page.relative_to(REPO_ROOT)} links to files that do not exist: {broken}"


def test_every_page_is_in_the_site_navigation() -> None:
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(site_pages())


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", REPO_ROOT / "infra" / "docs" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_pages_match_the_code() -> None:
    for path, text in _reference().pages().items():
        assert path.read_text() == text, f"{path.relative_to(REPO_ROOT)}: run python infra/docs/reference.py --write"


def test_the_readme_reaches_the_reducer_roles_api_cli_and_projections_in_one_click() -> None:
    links = set(LINK.findall((REPO_ROOT / "README.md").read_text()))
    for target in ("services/core/decider.py", "services/runtime/engine.py", "services/runtime/worker.py",
                   "projections/projector.py", "services/node.py", "services/api/app.py", "services/cli/main.py",
                   "projections/store.py"):
        assert target in links, f"README.md does not link {target}"


def test_every_setting_is_documented_where_it_is_declared() -> None:
    from tickflow.settings import Settings

    documented = _reference()._comments_and_types()
    assert [name for name in Settings.model_fields if not documented[name][0]] == []
