"""MkDocs hooks: the docs link to the repository's source files, and the site carries the files they link to.

A page may link to any file of the repository by its relative path (``[decider](../services/core/decider.py)``),
which is what reads right on a Git host. MkDocs only knows the files under ``docs/``, so such a link would be a
warning (an error in strict mode) on the site. These hooks add each linked file to the site as a static file at its
repository path and rewrite the link to it; a link to a file that does not exist stays as written, and strict mode
fails the build on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
#: A Markdown link's target: ``](target)`` or ``](target#anchor)``, outside code spans the way the pages write them.
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)(#[^)\s]*)?\)")


def _outside_target(page_uri: str, target: str) -> str | None:
    """The repository path a page's link points to when it leaves ``docs/`` for an existing file, else None."""
    joined = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_uri), target))
    if joined.startswith("docs/") or joined.startswith(".."):
        return None
    return joined if (REPO_ROOT / joined).is_file() else None


def on_files(files: Files, config: Any) -> Files:
    wanted: set[str] = set()
    for page in DOCS.rglob("*.md"):
        uri = page.relative_to(DOCS).as_posix()
        for match in LINK.finditer(page.read_text()):
            target = _outside_target(uri, match.group(1))
            if target is not None:
                wanted.add(target)
    for path in sorted(wanted):
        if files.get_file_from_path(path) is None:
            files.append(File(path, str(REPO_ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    uri = page.file.src_uri

    def rewrite(match: re.Match[str]) -> str:
        target = _outside_target(uri, match.group(1))
        if target is None:
            return match.group(0)
        return f"]({posixpath.relpath(target, posixpath.dirname(uri) or '.')}{match.group(2) or ''})"

    return LINK.sub(rewrite, markdown)
