"""Settings in layers: defaults, then ``TICKFLOW_*``, then constructor arguments; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tickflow.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)


def test_defaults_need_no_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.state_dir == tmp_path / ".tickflow"  # the current directory, never the source tree
    assert s.bootstrap == "127.0.0.1:9092" and s.pools == ("default",) and s.api_url == "http://127.0.0.1:8700"
    assert s.blob_dir == tmp_path / ".tickflow" / "blobs" / "tickflow"


def test_environment_then_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA_PORT", "19999")
    monkeypatch.setenv("TICKFLOW_POOLS", "default, llm,")
    monkeypatch.setenv("TICKFLOW_API_PORT", "8800")
    monkeypatch.setenv("TICKFLOW_CLICKHOUSE_URL", "")
    monkeypatch.setenv("TICKFLOW_BLOB_DIR", "/shared/blobs")
    s = Settings()
    assert s.bootstrap == "127.0.0.1:19999" and s.pools == ("default", "llm") and s.api_port == 8800
    assert s.clickhouse_url is None and s.blob_dir == Path("/shared/blobs")
    given = Settings(api_port=9000, bootstrap="broker:9092", pools=("x",))
    assert (given.api_port, given.bootstrap, given.pools) == (9000, "broker:9092", ("x",))
    monkeypatch.setenv("TICKFLOW_KAFKA_BOOTSTRAP", "a:1,b:2")
    assert Settings().bootstrap == "a:1,b:2"


def test_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_API_PORT", "eighty")
    with pytest.raises(ValidationError, match="api_port"):
        Settings()
    monkeypatch.delenv("TICKFLOW_API_PORT")
    with pytest.raises(ValidationError, match="partitions"):
        Settings(partitions=0)
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_with_copies_and_validates_without_rereading_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(prefix="a")
    monkeypatch.setenv("TICKFLOW_API_PORT", "1234")
    t = s.with_(prefix="b")
    assert (t.prefix, t.api_port, s.prefix) == ("b", 8700, "a")
    assert t.blob_dir.name == "b"  # derived paths follow the new prefix
    with pytest.raises(ValidationError, match="worker_concurrency"):
        s.with_(worker_concurrency=0)


def test_the_token_is_not_in_the_repr() -> None:
    assert "s3cret" not in repr(Settings(api_token="s3cret"))
