"""HTTP route of the divergence diff: a run's recorded events and the inputs they were decided on.

The diff itself runs where the new code is (the SDK's ``Client.diff``/``Client.check``, ``tickflow replay diff``
and ``replay check`` in a CI job with the new checkout), never in the API: this process hosts the code that is
deployed, and the code under test must not be imported into a server by a request. What the API contributes is
what only it can reach: the run's events (from the ``events`` projection), its inputs (from the commands and
results topics) and the claim-checked values the engine read (from the blob store).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query

from tickflow.api.deps import ApiProblem, Deps, authorize
from tickflow.core.divergence import envelope_json, rebuilt_results
from tickflow.events.codec import InvalidRecord
from tickflow.runtime.recorded import DEFAULT_SLACK_MS, claimed_payloads, read_inputs, wanted_inputs
from tickflow.runtime.replay import ReplayError, history_of
from tickflow.wire import RecordedRun

__all__ = ["router"]


#: The route ``GET /runs/{id}/recorded``; it needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/runs/{run_id}/recorded", response_model=RecordedRun)
async def recorded(
    deps: Deps,
    run_id: str,
    slack_ms: int = Query(
        default=DEFAULT_SLACK_MS, ge=0, le=7 * 86_400_000,
        description="Read the input topics from this long before the run's first event (clock skew).",
    ),
) -> RecordedRun:
    """The run's events and the commands and worker results they were decided on, for a divergence diff."""
    if deps.kafka is None:
        raise HTTPException(409, "this API process does not reach Kafka, so it cannot read a run's inputs")
    rows = await asyncio.to_thread(deps.store.run_events, run_id)
    try:
        events = await asyncio.to_thread(history_of, run_id, rows)
    except ReplayError as exc:
        raise ApiProblem(exc.http_status, exc.code, str(exc)) from None
    except InvalidRecord as exc:
        raise HTTPException(500, f"the run's events cannot be decoded: {exc}") from None
    rebuilt = rebuilt_results(events)  # steps run in memory: their results were never records
    wanted = wanted_inputs(events) - rebuilt.keys()
    topics = (deps.topics.commands, deps.topics.results)
    inputs = await read_inputs(
        deps.kafka, topics, rows[0].partition, run_id, wanted, events[0].occurred_at_ms - slack_ms
    )
    inputs.update(rebuilt)
    claimed = await claimed_payloads(inputs, deps.blobs)
    return RecordedRun(
        run_id=run_id,
        events=[envelope_json(e) for e in events],
        inputs=[envelope_json(e) for e in inputs.values()],
        claimed={k: {"value": c.value, "problem": c.problem} for k, c in claimed.items()},
        not_found=sorted(wanted - inputs.keys()),
    )

