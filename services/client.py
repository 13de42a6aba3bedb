"""The Python SDK: start runs, read their status, wait for them, watch them change.

It talks to the tickflow API (``tickflow up`` serves it on 127.0.0.1:8700): commands are acknowledged by
Kafka before ``start`` returns, and reads come from the ClickHouse projections the API process owns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from services.api import RunStatus
from services.errors import ResumeRejected, RunNotFound, TickflowError, UnknownWorkflow

__all__ = ["TERMINAL", "Client"]

TERMINAL = frozenset({"completed", "failed", "cancelled", "rejected"})


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
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if response.status_code == 404 and "unknown workflow" in str(detail):
                raise UnknownWorkflow(str(detail))
            if response.status_code == 404:
                raise RunNotFound(str(detail))
            raise TickflowError(f"tickflow API answered {response.status_code}: {detail}")
        return response.json()

    def start(self, workflow: str, input: Any = None, *, run_id: str | None = None, priority: int = 0) -> str:
        """Start a run and return its id. With ``run_id`` given, calling again is safe: one run starts.

        ``priority`` orders runs queued for the same concurrency key (higher first)."""
        run_id = run_id or uuid.uuid4().hex
        body = {"workflow": workflow, "input": input, "run_id": run_id, "priority": priority}
        for attempt in range(3):  # the id makes a retry after a lost response harmless
            try:
                return str(self._check(self._http.post("/runs", json=body))["run_id"])
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def resume(self, run_id: str, event: str, payload: Any = None, *, wait: bool = True, timeout: float = 30.0) -> str:
        """Deliver ``event`` to a run waiting for it; returns the command id.

        With ``wait`` (the default) this returns once the engine accepted the payload, and raises
        ``ResumeRejected`` with the engine's reason (wrong event, payload not matching the wait's schema, run
        not waiting) if it refused it; the run then stays suspended as it was.
        """
        body = {"event": event, "payload": payload}
        command_id = str(self._check(self._http.post(f"/runs/{run_id}/resume", json=body))["command_id"])
        if wait:
            self._outcome(run_id, command_id, timeout)
        return command_id

    def cancel(self, run_id: str, reason: str = "cancelled through the SDK") -> str:
        """Cancel a run and its children; in-flight steps get a best-effort stop signal. Cancelled is final."""
        return str(self._check(self._http.post(f"/runs/{run_id}/cancel", json={"reason": reason}))["command_id"])

    def set_pool_concurrency(self, pool: str, limit: int) -> None:
        """Change how many steps each worker of ``pool`` runs at once, without a restart."""
        self._check(self._http.put(f"/pools/{pool}/concurrency", json={"limit": limit}))

    def vacuum(self, older_than_s: float) -> int:
        """Delete finished runs older than ``older_than_s`` from the projections; returns how many."""
        return int(self._check(self._http.post("/admin/vacuum", json={"older_than_s": older_than_s}))["runs_removed"])

    def _outcome(self, run_id: str, command_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(run_id):
                if event.get("causation_id") != command_id:
                    continue
                if event["type"] == "ResumeRejected":
                    raise ResumeRejected(event["payload"]["reason"])
                return
            time.sleep(0.1)
        raise TimeoutError(f"no answer to {command_id} within {timeout}s; is the engine running?")

    def status(self, run_id: str) -> RunStatus:
        """The run's current status; raises RunNotFound until its start is visible."""
        return RunStatus.model_validate(self._check(self._http.get(f"/runs/{run_id}")))

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._check(self._http.get(f"/runs/{run_id}/events")))

    def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunStatus]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        if workflow:
            params["workflow"] = workflow
        return [RunStatus.model_validate(r) for r in self._check(self._http.get("/runs", params=params))]

    def stats(self) -> dict[str, Any]:
        return dict(self._check(self._http.get("/stats")))

    def watch(self, run_id: str, *, poll_s: float = 0.1, timeout: float | None = None) -> Iterator[RunStatus]:
        """Yield the run's status each time it changes, ending with its terminal status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_seq = -1
        while deadline is None or time.monotonic() < deadline:
            try:
                current = self.status(run_id)
            except RunNotFound:
                current = None
            if current is not None and current.last_seq != last_seq:
                last_seq = current.last_seq
                yield current
                if current.status in TERMINAL:
                    return
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} did not finish within {timeout}s")

    def wait(self, run_id: str, *, timeout: float = 60.0, poll_s: float = 0.1) -> RunStatus:
        """Block until the run is completed, failed or rejected; returns that final status."""
        final: RunStatus | None = None
        for final in self.watch(run_id, poll_s=poll_s, timeout=timeout):  # noqa: B007
            pass
        assert final is not None
        return final
