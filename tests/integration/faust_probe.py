"""A Faust app for tests/integration/integrations/test_faust.py: its agent records every envelope of the events
topic it sees, in a table (``seen``) and on a topic (``<prefix>.faust-probe-seen``), both readable from outside the
worker.

``FAUST_PROBE_PLAIN=1`` builds it as a plain ``faust.App`` with the same options (Faust's own transport, which
reads ``read_uncommitted``), to show that the test can fail: that app does see aborted transactions.

    TICKFLOW_PREFIX=… python -m faust -A tests.integration.faust_probe:app worker
"""

from __future__ import annotations

import os

import faust

from tickflow.events.envelope import Envelope
from tickflow.faust import App, app_options, events_topic
from tickflow.settings import Settings

settings = Settings()
APP_ID = f"{settings.prefix}.faust-probe"
SEEN_TOPIC = f"{settings.prefix}.faust-probe-seen"
SEEN_CHANGELOG = f"{APP_ID}-seen-changelog"

if os.environ.get("FAUST_PROBE_PLAIN") == "1":
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)  # tickflow.faust.App makes it itself
    app = faust.App(APP_ID, **app_options(settings))
else:
    app = App(APP_ID, settings=settings)
seen_topic = app.topic(SEEN_TOPIC, key_type=str, value_type=str, internal=True)
seen = app.Table("seen", key_type=str, value_type=int, default=int)


@app.agent(events_topic(app, settings))
async def probe(stream: faust.StreamT[Envelope]) -> None:
    await seen_topic.maybe_declare()  # Faust creates the internal topics it reads, not those it only writes
    async for envelope in stream:
        seen[envelope.id] += 1
        await (await seen_topic.send(key=envelope.id, value=envelope.id))
