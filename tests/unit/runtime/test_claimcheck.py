"""The claim-check store: content-addressed, idempotent, tamper-evident, capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tickflow.runtime.claimcheck import (
    FileBlobStore,
    MemoryBlobStore,
    PayloadTooLarge,
    holds_ref,
    is_ref,
    offload,
    resolve,
    resolve_all,
)


def test_small_values_stay_inline_and_big_ones_round_trip(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    assert offload({"a": 1}, store, 100, 1_000, "x") == {"a": 1}
    big = {"rows": list(range(1_000))}
    ref = offload(big, store, 100, 1_000_000, "x")
    assert is_ref(ref) and resolve(ref, store) == big
    assert offload(big, store, 100, 1_000_000, "x") == ref  # same bytes, same blob
    assert len(list(tmp_path.rglob("*"))) == 2  # one folder, one file: no temp files left behind


def test_cap_corruption_and_bad_refs_are_refused(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(PayloadTooLarge, match="above the hard cap of 10"):
        offload("x" * 100, store, 5, 10, "the output of step 's'")
    ref = offload("y" * 100, store, 5, 1_000, "x")
    digest = ref["$blob"]["sha256"]
    (tmp_path / digest[:2] / digest).write_bytes(b'"tampered"')
    with pytest.raises(ValueError, match="corrupt"):
        resolve(ref, store)
    with pytest.raises(ValueError, match="not a blob digest"):
        resolve({"$blob": {"sha256": "../../etc/passwd"}}, store)


def test_references_nested_anywhere_are_found_and_resolved_each_blob_once() -> None:
    store = MemoryBlobStore()
    ref = offload({"blob": "x" * 100}, store, 10, 10_000, "a branch")
    joined = {"left": ref, "right": {"n": 1}, "items": [ref, 2]}
    assert holds_ref(joined) and holds_ref([ref]) and not holds_ref({"n": [1, {"a": "b"}]})
    reads: list[str] = []
    get = store.get
    store.get = lambda digest: reads.append(digest) or get(digest)  # type: ignore[method-assign]
    whole = resolve_all(joined, store.get)
    assert whole == {"left": {"blob": "x" * 100}, "right": {"n": 1}, "items": [{"blob": "x" * 100}, 2]}
    assert len(reads) == 1
