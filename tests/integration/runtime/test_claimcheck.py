"""Large values go out of band (claim-check) and come back whole: step outputs to the next step, a run's final
output to the SDK, the CLI and the dashboard (through the authenticated ``GET /blobs/{sha256}``), resume payloads
to the waiting step (checked against its schema), and fork histories of any length. The hard cap is clear."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client, RunStatus
from tickflow.events.errors import ApiError, ResumeRefused
from tickflow.node import Node

pytestmark = pytest.mark.integration
TOKEN = "claim-check-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), offload_bytes=50_000, max_payload_bytes=4_000_000,
        api_token=TOKEN,
    )
    n = Node(settings, registry)
    await n.start()
    yield n
    await n.stop()


def sdk(node: Node) -> Client:
    return Client(node.settings.api_url, token=TOKEN, timeout=30)


def cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKFLOW_API_PORT": str(node.settings.api_port), "TICKFLOW_API_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "tickflow.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def seq_of(c: Client, run_id: str, type_: str, path: str) -> int:
    return next(int(e["seq"]) for e in c.events(run_id) if e["type"] == type_ and e["payload"].get("path") == path)


async def test_big_outputs_are_claim_checked_and_capped(node: Node) -> None:
    def scenario() -> tuple[str, str]:
        with sdk(node) as c:
            ok = c.wait(c.start("bigdata", 2_500_000), timeout=60)  # 2.5 MB: above Kafka's 1 MB record limit
            assert ok.status == "completed" and ok.output == 2_500_000
            capped = c.wait(c.start("bigdata", 5_000_000), timeout=60)
            assert capped.status == "failed" and capped.error_type == "PayloadTooLarge"
            assert "above the hard cap of 4,000,000 (TICKFLOW_MAX_PAYLOAD_BYTES)" in capped.error_message
            bigin = c.wait(c.start("measure_input", {"blob": "y" * 1_500_000}), timeout=60)
            assert bigin.status == "completed" and bigin.output == 1_500_000  # a run input above 1 MB
            return ok.run_id, capped.run_id

    ok_id, _ = await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    [big] = [e for _, _, e in log if e.key == ok_id and e.type == "StepCompleted" and e.payload.path == "big"]
    ref = big.payload.output["$blob"]  # type: ignore[attr-defined]
    assert ref["size"] > 2_500_000 and len(ref["sha256"]) == 64
    assert (node.settings.blob_dir / ref["sha256"][:2] / ref["sha256"]).stat().st_size == ref["size"]


async def test_a_step_gets_references_nested_in_its_input_resolved(node: Node) -> None:
    """A parallel joins its branches' outputs as they are in the log: a big one is a reference inside the joined
    value. The step after it must get the value (before, only an input that was one reference was resolved)."""
    def scenario() -> RunStatus:
        with sdk(node) as c:
            return c.wait(c.start("bigjoin", {"large": 2_000_000, "small": 10}, run_id="join-1"), timeout=60)

    done = await asyncio.to_thread(scenario)
    assert done.status == "completed", (done.error_type, done.error_message)
    assert done.output == {"large": 2_000_000, "small": 10}


async def test_a_big_final_output_comes_back_whole_through_sdk_cli_and_dashboard(node: Node, tmp_path: Path) -> None:
    whole = {"blob": "x" * 2_000_000}

    def scenario() -> None:
        with sdk(node) as c:
            rid = c.start("bigout", 2_000_000, run_id="big-out")
            final = c.wait(rid, timeout=60)
            assert final.status == "completed" and final.output == whole  # not a {"$blob": …} reference
            assert c.status(rid).output == whole
            assert c.result(rid) == whole
            raw = c.status(rid, resolve=False).output
            assert set(raw) == {"$blob"} and raw["$blob"]["size"] == len(orjson.dumps(whole))
            digest = raw["$blob"]["sha256"]
            assert orjson.loads(c.blob(digest)) == whole

            printed = cli(node, "result", rid)
            assert printed.returncode == 0, printed.stderr
            assert json.loads(printed.stdout) == whole
            out = tmp_path / "out.json"
            written = cli(node, "result", rid, "--out", str(out))
            assert written.returncode == 0 and json.loads(out.read_text()) == whole, written.stderr
            status = cli(node, "status", rid)
            assert status.returncode == 0 and json.loads(status.stdout)["output"] == whole, status.stderr
            waited = cli(node, "wait", rid, "--raw")
            assert waited.returncode == 0 and json.loads(waited.stdout)["output"] == raw, waited.stderr

            # The run page: a value this big is shown as its size and an authenticated link to the whole of it.
            with httpx.Client(base_url=node.settings.api_url, headers=AUTH, timeout=30) as h:
                panel = h.get(f"/ui/runs/{rid}/panel")
                assert panel.status_code == 200
                size = raw["$blob"]["size"]
                assert f'href="/blobs/{digest}"' in panel.text and f"{size:,} bytes" in panel.text
                assert "x" * 1_000 not in panel.text  # not megabytes of text in the page
                small = c.start("bigout", 200_000, run_id="smaller-out")  # claim-checked, small enough to show
                assert c.wait(small, timeout=60).status == "completed"
                panel = h.get(f"/ui/runs/{small}/panel")
                assert panel.status_code == 200 and "x" * 200_000 in panel.text and "/blobs/" in panel.text

    await asyncio.to_thread(scenario)


async def test_the_blob_endpoint_needs_credentials_and_a_known_well_formed_digest(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            rid = c.start("bigout", 100_000)
            assert c.wait(rid, timeout=60).status == "completed"
            digest = c.status(rid, resolve=False).output["$blob"]["sha256"]
        url = node.settings.api_url
        with httpx.Client(base_url=url, timeout=30) as stranger:
            refused = stranger.get(f"/blobs/{digest}")
            assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
            wrong = stranger.get(f"/blobs/{digest}", headers={"authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as h:
            fine = h.get(f"/blobs/{digest}")
            assert fine.status_code == 200 and fine.headers["content-type"].startswith("application/json")
            assert hashlib.sha256(fine.content).hexdigest() == digest and fine.headers["etag"] == f'"{digest}"'
            unknown = h.get(f"/blobs/{'0' * 64}")
            assert unknown.status_code == 404 and unknown.json()["code"] == "blob_not_found"
            for bad in ("abc", digest.upper(), digest + "0", "..%2F..%2Fetc%2Fpasswd", f"{'g' * 64}"):
                answer = h.get(f"/blobs/{bad}")
                assert answer.status_code in (400, 404), (bad, answer.status_code)
                if answer.status_code == 400:
                    assert "not a blob digest" in answer.json()["detail"]
            assert h.get(f"/blobs/{digest.upper()}").status_code == 400
        with sdk(node) as c, pytest.raises(ApiError) as missing:
            c.blob("f" * 64)
        assert missing.value.status == 404 and missing.value.api_code == "blob_not_found"

    await asyncio.to_thread(scenario)


def waiting(c: Client, run_id: str) -> str:
    rid = c.start("bigwait", None, run_id=run_id)
    for _ in range(100):
        if c.status(rid).waiting_for == "upload":
            break
        time.sleep(0.1)
    return rid


async def test_a_3mb_resume_payload_reaches_the_waiting_step_checked_against_its_schema(
    node: Node, tmp_path: Path
) -> None:
    payload = {"blob": "y" * 3_000_000}

    def scenario() -> str:
        with sdk(node) as c:
            rid = waiting(c, "big-wait")
            # The schema is checked against the value, not its reference: 3 MB of the wrong letter is refused.
            with pytest.raises(ResumeRefused, match="does not match the wait's schema"):
                c.resume(rid, "upload", {"blob": "z" * 3_000_000}, timeout=60)
            c.resume(rid, "upload", payload, timeout=60)
            final = c.wait(rid, timeout=60)
            assert final.status == "completed" and final.output == 3_000_000, final  # the step saw it whole

            by_cli = waiting(c, "big-wait-cli")  # the CLI, with the payload in a file (too long for a command line)
            (tmp_path / "payload.json").write_text(json.dumps(payload))
            sent = cli(node, "resume", by_cli, "upload", "--payload-file", str(tmp_path / "payload.json"))
            assert sent.returncode == 0, sent.stderr
            assert c.result(by_cli, timeout=60) == 3_000_000
            return rid

    rid = await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    [done] = [e for _, _, e in log if e.key == rid and e.type == "NodeCompleted" and e.payload.path == "upload"]
    assert set(done.payload.output) == {"$blob"}  # type: ignore[attr-defined]  # the log holds the reference


async def test_forks_of_claim_checked_values_and_of_histories_above_a_record(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            rid = c.start("bignap", 1_500_000, run_id="nap-source")
            assert c.wait(rid, timeout=60).output == 1_500_000
            at = seq_of(c, rid, "StepCompleted", "make")  # its output is a claim-check reference
            assert c.fork(rid, at, new_run_id="nap-fork") == "nap-fork"
            forked = c.wait("nap-fork", timeout=60)
            assert forked.status == "completed" and forked.output == 1_500_000, forked

            rid = c.start("chunky", None, run_id="chunky-source")
            assert c.wait(rid, timeout=60).output == 14
            history = c.events(rid)
            at = seq_of(c, rid, "StepCompleted", "pad13")  # 14 values of 45 kB, in and out: > 1 MB of history
            assert sum(len(orjson.dumps(e["payload"])) for e in history if e["seq"] <= at) > 1_000_000
            assert c.fork(rid, at, new_run_id="chunky-fork") == "chunky-fork"  # the old code answered 413
            forked = c.wait("chunky-fork", timeout=60)
            assert forked.status == "completed" and forked.output == 14, forked
            assert [e["type"] for e in c.events("chunky-fork")][at] == "RunForked"

    await asyncio.to_thread(scenario)
