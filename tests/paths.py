"""Where the checkout is, for tests that start processes from it (the package itself never asks), and the pages of
its docs site, for the tests that read them."""

from pathlib import Path
from typing import Any

import yaml

__all__ = ["REPO_ROOT", "site_pages"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def site_pages() -> list[str]:
    """The docs site's pages (paths under ``docs/``) in the order its navigation (``infra/docs/mkdocs.yml``) lists
    them."""

    def pages(nav: Any) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        items = nav.values() if isinstance(nav, dict) else nav
        return [page for item in items for page in pages(item)]

    config = yaml.safe_load((REPO_ROOT / "infra" / "docs" / "mkdocs.yml").read_text())
    return pages(config["nav"])
