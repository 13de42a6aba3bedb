"""Honest LLM costs, without I/O: how far an attempt's cost can be trusted (price known, illustrative price, usage
estimated) travels from the router's attempt to the event, the ``llm_calls`` row and the dashboard's cost cells,
and an unknown price never reads as $0."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from jinja2 import Environment, FileSystemLoader

from tickflow.agents.agent import attempt_fields
from tickflow.api.dashboard.pages import HERE, _claim_checked
from tickflow.demo.workflows import demo_llm_config
from tickflow.events import Envelope, decode, encode
from tickflow.events.agents import LlmCallAttempted
from tickflow.llm import ChatMessage, ChatRequest, LlmAttempt, LlmConfig, LlmRouter
from tickflow.projections.facts import LLM_CALL_COLUMNS, llm_call_row

AGENTS_PAGE = Path(__file__).resolve().parents[3] / "docs" / "agents.md"


def _attempt(**kw: Any) -> LlmAttempt:
    base: dict[str, Any] = dict(provider="groq", model="llama", attempt=1, seq=1, started_at_ms=1_700_000_000_000,
                                latency_ms=12.0, outcome="ok", tokens_in=10, tokens_out=4)
    return LlmAttempt(**(base | kw))


def test_the_event_carries_price_known_illustrative_and_usage_estimated() -> None:
    fields = attempt_fields(_attempt(price_known=False, usage_estimated=True), turn=1, agent="a", stack_id="s")
    assert (fields.price_known, fields.price_illustrative, fields.usage_estimated) == (False, False, True)
    fields = attempt_fields(_attempt(cost_usd=0.01, price_illustrative=True), turn=1, agent="a", stack_id="s")
    assert (fields.price_known, fields.price_illustrative, fields.usage_estimated) == (True, True, False)


def _event(payload: LlmCallAttempted) -> Envelope:
    return Envelope.wrap(payload, id="r1/5", key="r1", seq=5, occurred_at_ms=1_700_000_000_500)


def test_the_llm_calls_row_carries_the_flags_through_the_codec() -> None:
    event = _event(LlmCallAttempted(path="a", provider="groq", model="llama", outcome="ok", tokens_in=10,
                                    price_known=False, usage_estimated=True))
    row = llm_call_row(decode(encode(event)), "wf", 0, 7)
    assert row is not None
    assert (row.price_known, row.price_illustrative, row.usage_estimated, row.cost_usd) == (0, 0, 1, 0.0)
    assert LLM_CALL_COLUMNS[-3:] == ("price_known", "price_illustrative", "usage_estimated")
    illustrative = llm_call_row(_event(LlmCallAttempted(path="a", provider="offline", model="offline/echo",
                                                        outcome="ok", cost_usd=0.002, price_illustrative=True)),
                                "wf", 0, 8)
    assert illustrative is not None and (illustrative.price_known, illustrative.price_illustrative) == (1, 1)


def test_an_attempt_recorded_before_the_flags_existed_reads_as_priced_and_reported() -> None:
    """History keeps decoding; the defaults say what the old event said: its cost as recorded."""
    raw = orjson.loads(encode(_event(LlmCallAttempted(path="a", provider="p", model="m", outcome="ok",
                                                      cost_usd=0.25))))
    for name in ("price_known", "price_illustrative", "usage_estimated"):
        del raw["payload"][name]
    event = decode(orjson.dumps(raw))
    assert isinstance(event.payload, LlmCallAttempted)
    row = llm_call_row(event, "wf", 0, 1)
    assert row is not None and (row.price_known, row.price_illustrative, row.usage_estimated) == (1, 0, 0)
    assert row.cost_usd == 0.25


async def test_an_illustrative_price_gives_a_flagged_nonzero_cost_and_an_unpriced_offline_model_is_free() -> None:
    config = LlmConfig.load(demo_llm_config() | {"providers": [{"name": "offline", "kind": "offline"}]})
    async with LlmRouter(config) as router:
        result = await router.chat(ChatRequest(messages=[ChatMessage(role="user", content="hello there")]),
                                   chain=["offline/echo"])
    (attempt,) = result.attempts
    assert attempt.cost_usd > 0 and attempt.price_known and attempt.price_illustrative
    assert result.cost_usd == attempt.cost_usd

    async with LlmRouter(LlmConfig.offline_default()) as router:
        free = await router.chat(ChatRequest(messages=[ChatMessage(role="user", content="hi")]),
                                 chain=["offline/echo"])
    assert [(a.cost_usd, a.price_known, a.price_illustrative) for a in free.attempts] == [(0.0, True, False)]


def test_the_demo_prices_every_offline_model_and_says_the_price_is_illustrative() -> None:
    from tickflow.demo.pydantic_stack import OFFLINE_MODEL

    config = LlmConfig.load(demo_llm_config())
    # ...and the offline stand-in of the Pydantic AI communicator, a framework model the router does not serve.
    assert {m.id for m in config.models} | {OFFLINE_MODEL} == set(config.prices)
    assert all(p.illustrative and p.cost(1_000_000, 1_000_000) > 0 for p in config.prices.values())


def test_the_docs_price_example_loads_with_a_published_and_an_illustrative_price() -> None:
    text = AGENTS_PAGE.read_text()
    (sample,) = [s for s in re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M) if "[prices." in s]
    config = LlmConfig.load(tomllib.loads(sample))
    assert not config.prices["llama-70b"].illustrative and config.prices["offline/echo"].illustrative


# -- the dashboard's cost cells -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["ms"] = lambda v: str(v)
    env.filters["folded"] = lambda v: {"short": v, "full": v, "long": False}
    env.filters["claim_checked"] = _claim_checked
    return env


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _cost_cell(templates: Environment, cost_used: float, notes: dict[str, dict[str, int]]) -> str:
    from tickflow.projections.facts import StackRow

    row = StackRow(stack_id="s1", workflow="wf", cost_used_usd=cost_used)
    html = templates.get_template("_stack_row.html").render(row=row, csrf="", costs=notes)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html, flags=re.S)
    return _text(cells[8])  # stack, workflow, state, every, ticks, last tick, last run, tokens, cost


def test_a_stack_row_shows_unknown_cost_as_unknown_never_zero(templates: Environment) -> None:
    assert _cost_cell(templates, 0.0, {}) == "$0.0000"  # nothing unknown: a real zero
    unknown = _cost_cell(templates, 0.0, {"s1": {"calls_price_unknown": 3, "calls_price_illustrative": 0}})
    assert unknown == "unknown (3 calls at unknown price)"
    partial = _cost_cell(templates, 0.0123, {"s1": {"calls_price_unknown": 1, "calls_price_illustrative": 0}})
    assert partial == "≥ $0.0123 + 1 call at unknown price"
    sample = _cost_cell(templates, 0.0123, {"s1": {"calls_price_unknown": 0, "calls_price_illustrative": 5}})
    assert sample == "$0.0123 illustrative"


def test_a_run_panel_prices_each_call_honestly(templates: Environment) -> None:
    from tickflow.projections.rows import RunRow

    def call(**kw: Any) -> dict[str, Any]:
        base = dict(path="a.llm", call=1, attempt=1, provider="p", model="m", outcome="ok", tokens_in=10,
                    tokens_out=4, cost_usd=0.5, latency_ms=5.0, fallback=False, price_known=True,
                    price_illustrative=False, usage_estimated=False)
        return base | kw

    row = RunRow(run_id="r1", workflow="wf", status="completed")
    calls = [call(cost_usd=None, price_known=False, usage_estimated=True), call(cost_usd=0.00123,
                                                                               price_illustrative=True)]
    html = templates.get_template("_run_panel.html").render(run_id="r1", row=row, steps=[], values={}, calls=calls,
                                                             schema=None)
    text = _text(html)
    assert "cost ≥ $0.00123 + 1 call at unknown price illustrative" in text
    rows = [_text(r) for r in re.findall(r"<tr><td>a\.llm</td>(.*?)</tr>", html, flags=re.S)]
    assert "~10 / ~4 unknown" in rows[0] and "$0" not in rows[0]
    assert "10 / 4 $0.00123 illustrative" in rows[1]


def test_a_run_panel_lists_the_handoffs_between_a_steps_agents(templates: Environment) -> None:
    from tickflow.projections.rows import RunRow

    row = RunRow(run_id="r1", workflow="wf", status="completed")
    handoffs = [{"path": "triage", "from_agent": "triage", "to_agent": "booker"}]
    html = templates.get_template("_run_panel.html").render(run_id="r1", row=row, steps=[], values={}, calls=[],
                                                             schema=None, handoffs=handoffs)
    assert "Handoffs triage : triage → booker" in _text(html)
