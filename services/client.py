"""The Python SDK: start runs, read their status, wait for them, watch them change.

It talks to the tickflow API (``tickflow up`` serves it on 127.0.0.1:8700): commands are acknowledged by
Kafka before ``start`` returns, and reads come from the ClickHouse projections the API process owns.

Values too big for a Kafka record (inputs, outputs, resume payloads above ``TICKFLOW_OFFLOAD_BYTES``) live in the
blob store, and the API's status answers carry a ``{"$blob": {"sha256", "size"}}`` reference in their place. The
client follows such references through ``GET /blobs/{sha256}`` (with its own credentials), checks each value
against its digest, and hands back the whole value; ``resolve=False`` keeps the references.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from tickflow.core.decider import ClaimedPayload
from tickflow.core.divergence import CheckReport, Code, RunDiff, SpecChoice, diff_run, envelope_from_json
from tickflow.core.state import TERMINAL, RunState, state_from_json
from tickflow.events.errors import ApiError, ErrorCode, ResumeRefused, RunNotFound, TickflowError, UnknownWorkflow
from tickflow.events.schemas import RUN_TERMINAL_EVENTS
from tickflow.projections.models import RebuildReport, SqlResult
from tickflow.projections.queries import MAX_LIMIT, RunQuery
from tickflow.projections.rows import IN_FLIGHT_STATUSES, WAITING
from tickflow.runtime.claimcheck import holds_ref, resolve_all
from tickflow.wire import EngineReport, RebuildJob, RecordedRun, RunStatus

__all__ = ["TERMINAL", "Client"]

#: What the API's error codes become in Python; any other error answer raises ``ApiError``.
_ERRORS: dict[str, type[TickflowError]] = {
    ErrorCode.UNKNOWN_WORKFLOW: UnknownWorkflow,
    ErrorCode.RUN_NOT_FOUND: RunNotFound,
}


class Client:
    """``Client("http://127.0.0.1:8700")``; pass ``token`` when the API requires a bearer token."""

    def __init__(self, url: str = "http://127.0.0.1:8700", *, token: str | None = None, timeout: float = 10.0):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json()

    def start(
        self, workflow: str, input: Any = None, *, run_id: str | None = None, priority: int = 0,
        version: int | None = None,
    ) -> str:
        """Start a run and return its id. With ``run_id`` given, calling again is safe: one run starts.

        ``priority`` orders runs queued for the same concurrency key (higher first); ``version`` picks a registered
        version of the workflow (default: the newest)."""
        run_id = run_id or uuid.uuid4().hex
        body: dict[str, Any] = {"workflow": workflow, "input": input, "run_id": run_id, "priority": priority}
        if version is not None:
            body["version"] = version
        for attempt in range(3):  # the id makes a retry after a lost response harmless
            try:
                return str(self._check(self._http.post("/runs", json=body))["run_id"])
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _command(self, method: str, path: str, body: Any = None, idempotency_key: str | None = None) -> str:
        """Send a command and return its id. Every command carries an ``Idempotency-Key`` (``idempotency_key``, or
        a fresh one for this call), so the retries after a lost answer here — and yours, with the same key — are
        one command: the engine applies it once."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(3):
            try:
                response = self._http.request(method, path, json=body, headers=headers)
                return str(self._check(response)["command_id"])
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def resume(
        self,
        run_id: str,
        event: str,
        payload: Any = None,
        *,
        wait: bool = True,
        timeout: float = 30.0,
        idempotency_key: str | None = None,
    ) -> str:
        """Deliver ``event`` to a run waiting for it; returns the command id.

        With ``wait`` (the default) this returns once the engine accepted the payload, and raises
        ``ResumeRefused`` with the engine's reason (wrong event, payload not matching the wait's schema, run
        not waiting) if it refused it; the run then stays suspended as it was. Calling again with the same
        ``idempotency_key`` resumes once.
        """
        body = {"event": event, "payload": payload}
        command_id = self._command("POST", f"/runs/{run_id}/resume", body, idempotency_key)
        if wait:
            self._outcome(run_id, command_id, timeout)
        return command_id

    def cancel(
        self, run_id: str, reason: str = "cancelled through the SDK", *, idempotency_key: str | None = None
    ) -> str:
        """Cancel a run and its children; in-flight steps get a best-effort stop signal. Cancelled is final."""
        return self._command("POST", f"/runs/{run_id}/cancel", {"reason": reason}, idempotency_key)

    def release(
        self, run_id: str, reason: str = "released through the SDK", *, idempotency_key: str | None = None
    ) -> str:
        """Release a quarantined run: it resumes from its last good state (see ``RunStatus.status``)."""
        return self._command("POST", f"/runs/{run_id}/release", {"reason": reason}, idempotency_key)

    def set_pool_concurrency(self, pool: str, limit: int) -> None:
        """Change how many steps each worker of ``pool`` runs at once, without a restart."""
        self._check(self._http.put(f"/pools/{pool}/concurrency", json={"limit": limit}))

    def vacuum(self, older_than_s: float) -> int:
        """Delete the runs that finished more than ``older_than_s`` ago from every per-run projection table (a run
        in flight stays, however old); returns how many. The log keeps them: a rebuild brings them back."""
        return int(self._check(self._http.post("/admin/vacuum", json={"older_than_s": older_than_s}))["runs_removed"])

    def state_at(self, run_id: str, seq: int | None = None) -> RunState:
        """The run's state after its event ``seq`` (default: the last visible one): the fold of events 1..seq."""
        params = {} if seq is None else {"at_seq": seq}
        return state_from_json(self._check(self._http.get(f"/runs/{run_id}/state", params=params))["state"])

    def fork(self, run_id: str, at_seq: int, *, new_run_id: str | None = None) -> str:
        """Start a new run from ``run_id``'s state at ``at_seq``; returns the new run's id.

        Steps completed by ``at_seq`` do not run again; steps in flight then are issued again under the new id.
        With ``new_run_id`` given, calling again is safe: one fork is made.
        """
        body = {"at_seq": at_seq, "run_id": new_run_id or uuid.uuid4().hex}
        for attempt in range(3):  # the id makes a retry after a lost response harmless
            try:
                return str(self._check(self._http.post(f"/runs/{run_id}/fork", json=body))["run_id"])
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def recorded(self, run_id: str) -> RecordedRun:
        """The run's events and the commands and worker results they were decided on (what a diff re-drives)."""
        return RecordedRun.model_validate(self._check(self._http.get(f"/runs/{run_id}/recorded", timeout=120)))

    def diff(self, run_id: str, code: Code, *, spec: SpecChoice = "pinned") -> RunDiff:
        """Re-drive the run's recorded inputs through ``code`` (a ``Registry``: the new code) here, in this process,
        and report the first decision that differs, and what the run, if in flight, still needs that ``code``
        lacks. ``spec="pinned"``: the run keeps its pinned spec (what a deploy does to it); ``"registry"``: the
        spec ``code`` would pin for its start. See ``tickflow.core.divergence``."""
        rec = self.recorded(run_id)
        events = [envelope_from_json(e) for e in rec.events]
        inputs = {env.id: env for env in map(envelope_from_json, rec.inputs)}
        claimed = {k: ClaimedPayload(value=v.get("value"), problem=v.get("problem")) for k, v in rec.claimed.items()}
        return diff_run(run_id, events, inputs, code, spec=spec, claimed=claimed)

    def check(
        self,
        code: Code,
        workflow: str,
        *,
        last: int | None = None,
        in_flight: bool = False,
        spec: SpecChoice = "pinned",
    ) -> CheckReport:
        """``diff`` over runs of ``workflow``: its ``last`` N started, and/or every run in flight (running, waiting
        for a resume, or failing). The deploy gate: ``report.ok`` only when every run is identical and none in
        flight needs code that ``code`` lacks."""
        if last is None and not in_flight:
            raise ValueError("say which runs to check: last=N, in_flight=True, or both")
        ids: dict[str, None] = {}
        if in_flight:
            for status in IN_FLIGHT_STATUSES:
                for page in range(1_000):
                    rows = self.list_runs(status=status, workflow=workflow, limit=MAX_LIMIT, offset=page * MAX_LIMIT)
                    ids.update((r.run_id, None) for r in rows)
                    if len(rows) < MAX_LIMIT:
                        break
        left, page = last or 0, 0
        while left > 0:
            rows = self.list_runs(workflow=workflow, limit=min(left, MAX_LIMIT), offset=page * MAX_LIMIT)
            ids.update((r.run_id, None) for r in rows)
            left, page = left - len(rows), page + 1
            if len(rows) < MAX_LIMIT:
                break
        return CheckReport(workflow=workflow, spec=spec, runs=[self.diff(rid, code, spec=spec) for rid in ids])

    def verify_engine(self) -> EngineReport:
        """Compare the API process's live engine state with a refold of the log; ``report.ok`` when equal."""
        return EngineReport.model_validate(self._check(self._http.post("/admin/engine/verify", timeout=300)))

    def rebuild(
        self, *, swap: bool = True, wait: float | None = None, poll_s: float = 0.5, table: str | None = None
    ) -> RebuildJob:
        """Rebuild every projection (or, with ``table``, one: its table and rollups, the rest kept) from the log
        into a fresh database, verify it against an independent fold of the log and (``swap``) switch to it.

        Returns the job at once, or with ``wait`` (seconds) once it ended: ``job.report`` holds counts,
        checksums, each table's check, mismatches and events/s; ``job.state`` is "failed" when verification found
        a mismatch (then nothing was swapped). Raises ``TimeoutError`` when it is still running after ``wait``.
        """
        body: dict[str, Any] = {"swap": swap} if table is None else {"swap": swap, "table": table}
        job = RebuildJob.model_validate(self._check(self._http.post("/admin/rebuild", json=body)))
        if wait is None:
            return job
        deadline = time.monotonic() + wait
        while job.state == "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"rebuild {job.job_id} still runs after {wait}s ({job.progress.phase}); follow it")
            time.sleep(poll_s)
            job = self.rebuild_status(job.job_id)
        return job

    def rollback(self) -> RebuildReport:
        """Swap back to the projection database the last swap replaced (caught up to the log first)."""
        return RebuildReport.model_validate(self._check(self._http.post("/admin/rollback", timeout=600)))

    def rebuild_status(self, job_id: str) -> RebuildJob:
        """A rebuild's progress, and its report once it ended."""
        return RebuildJob.model_validate(self._check(self._http.get(f"/admin/rebuild/{job_id}")))

    def _outcome(self, run_id: str, command_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(run_id):
                if event.get("causation_id") != command_id:
                    continue
                if event["type"] == "ResumeRejected":
                    raise ResumeRefused(event["payload"]["reason"])
                return
            time.sleep(0.1)
        raise TimeoutError(f"no answer to {command_id} within {timeout}s; is the engine running?")

    def status(self, run_id: str, *, resolve: bool = True) -> RunStatus:
        """The run's current status; raises RunNotFound until its start is visible.

        A claim-checked input or output comes back whole (fetched from the blob store through the API);
        ``resolve=False`` leaves its ``{"$blob": {"sha256", "size"}}`` reference in place."""
        current = RunStatus.model_validate(self._check(self._http.get(f"/runs/{run_id}")))
        return self._resolved_status(current, {}) if resolve else current

    def blob(self, sha256: str) -> bytes:
        """The JSON text of a claim-checked value, by the ``sha256`` of its reference (``GET /blobs/{sha256}``),
        checked against that digest. Raises ``ApiError`` (404, code ``blob_not_found``) when it is not stored."""
        with self._http.stream("GET", f"/blobs/{sha256}") as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            digest, chunks = hashlib.sha256(), []
            for chunk in response.iter_bytes():
                digest.update(chunk)
                chunks.append(chunk)
        if digest.hexdigest() != sha256:
            raise TickflowError(f"the blob store answered for {sha256} with other content ({digest.hexdigest()}); "
                                "the stored file is corrupt: restore it from a backup, or re-run what produced it")
        return b"".join(chunks)

    def resolve(self, value: Any) -> Any:
        """``value`` with every claim-check reference in it (at any depth, e.g. the branches of a parallel
        output) replaced by the value it stands for."""
        return resolve_all(value, self.blob)

    def _resolved_status(self, status: RunStatus, cache: dict[str, Any]) -> RunStatus:
        if not (holds_ref(status.input) or holds_ref(status.output)):
            return status
        changes = {name: resolve_all(getattr(status, name), self.blob, cache) for name in ("input", "output")}
        return status.model_copy(update=changes)

    def result(self, run_id: str, *, timeout: float = 60.0, resolve: bool = True) -> Any:
        """Wait for the run to end and return its output, whole (see ``status``); raises ``TickflowError`` with
        the run's error when it did not complete."""
        final = self.wait(run_id, timeout=timeout, resolve=resolve)
        if final.status != "completed":
            why = f": {final.error_type}: {final.error_message}" if final.error_type else ""
            raise TickflowError(f"run {run_id} ended {final.status}{why}")
        return final.output

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._check(self._http.get(f"/runs/{run_id}/events")))

    def list_runs(self, query: RunQuery | None = None, /, **filters: Any) -> list[RunStatus]:
        """The runs ``query`` asks for, the latest started first: a ``RunQuery``, or its fields as keywords
        (``list_runs(status="waiting", workflow="order")``: the ones waiting for someone to resume them), or both
        (the keywords win). Fields: ``status``, ``workflow``, ``started_since_ms`` (epoch ms), ``limit`` (default
        50, at most 1000) and ``offset``. Claim-checked inputs and outputs stay references here (a page of runs could
        be gigabytes): ``resolve`` or ``status``."""
        params = RunQuery.of(query, **filters).params()
        return [RunStatus.model_validate(r) for r in self._check(self._http.get("/runs", params=params))]

    def stats(self) -> dict[str, Any]:
        return dict(self._check(self._http.get("/stats")))

    def timeline(self, run_id: str) -> dict[str, Any]:
        """The run's status, every attempt of every step (timings, errors, retries) and its LLM call attempts."""
        return dict(self._check(self._http.get(f"/runs/{run_id}/timeline")))

    def stacks(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The stack board: play state, settings, budget use and last tick of every stack."""
        params: dict[str, Any] = {"limit": limit, "offset": offset} | ({"status": status} if status else {})
        return list(self._check(self._http.get("/stacks", params=params)))

    def create_stack(
        self, stack_id: str, workflow: str, *, idempotency_key: str | None = None, **settings: Any
    ) -> str:
        """Create a stack that runs ``workflow`` every ``interval_s`` (default 10) seconds; returns the command id.

        Settings: ``input``, ``interval_s``, ``priority``, ``overlap`` ("skip" | "queue"), ``idle_backoff_max_s``,
        ``budget_tokens``, ``budget_cost_usd``, ``playing``, ``name``. Creating an existing stack is a no-op.
        Every stack command takes an ``idempotency_key``: the same command sent again with it is taken once.
        """
        body = {"stack_id": stack_id, "workflow": workflow, **settings}
        return self._command("POST", "/stacks", body, idempotency_key)

    def update_stack(self, stack_id: str, *, idempotency_key: str | None = None, **changes: Any) -> str:
        return self._command("PATCH", f"/stacks/{stack_id}", changes, idempotency_key)

    def pause_stack(self, stack_id: str, reason: str = "", *, idempotency_key: str | None = None) -> str:
        return self._command("POST", f"/stacks/{stack_id}/pause", {"reason": reason}, idempotency_key)

    def play_stack(self, stack_id: str, *, idempotency_key: str | None = None) -> str:
        return self._command("POST", f"/stacks/{stack_id}/play", None, idempotency_key)

    def delete_stack(self, stack_id: str, *, idempotency_key: str | None = None) -> str:
        return self._command("DELETE", f"/stacks/{stack_id}", None, idempotency_key)

    def stack(self, stack_id: str, *, ticks: int = 20) -> dict[str, Any]:
        """One stack and its most recent ticks."""
        return dict(self._check(self._http.get(f"/stacks/{stack_id}", params={"ticks": ticks})))

    def analytics(self, kind: str, **params: Any) -> Any:
        """Rollup analytics: ``kind`` is ``usage`` (by=model|provider|agent|stack), ``runs``, ``steps`` or
        ``errors``; ``since_ms``/``until_ms`` bound the window (default: the last 24 h), ``bucket`` is minute,
        hour, day or total. E.g. ``c.analytics("usage", by="stack", bucket="minute")``."""
        if kind not in ("usage", "runs", "steps", "errors"):
            raise ValueError(f"unknown analytics {kind!r}: choose usage, runs, steps or errors")
        query = {k: v for k, v in params.items() if v is not None}
        return self._check(self._http.get(f"/analytics/{kind}", params=query))

    def sql(
        self, query: str, params: dict[str, Any] | None = None, *, max_rows: int = 1_000, timeout_s: float = 10.0
    ) -> SqlResult:
        """Run a read-only query over the projections, e.g.
        ``c.sql("SELECT count() FROM runs FINAL WHERE workflow = {wf:String}", {"wf": "order"})``.

        Values go in ``params`` and are bound to ``{name:Type}`` placeholders by ClickHouse. A refused or
        failing query raises ``TickflowError`` with ClickHouse's reason; ``truncated`` says rows were cut.
        """
        body = {"query": query, "params": params or {}, "max_rows": max_rows, "timeout_s": timeout_s}
        timeout = httpx.Timeout(self._http.timeout.connect, read=timeout_s + 10.0)  # queued + ClickHouse's limit
        data = self._check(self._http.post("/sql", json=body, timeout=timeout))
        return SqlResult(**{k: data[k] for k in ("columns", "types", "rows", "truncated", "elapsed_ms")})

    def thread_messages(self, thread_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` messages of an agent memory thread, oldest first."""
        data = self._check(self._http.get(f"/threads/{thread_id}/messages", params={"limit": limit}))
        return list(data["messages"])

    def recall(self, thread_id: str, embedding: list[float], *, k: int = 5, exclude_ids: list[str] | None = None,
               embedder: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` messages of a thread nearest to ``embedding`` (cosine distance, nearest first)."""
        body = {"thread_id": thread_id, "embedding": embedding, "k": k, "exclude_ids": exclude_ids or [],
                "embedder": embedder}
        return list(self._check(self._http.post("/memory/recall", json=body))["messages"])

    def watch(
        self, run_id: str, *, poll_s: float = 0.1, timeout: float | None = None, resolve: bool = True
    ) -> Iterator[RunStatus]:
        """Yield the run's status each time it changes, ending with its terminal status (claim-checked values
        whole, unless ``resolve=False``; each is fetched once per watch)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_seq = -1
        cache: dict[str, Any] = {}
        current: RunStatus | None = None
        while deadline is None or time.monotonic() < deadline:
            try:
                current = self.status(run_id, resolve=False)
            except RunNotFound:
                current = None
            if current is not None and current.last_seq != last_seq:
                last_seq = current.last_seq
                yield self._resolved_status(current, cache) if resolve else current
                if current.status in TERMINAL:
                    return
            time.sleep(poll_s)
        why = ""
        if current is not None and current.status == WAITING:  # it will not finish by itself: say what it needs
            why = f": it waits for {current.waiting_for!r} at {current.waiting_path!r}; resume it to go on"
        raise TimeoutError(f"run {run_id} did not finish within {timeout}s{why}")

    def wait(self, run_id: str, *, timeout: float = 60.0, poll_s: float = 0.1, resolve: bool = True) -> RunStatus:
        """Block until the run is completed, failed or rejected; returns that final status (its claim-checked
        output whole, unless ``resolve=False``)."""
        final: RunStatus | None = None
        for final in self.watch(run_id, poll_s=poll_s, timeout=timeout, resolve=False):  # noqa: B007
            pass
        assert final is not None
        return self._resolved_status(final, {}) if resolve else final

    def live(self, run_id: str, after: int | None = None, *, follow: bool = False) -> Iterator[dict[str, Any]]:
        """Yield the run's events as the engine appends them, read from the log over Server-Sent Events.

        Each event is ``{seq, type, occurred_at_ms, causation_id, payload, offset}``; pass the last
        ``offset`` you got as ``after`` to continue later without loss or repeat. Iteration ends after the
        run's terminal event (unless ``follow``); a run that does not exist yet is waited for. A dropped
        connection is resumed after the last offset received, up to three times in a row.
        """
        for event in self._sse(f"/runs/{run_id}/live", after, follow, f"the live stream of run {run_id!r}",
                               ends_cleanly=False):
            yield event
            if not follow and event["type"] in RUN_TERMINAL_EVENTS:
                return

    def tokens(self, run_id: str, after: int | None = None, *, follow: bool = False) -> Iterator[dict[str, Any]]:
        """Yield what the run's LLM calls stream, chunk by chunk, as they stream (from the tokens topic).

        Each chunk is ``{path, step, step_attempt, execution, stream, provider, model, index, text, tool, done,
        outcome, finish_reason, at_ms, offset}``: ``text`` continues stream ``stream`` of step ``path`` (a tool
        call's arguments when ``tool`` is set); ``done`` marks a stream's last chunk. A step redelivered after a
        crash streams again under a new ``execution``. Iteration ends once the run has ended and every chunk
        was delivered (unless ``follow``); pass the last ``offset`` as ``after`` to continue later. The tokens
        topic keeps chunks for hours; the reply itself is recorded whole in the run's events.
        """
        yield from self._sse(f"/runs/{run_id}/tokens", after, follow, f"the token stream of run {run_id!r}",
                             ends_cleanly=True)

    def _sse(self, path: str, after: int | None, follow: bool, what: str, *,
             ends_cleanly: bool) -> Iterator[dict[str, Any]]:
        """Messages of an SSE stream whose data carry an ``offset``, resumed after the last one on a dropped
        connection (three times in a row at most). ``ends_cleanly``: the server closing the stream is its end
        (otherwise only a 204 is, and a close is a dropped connection)."""
        failures = 0
        while True:
            params: dict[str, Any] = {"follow": "true"} if follow else {}
            if after is not None:
                params["after"] = after
            try:
                # Read timeout well above the server's 10 s keep-alive pings: silence means a dead link.
                timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
                with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                    if response.status_code == 204:  # resumed at or past the end: nothing more will come
                        return
                    if response.status_code >= 400:
                        response.read()
                        self._check(response)
                    data: list[str] = []
                    event = "message"
                    for line in response.iter_lines():
                        if line:  # SSE: "field: value" lines, ":" comments (pings), a blank line ends a message
                            name, _, value = line.partition(":")
                            if name == "data":
                                data.append(value.removeprefix(" "))
                            elif name == "event":
                                event = value.strip()
                            continue
                        if event == "end":  # the server says the stream is complete
                            return
                        if data:
                            message: dict[str, Any] = orjson.loads("\n".join(data))
                            data = []
                            after, failures = int(message["offset"]), 0
                            yield message
                        event = "message"
                if ends_cleanly:
                    return
                reason = "the server ended the stream early (is it shutting down?)"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > 3:
                raise TickflowError(
                    f"lost {what} {failures} times in a row ({reason}); check that the API is up, then call again "
                    f"with after={after} to continue where you stopped"
                )
            time.sleep(0.5 * failures)


def _api_error(response: httpx.Response) -> TickflowError:
    """The exception an error answer stands for, chosen by the API's error ``code`` (never by its wording)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
    code = body.get("code", "") if isinstance(body, dict) else ""
    known = _ERRORS.get(code)
    if known is not None:
        return known(str(detail))
    return ApiError(f"tickflow API answered {response.status_code}: {detail}", status=response.status_code, code=code)
