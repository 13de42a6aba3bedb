"""Where claim-check blobs live when the roles run on several machines, and the one place that picks the store.

The choice: an S3-compatible object store (AWS S3, MinIO, Ceph, R2, GCS's XML API…). Every role already needs
Kafka, and the API and projector ClickHouse, but neither is a good home for blobs: a >1 MB state written every
snapshot round would be a >1 MB Kafka record (the limit claim-check exists to avoid) or a ClickHouse row that only a
mutation can delete, and ClickHouse is not reachable from workers today. An object store is what big immutable
bytes are made for: content addressing maps onto keys, a PUT is atomic, and it scales without us.

``TICKFLOW_BLOB_URL`` picks the store: ``s3://bucket/prefix`` (``tickflow[s3]``; the endpoint from
``TICKFLOW_BLOB_S3_ENDPOINT`` for stores other than AWS; credentials only from the standard AWS environment —
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role — never from tickflow's settings, so
they are never printed with them), ``file:///path``, or nothing: the shared directory ``TICKFLOW_BLOB_DIR``, the
one-box default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tickflow.runtime.claimcheck import BlobInfo, BlobStore, FileBlobStore, check_digest

if TYPE_CHECKING:
    from tickflow.settings import Settings

__all__ = ["S3BlobStore", "describe_blob_store", "open_blob_store"]


class S3BlobStore:
    """Blobs as objects ``<prefix><sha256[:2]>/<sha256>`` in one bucket of an S3-compatible store.

    A put always uploads (objects are immutable, so the same bytes again only refresh ``LastModified``, which is
    what the sweep's grace period counts from). A delete checks ``LastModified`` first: S3 offers no conditional
    delete on it, so a put landing between the check and the delete is covered by the grace period alone.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ImportError("the S3 blob store needs boto3: pip install 'tickflow[s3]'") from None
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, digest: str) -> str:
        return f"{self.prefix}{check_digest(digest)[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(Bucket=self.bucket, Key=self._key(digest), Body=data)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(digest))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no blob {digest} in s3://{self.bucket}/{self.prefix}") from None
        data: bytes = reply["Body"].read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest} is corrupt (its content does not match its name)")
        return data

    def list(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = str(obj["Key"]).rsplit("/", 1)[-1]
                if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                    yield BlobInfo(name, int(obj["Size"]), obj["LastModified"].timestamp())

    def delete(self, digest: str, *, unless_put_after: float) -> bool:
        key = self._key(digest)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        if head["LastModified"].timestamp() > unless_put_after:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return True


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` name (see the module docstring); every role gets its store here."""
    url = settings.blob_url
    if not url:
        return FileBlobStore(settings.blob_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"TICKFLOW_BLOB_URL {url!r} names no bucket: use s3://bucket/prefix")
        return S3BlobStore(
            parts.netloc, parts.path, endpoint_url=settings.blob_s3_endpoint, region=settings.blob_s3_region
        )
    raise ValueError(f"TICKFLOW_BLOB_URL {url!r}: use s3://bucket/prefix or file:///path")


def describe_blob_store(store: BlobStore) -> str:
    """Where ``store`` keeps blobs, for logs and reports (never a credential)."""
    if isinstance(store, FileBlobStore):
        return str(store.root)
    if isinstance(store, S3BlobStore):
        return f"s3://{store.bucket}/{store.prefix}"
    return type(store).__name__
