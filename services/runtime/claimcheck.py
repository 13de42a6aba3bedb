"""Claim-check: step inputs and outputs too big for a Kafka record live out of band, referenced from the log.

A value whose JSON exceeds ``offload_bytes`` is written once to a content-addressed blob store and replaced
in the log by ``{"$blob": {"sha256", "size"}}``; workers resolve references (at any depth) before calling a step
body. The default store is a directory (``TICKFLOW_BLOB_DIR``; on one box every process sees it). Writes are
atomic (temp file + rename) and idempotent (same bytes → same name), so a retried or re-executed step never
corrupts a blob. Above ``max_payload_bytes`` a value is refused with a clear error.

Conditions and mappers in the engine see the reference, not the value: keep what they branch on small.

Every store follows ``BlobStore``: put, get, list and a guarded delete. ``FileBlobStore`` is the one-box default,
``MemoryBlobStore`` its twin for tests; ``runtime.blobstores`` adds an S3-compatible store for roles on several
machines and ``open_blob_store`` picks one from the settings. Blobs are never deleted here: ``runtime.blobsweep``
does, for blobs nothing retained references and older than a grace period. "Older" counts from the last ``put`` of
the same bytes (a put of an existing blob refreshes its time), so a blob written again for a new reference is as
young as that reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from tickflow.events.errors import PayloadTooLarge

__all__ = [
    "BLOB_KEY",
    "BlobInfo",
    "BlobStore",
    "FileBlobStore",
    "MemoryBlobStore",
    "PayloadTooLarge",
    "check_digest",
    "holds_ref",
    "is_ref",
    "offload",
    "resolve",
    "resolve_all",
]

BLOB_KEY = "$blob"


def check_digest(digest: str) -> str:
    """``digest`` if it is a lowercase hex sha256 (a blob's name), else ValueError: names reach paths and keys."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a blob digest: {digest[:80]!r}")
    return digest


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob: its name, size, and when its bytes were last put (epoch seconds)."""

    digest: str
    size: int
    modified_s: float


class BlobStore(Protocol):
    """Content-addressed bytes that every role reaches: the claim-check's storage."""

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256 (hex) and return that; putting bytes already there refreshes their time."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``; OSError (FileNotFoundError) if there are none, ValueError if corrupt."""
        ...

    def list(self) -> Iterator[BlobInfo]:
        """Every blob stored, in no particular order."""
        ...

    def delete(self, digest: str, *, unless_put_after: float) -> bool:
        """Delete ``digest`` unless it was put after ``unless_put_after`` (epoch seconds): a sweep that judged it
        unreferenced must not remove bytes that a writer has just put again for a new reference. True if deleted."""
        ...


class MemoryBlobStore:
    """The in-memory twin, with a clock a test can move (``now``)."""

    def __init__(self, now: Any = time.time) -> None:
        self.now = now
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._blobs[digest] = (data, float(self.now()))
        return digest

    def get(self, digest: str) -> bytes:
        with self._lock:
            found = self._blobs.get(check_digest(digest))
        if found is None:
            raise FileNotFoundError(f"no blob {digest}")
        return found[0]

    def list(self) -> Iterator[BlobInfo]:
        with self._lock:
            items = list(self._blobs.items())
        return iter([BlobInfo(d, len(data), t) for d, (data, t) in items])

    def delete(self, digest: str, *, unless_put_after: float) -> bool:
        with self._lock:
            found = self._blobs.get(check_digest(digest))
            if found is None or found[1] > unless_put_after:
                return False
            del self._blobs[digest]
            return True


class FileBlobStore:
    """Content-addressed files under ``root/<sha256[:2]>/<sha256>``; a file's mtime is when its bytes were last put."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / check_digest(digest)[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        try:
            os.utime(path)  # already there: now as young as the reference about to be written
            return digest
        except FileNotFoundError:
            pass
        except PermissionError:  # another user's file on a shared volume: it is there, if not refreshed
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

    def list(self) -> Iterator[BlobInfo]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if len(entry.name) != 64 or not entry.name.startswith(folder.name):
                    continue  # temp files of writes in progress, trash of deletes in progress
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                yield BlobInfo(entry.name, st.st_size, st.st_mtime)

    def remove_leftovers(self, older_than_s: float) -> tuple[int, int]:
        """Delete the temp files of writes and the set-aside files of deletes that a crash interrupted, last
        touched before ``older_than_s`` (epoch seconds); returns (files, bytes)."""
        files = size = 0
        if not self.root.is_dir():
            return 0, 0
        for folder in self.root.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if not entry.name.startswith((".tmp-", ".trash-")):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    if st.st_mtime < older_than_s:
                        os.unlink(entry.path)
                        files, size = files + 1, size + st.st_size
        return files, size

    def delete(self, digest: str, *, unless_put_after: float) -> bool:
        """Moved aside first, then judged: a put that refreshed the file before the move shows in its mtime (the
        file goes back); a put after the move finds no file and writes it anew. Either way the bytes a new
        reference names stay."""
        path = self._path(digest)
        aside = path.with_name(f".trash-{digest}-{os.getpid()}-{threading.get_ident()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if aside.stat().st_mtime > unless_put_after:
            with contextlib.suppress(FileExistsError):  # back, unless a writer already put it again (same bytes)
                os.link(aside, path)
            aside.unlink()
            return False
        aside.unlink()
        return True


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BLOB_KEY), dict)


def offload(value: Any, store: BlobStore, offload_bytes: int, max_bytes: int, what: str) -> Any:
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


def resolve(value: Any, store: BlobStore) -> Any:
    """The value a reference stands for (non-references pass through)."""
    if not is_ref(value):
        return value
    return orjson.loads(store.get(str(value[BLOB_KEY]["sha256"])))


def holds_ref(value: Any) -> bool:
    """Whether a reference is anywhere in ``value`` (a parallel's joined output holds its branches' references)."""
    if isinstance(value, dict):
        return is_ref(value) or any(holds_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_ref(v) for v in value)
    return False


def resolve_all(value: Any, read: Callable[[str], bytes], cache: dict[str, Any] | None = None) -> Any:
    """``value`` with every reference in it, at any depth, replaced by what it stands for. ``read`` gives a blob's
    bytes by digest (a store's ``get``; the SDK's ``Client.blob``); each blob is read once (``cache``, by digest,
    may be shared across calls)."""
    seen: dict[str, Any] = {} if cache is None else cache

    def walk(v: Any) -> Any:
        if is_ref(v):
            digest = str(v[BLOB_KEY]["sha256"])
            if digest not in seen:
                seen[digest] = orjson.loads(read(digest))
            return seen[digest]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)
