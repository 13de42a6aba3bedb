"""Loading and validating the LLM configuration; keys stay out of it; error texts are scrubbed."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tickflow.llm import LlmConfig, LlmConfigError, ProviderConfig, scrub

TOML = """
[[providers]]
name = "groq"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "TICKFLOW_TEST_GROQ_KEY"
[providers.limits]
max_concurrency = 4
requests_per_minute = 30
[providers.retry]
max_attempts = 2

[[providers]]
name = "offline"
kind = "offline"
[providers.offline]
latency_ms = [50, 500]
failure_rate = 0.05

[[models]]
id = "llama"
provider = "groq"
model = "llama-3.3-70b-versatile"

[[models]]
id = "offline/echo"
provider = "offline"

[prices.llama]
input_per_m = 0.59
output_per_m = 0.79

[chains]
default = ["llama", "offline/echo"]
"""


def test_toml_and_json_files_load_to_the_same_config(tmp_path: Path) -> None:
    toml_path = tmp_path / "llm.toml"
    toml_path.write_text(TOML)
    from_toml = LlmConfig.load(toml_path)
    json_path = tmp_path / "llm.json"
    json_path.write_text(from_toml.model_dump_json())
    assert LlmConfig.load(json_path) == from_toml
    assert LlmConfig.load(json.loads(json_path.read_text())) == from_toml
    groq = from_toml.provider("groq")
    assert groq.limits.max_concurrency == 4 and groq.retry.max_attempts == 2
    assert [m.remote_name for m in from_toml.resolve_chain("default")] == ["llama-3.3-70b-versatile", "offline/echo"]
    assert from_toml.prices["llama"].cost(1_000_000, 2_000_000) == pytest.approx(0.59 + 2 * 0.79)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"].append({"id": "x", "provider": "nope"}), "model 'x' names provider 'nope'"),
        (lambda d: d["chains"].update(bad=["ghost"]), "chain 'bad' names model 'ghost'"),
        (lambda d: d["models"].append({"id": "echo2", "provider": "offline"}), "name it 'offline/"),
        (lambda d: d["providers"][0].pop("base_url"), "needs base_url"),
        (lambda d: d["providers"][0].update(surprise=1), "providers.0.surprise"),
    ],
)
def test_invalid_configs_say_what_to_fix(change: Callable[[dict[str, Any]], object], message: str) -> None:
    data = LlmConfig.load(_toml_dict()).model_dump(exclude_unset=True)
    change(data)
    with pytest.raises(LlmConfigError, match="invalid") as info:
        LlmConfig.load(data)
    assert message in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LlmConfigError, match="cannot read"):
        LlmConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "llm.yaml"
    bad.write_text("x: 1")
    with pytest.raises(LlmConfigError, match=r"\.json or \.toml"):
        LlmConfig.load(bad)
    broken = tmp_path / "llm.toml"
    broken.write_text("[[providers]\n")
    with pytest.raises(LlmConfigError, match=r"llm\.toml is not valid TOML"):
        LlmConfig.load(broken)
    with pytest.raises(LlmConfigError, match="no chain named 'fast'"):
        LlmConfig.load(_toml_dict()).resolve_chain("fast")


def test_the_key_is_read_from_the_environment_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = ProviderConfig(name="groq", base_url="https://x/v1", api_key_env="TICKFLOW_TEST_GROQ_KEY")
    monkeypatch.delenv("TICKFLOW_TEST_GROQ_KEY", raising=False)
    with pytest.raises(LlmConfigError, match="TICKFLOW_TEST_GROQ_KEY, which is not set"):
        provider.api_key()
    monkeypatch.setenv("TICKFLOW_TEST_GROQ_KEY", "sk-test-PLANTED-config-123456")
    assert provider.api_key() == "sk-test-PLANTED-config-123456"
    assert "PLANTED" not in repr(provider) + provider.model_dump_json()


def test_scrub_removes_env_values_and_key_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_TEST_ODD_KEY", "plainsecretvalue99")
    text = ("key plainsecretvalue99 rejected; Incorrect API key provided: sk-proj-abcdef123456; "
            "Authorization: Bearer eyJhbGciOi.x; api_key=hunter2hunter2; gsk_0123456789abcdef")
    out = scrub(text, ["TICKFLOW_TEST_ODD_KEY", None])
    for secret in ("plainsecretvalue99", "sk-proj-abcdef123456", "eyJhbGciOi", "hunter2hunter2", "gsk_0123456789"):
        assert secret not in out
    assert out.startswith("key [redacted] rejected")
    assert len(scrub("x" * 5000)) == 500


def test_offline_default_is_plainly_offline() -> None:
    config = LlmConfig.offline_default(latency_ms=(50, 500))
    assert all(m.id.startswith("offline/") for m in config.models)
    assert config.providers[0].kind == "offline" and config.providers[0].offline.latency_ms == (50, 500)


def _toml_dict() -> dict[str, Any]:
    return tomllib.loads(TOML)
