"""``GET /schemas`` and ``GET /schemas/{name}``: the JSON Schemas of the envelope, each command and each event.

For producers outside Python (a Java or Go service writing commands to Kafka itself): the files are the ones the
package ships (``tickflow.events.jsonschemas``, checked against the models by a unit test), served as they are, so
what this route answers is what the engine validates with.

Behind the same credentials as every route but ``/healthz``, like ``/openapi.json``: the schemas hold no secret,
but one rule for every route is simpler to keep than a list of exceptions, and anyone without a token has the
same files in the package (``tickflow/events/published/``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from tickflow.api.deps import ApiProblem, authorize
from tickflow.events import jsonschemas
from tickflow.events.errors import ErrorCode

__all__ = ["MEDIA_TYPE", "router"]

#: The media type JSON Schema documents are served with (draft 2020-12, section 14.1 of the core spec).
MEDIA_TYPE = "application/schema+json"


#: Every route here needs the credentials (see the module doc).
router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/schemas")
async def schema_index() -> dict[str, Any]:
    """The published schemas by kind: ``envelope`` (any record), then the record types of each kind —
    ``command`` (what producers write to the commands topic), ``event`` (the log) and ``dead_letter``. Each is
    served at ``url`` with its name in place of ``{name}``."""
    return {**jsonschemas.published(), "url": "/schemas/{name}"}


@router.get(
    "/schemas/{name}",
    response_class=JSONResponse,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "A JSON Schema (draft 2020-12)."}},
)
async def schema(name: str) -> JSONResponse:
    """The JSON Schema of one whole record of type ``name`` (``StartRun``, ``ResumeRun``, ``RunCompleted``…:
    the envelope with its kind and type fixed and the payload's fields), or of the generic ``envelope``.
    404 for a name that is not published."""
    found = jsonschemas.load(name) if name != jsonschemas.INDEX else None
    if found is None:
        commands = ", ".join(jsonschemas.published().get("command", []))
        raise ApiProblem(
            404, ErrorCode.NOT_FOUND,
            f"no schema named {name[:80]!r}; GET /schemas lists them (commands: {commands})",
        )
    return JSONResponse(found, media_type=MEDIA_TYPE)

