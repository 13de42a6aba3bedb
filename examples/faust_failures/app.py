"""The Faust app of the example: a table of failures per workflow per minute and an agent that compensates.

* ``watch_runs`` reads the events topic (the log, committed transactions only: ``tickflow.faust.App``). It keeps
  the workflow of each run (``RunStarted`` names it; ``RunFailed`` does not), and for every ``RunFailed`` it sends
  a ``Failure`` keyed by workflow to the app's own ``…-by-workflow`` topic and, for a failed ``checkout``, produces
  the ``StartRun`` of a ``refund`` run.
* ``count_failures`` reads that topic and counts into ``failures-per-minute``, a table in tumbling windows of one
  minute of *event* time (the failure's ``occurred_at``), so re-reading the log gives the same windows. The table is
  updated from a topic keyed by its own key (the workflow): a Faust table must be, for its changelog partitions to
  hold each key once.

At-least-once: after a crash, a record may be processed again. The refund's run id derives from the failed run's
(``<run id>.refund``), and tickflow starts a run id once, so a redelivered failure never refunds twice; a count
may then be one too high, as with any at-least-once counter.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import faust

from examples.faust_failures.workflows import CHECKOUT, REFUND
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import RunCancelled, RunCompleted, RunFailed, RunStarted
from tickflow.faust import App, events_topic, send_command, start_run
from tickflow.settings import Settings

__all__ = ["APP_ID", "Failure", "app", "failures_per_minute", "place_orders", "refund_run_id"]

log = logging.getLogger("examples.faust_failures")

settings = Settings()  # TICKFLOW_* from the environment, as every tickflow process reads them
#: The app's consumer group and the prefix of its own topics (under the deployment's prefix).
APP_ID = f"{settings.prefix}.faust-failures"
app = App(APP_ID, settings=settings)


class Failure(faust.Record, serializer="json"):
    """A failed run, keyed by its workflow. ``at``: when it failed, in seconds since the epoch (event time)."""

    workflow: str
    run_id: str
    at: float


events = events_topic(app)
by_workflow = app.topic(f"{APP_ID}-by-workflow", key_type=str, value_type=Failure, internal=True)
#: The workflow of each run seen starting, until it completes or is cancelled (keyed by run id, partitioned like the
#: log). A failed run's entry stays: a RunFailed delivered again after a crash must still find its workflow.
workflow_of_run = app.Table("workflow-of-run", key_type=str, value_type=str)
#: Failures per workflow per minute of event time.
failures_per_minute = (
    app.Table("failures-per-minute", key_type=str, value_type=int, default=int)
    .tumbling(60, expires=timedelta(days=7))
    .relative_to_field(Failure.at)
)


def refund_run_id(run_id: str) -> str:
    """The refund of a failed checkout: one id per failed run, so a redelivered failure refunds once."""
    return f"{run_id}.{REFUND}"


@app.agent(events)
async def watch_runs(stream: faust.StreamT[Envelope]) -> None:
    async for run_id, envelope in stream.items():
        payload = envelope.payload
        if isinstance(payload, RunStarted):
            workflow_of_run[run_id] = payload.workflow
        elif isinstance(payload, RunCompleted | RunCancelled):
            workflow_of_run.pop(run_id, None)
        elif isinstance(payload, RunFailed):
            workflow = workflow_of_run.get(run_id, "(unknown)")
            failure = Failure(workflow=workflow, run_id=run_id, at=envelope.occurred_at_ms / 1000)
            await (await by_workflow.send(key=workflow, value=failure))
            if workflow == CHECKOUT:
                refund = start_run(
                    REFUND,
                    refund_run_id(run_id),
                    {"order": run_id, "reason": payload.error.message},
                    causation_id=envelope.id,
                )
                await send_command(app, refund)
                log.info("checkout %s failed (%s): started refund run %s", run_id, payload.error.message, refund.key)


@app.agent(by_workflow)
async def count_failures(stream: faust.StreamT[Failure]) -> None:
    async for failure in stream:
        failures_per_minute[failure.workflow] += 1
        minute = time.strftime("%Y-%m-%d %H:%M", time.gmtime(failure.at))
        count = failures_per_minute[failure.workflow].current()
        log.info("%s: %d failure(s) in the minute %s UTC", failure.workflow, count, minute)


async def place_orders(count: int) -> list[str]:
    """Start ``count`` checkout runs through the commands topic; every fifth card is declined (that run fails)."""
    batch = time.strftime("%H%M%S")
    run_ids = []
    for i in range(count):
        run_id = f"checkout-{batch}-{i:03d}"
        order = {"id": run_id, "total": 10.0 + i, "card": "declined" if i % 5 == 4 else "ok"}
        await send_command(app, start_run(CHECKOUT, run_id, order))
        run_ids.append(run_id)
    log.info("started %d checkout runs (%d with a declined card)", count, count // 5)
    return run_ids
