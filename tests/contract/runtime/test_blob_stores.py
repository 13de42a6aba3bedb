"""One contract for every claim-check blob store: the in-memory twin, the shared directory, and an S3-compatible
object store (moto's S3 API served on 127.0.0.1 — the protocol MinIO, Ceph, R2 and AWS speak)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickflow.runtime.blobstores import S3BlobStore, open_blob_store
from tickflow.runtime.claimcheck import BlobStore, FileBlobStore, MemoryBlobStore, offload, resolve
from tickflow.settings import Settings


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from the standard AWS environment only (moto accepts any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _s3(endpoint: str, bucket: str, prefix: str = "blobs/dev") -> S3BlobStore:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = Settings(blob_url=f"s3://{bucket}/{prefix}", blob_s3_endpoint=endpoint)
    store = open_blob_store(settings)  # the factory every role uses
    assert isinstance(store, S3BlobStore) and store.prefix == f"{prefix}/"
    return store


@pytest.fixture(params=["memory", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    request.getfixturevalue("s3_env")
    return _s3(request.getfixturevalue("s3_endpoint"), f"b{os.urandom(6).hex()}")


def test_put_get_list(store: BlobStore) -> None:
    data = b'{"blob":"' + b"x" * 300_000 + b'"}'
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put(data) == digest  # same bytes, same blob
    assert store.get(digest) == data
    [info] = list(store.list())
    assert (info.digest, info.size) == (digest, len(data)) and abs(info.modified_s - time.time()) < 60
    with pytest.raises(FileNotFoundError):
        store.get("0" * 64)
    with pytest.raises(ValueError, match="not a blob digest"):
        store.get("../../etc/passwd")
    ref = offload({"k": "v" * 1000}, store, 100, 10_000, "x")  # the claim-check helpers take any store
    assert resolve(ref, store) == {"k": "v" * 1000}


def test_delete_is_guarded_by_the_time_of_the_last_put(store: BlobStore) -> None:
    digest = store.put(b"a" * 1000)
    put_at = next(iter(store.list())).modified_s
    assert not store.delete(digest, unless_put_after=put_at - 10)  # put after the sweep's cutoff: kept
    assert store.get(digest) == b"a" * 1000
    assert store.delete(digest, unless_put_after=put_at + 10)
    with pytest.raises(FileNotFoundError):
        store.get(digest)
    assert list(store.list()) == []
    assert not store.delete(digest, unless_put_after=time.time() + 10)  # nothing left to delete


def test_putting_the_same_bytes_again_makes_the_blob_young(store: BlobStore) -> None:
    """What the sweep's grace period counts from: a new reference to old bytes re-puts them first."""
    digest = store.put(b"b" * 1000)
    first = next(iter(store.list())).modified_s
    time.sleep(1.1)  # S3's LastModified has one-second resolution
    assert store.put(b"b" * 1000) == digest
    again = next(iter(store.list())).modified_s
    assert again >= first + 1
    assert not store.delete(digest, unless_put_after=first + 0.5)


def test_a_file_refreshed_while_being_deleted_goes_back(tmp_path: Path) -> None:
    """The shared directory's delete moves the file aside, then judges it: a put that refreshed it just before
    the move shows in its time, and the file is put back."""
    store = FileBlobStore(tmp_path)
    digest = store.put(b"c" * 100)
    path = tmp_path / digest[:2] / digest
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    listed_at = time.time() - 3600  # the sweep judged it at a cutoff an hour ago: old enough …
    store.put(b"c" * 100)  # … but a writer put it again since
    assert not store.delete(digest, unless_put_after=listed_at)
    assert path.read_bytes() == b"c" * 100
    assert [p.name for p in path.parent.iterdir()] == [digest]  # nothing left aside


def test_s3_store_keeps_to_its_prefix_and_credentials_stay_out_of_settings(
    s3_endpoint: str, s3_env: None
) -> None:
    one, two = _s3(s3_endpoint, "shared", "team-a"), S3BlobStore("shared", "team-b", endpoint_url=s3_endpoint)
    digest = one.put(b"only in a")
    assert [b.digest for b in one.list()] == [digest] and list(two.list()) == []
    assert "test-secret" not in repr(Settings(blob_url="s3://shared/team-a", blob_s3_endpoint=s3_endpoint))


def test_blob_url_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(Settings(state_dir=tmp_path)), FileBlobStore)
    chosen = open_blob_store(Settings(blob_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(chosen, FileBlobStore) and chosen.root == tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_blob_store(Settings(blob_url="ftp://host/x"))
    with pytest.raises(ValueError, match="names no bucket"):
        open_blob_store(Settings(blob_url="s3:///x"))
