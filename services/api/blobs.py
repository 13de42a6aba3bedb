"""``GET /blobs/{sha256}``: the claim-checked values a run's status, events and steps refer to, read back whole.

A value too big for a Kafka record lives in the blob store and the log holds ``{"$blob": {"sha256", "size"}}``
(``tickflow.runtime.claimcheck``). Status answers keep the reference, so a 100 MB output is never loaded into a
response nobody asked for; the SDK follows references through this route (``Client.status``/``wait``/``result``
return the value), the CLI prints what the SDK returns, and the dashboard links here for values too big to show.

The route sits behind the same credentials as every other (bearer token or dashboard session; the digest names
content, it is not a capability). It streams the file as stored — the JSON text of the value — without reading it
into memory, with its digest as ETag: the content never changes under a name, so the client can check what it got
against the name it asked for (the SDK does) and caches may keep it.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response

from tickflow.api.deps import ApiProblem, Deps, authorize
from tickflow.events.errors import ErrorCode
from tickflow.runtime.claimcheck import FileBlobStore

__all__ = ["DIGEST", "router"]

#: A blob's name: the SHA-256 of its bytes, 64 lowercase hex digits (what ``FileBlobStore`` names its files).
DIGEST = re.compile(r"[0-9a-f]{64}")


#: The route needs the credentials like every other (see the module doc).
router = APIRouter(dependencies=[Depends(authorize)])


@router.get(
    "/blobs/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "The value's JSON text, as stored."}},
)
async def get_blob(deps: Deps, sha256: str) -> Response:
    """The JSON text of a claim-checked value: the ``sha256`` of a ``{"$blob": {"sha256", "size"}}``
    reference found in a run's input, output, events or steps. 400 for a malformed digest, 404
    (``blob_not_found``) when no such value is stored."""
    if not DIGEST.fullmatch(sha256):
        raise ApiProblem(
            400, ErrorCode.INVALID_REQUEST,
            f"{sha256[:80]!r} is not a blob digest: expected the 64 lowercase hex digits of a SHA-256, as in "
            "the 'sha256' of a {\"$blob\": …} reference",
        )
    store = deps.blobs
    missing = ApiProblem(404, ErrorCode.BLOB_NOT_FOUND, f"no value with digest {sha256} is stored here (never "
                         "stored, deleted since, or this API process does not share the engine's blob store)")
    if store is None:
        raise missing
    headers = {"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"}
    if isinstance(store, FileBlobStore):
        path = store._path(sha256)
        if not await asyncio.to_thread(path.is_file):
            raise missing
        return FileResponse(path, media_type="application/json", headers=headers)
    try:  # any other store: read whole, off the loop (its values are bounded by TICKFLOW_MAX_PAYLOAD_BYTES)
        data = await asyncio.to_thread(store.get, sha256)
    except (FileNotFoundError, KeyError):
        raise missing from None
    return Response(data, media_type="application/json", headers=headers)

