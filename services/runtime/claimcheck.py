"""Claim-check: step inputs and outputs too big for a Kafka record live out of band, referenced from the log.

A value whose JSON exceeds ``offload_bytes`` is written once to a content-addressed blob store and replaced
in the log by ``{"$blob": {"sha256", "size"}}``; workers resolve references before calling a step body. The
store here is a directory (``TICKFLOW_BLOB_DIR``; every process must see the same one: a shared volume in
production). Writes are atomic (temp file + rename) and idempotent (same bytes → same name), so a retried or
re-executed step never corrupts a blob. Above ``max_payload_bytes`` a value is refused with a clear error.

Conditions and mappers in the engine see the reference, not the value: keep what they branch on small.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from tickflow.events.errors import PayloadTooLarge

__all__ = ["BLOB_KEY", "FileBlobStore", "PayloadTooLarge", "is_ref", "offload", "resolve"]

BLOB_KEY = "$blob"


class FileBlobStore:
    """Content-addressed files under ``root/<sha256[:2]>/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a blob digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        data = self._path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest} is corrupt (its content does not match its name)")
        return data


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BLOB_KEY), dict)


def offload(value: Any, store: FileBlobStore, offload_bytes: int, max_bytes: int, what: str) -> Any:
    """``value`` itself if small, else a reference to it in ``store``; PayloadTooLarge above ``max_bytes``."""
    raw = orjson.dumps(value)
    if len(raw) <= offload_bytes:
        return value
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {len(raw):,} bytes, above the hard cap of {max_bytes:,} (TICKFLOW_MAX_PAYLOAD_BYTES); "
            "store it elsewhere and pass a reference"
        )
    return {BLOB_KEY: {"sha256": store.put(raw), "size": len(raw)}}


def resolve(value: Any, store: FileBlobStore) -> Any:
    """The value a reference stands for (non-references pass through)."""
    if not is_ref(value):
        return value
    return orjson.loads(store.get(str(value[BLOB_KEY]["sha256"])))
