"""Secrets never reach a kept text: URL credentials, secret-named environment variables, bearer tokens, key shapes."""

from __future__ import annotations

import pytest

from tickflow.events.envelope import dead_letter
from tickflow.events.redact import REDACTED, redact
from tickflow.llm.scrub import scrub

PLANTED = "pl4nted-S3CRET-value-0123456789"


@pytest.fixture(autouse=True)
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", PLANTED)
    monkeypatch.setenv("TICKFLOW_KAFKA_SASL_PASSWORD", "kafka-pass-xyz")
    monkeypatch.setenv("HARMLESS", "not-a-secret-at-all")


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"calling with {PLANTED} failed", "calling with [redacted] failed"),
        ("cannot reach https://bob:hunter2hunter2@llm.example/v1 (refused)", "cannot reach https://[redacted]@llm.example/v1"),
        ("postgresql://svc:pw-123456@db:5432/x", "postgresql://[redacted]@db:5432/x"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: [redacted]"),
        ("key sk-proj-ABCDEF123456 leaked", "key [redacted] leaked"),
        ("password=kafka-pass-xyz", "password=[redacted]"),
        ("sasl with kafka-pass-xyz", "sasl with [redacted]"),
    ],
)
def test_secrets_are_redacted(text: str, kept: str) -> None:
    assert kept in redact(text)
    assert PLANTED not in redact(text) and "hunter2" not in redact(text) and "kafka-pass" not in redact(text)


def test_ordinary_text_and_non_secret_variables_are_kept() -> None:
    text = "step 'charge' failed: not-a-secret-at-all is https://llm.example/v1 (no credentials), user=bob"
    assert redact(text) == text
    assert redact("") == ""


def test_dead_letters_and_llm_errors_keep_no_secret() -> None:
    letter = dead_letter(consumer="engine", topic="t.commands", partition=0, offset=7, key=b"k",
                         value=f'{{"kind": "command", "payload": {{"key": "{PLANTED}"}}}}'.encode(),
                         reason=f"invalid StartRun near {PLANTED}", now_ms=1, scrub=redact)
    assert PLANTED not in letter.payload.model_dump_json() and REDACTED in letter.payload.record_excerpt  # type: ignore[attr-defined]
    assert PLANTED not in scrub(f"cannot reach https://u:{PLANTED}@host/v1")
