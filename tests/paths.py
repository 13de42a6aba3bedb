"""Where the checkout is, for tests that start processes from it (the package itself never asks)."""

from pathlib import Path

__all__ = ["REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]
