"""What every backend shares: order, JSON parsing with one repair, usage accounting."""

from __future__ import annotations

from persona_forge.backends import ChatRequest, ScriptedBackend
from persona_forge.backends.base import REPAIR_INSTRUCTION


def req(text: str, **kw) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}], **kw)


def test_json_reply_is_parsed_without_repair():
    fake = ScriptedBackend(['```json\n{"label": "neutral"}\n```'])
    [done] = fake.complete_sync([req("q", json=True)])
    assert done.parsed == {"label": "neutral"} and done.parse_error is None
    assert len(fake.seen) == 1 and fake.usage.repairs == 0


def test_bad_json_gets_exactly_one_repair_request_that_can_fix_it():
    fake = ScriptedBackend(['{"label": "neu', '{"label": "neutral"}'])
    [done] = fake.complete_sync([req("q", json=True)])
    assert done.parsed == {"label": "neutral"}
    assert len(fake.seen) == 2 and fake.usage.repairs == 1
    repair = fake.seen[1].messages
    assert repair[-2] == {"role": "assistant", "content": '{"label": "neu'}
    assert repair[-1]["content"] == REPAIR_INSTRUCTION.format(error="JSON is truncated (unbalanced brackets)")


def test_a_failed_repair_is_recorded_not_raised():
    fake = ScriptedBackend(["nope", "still nope"])
    [done] = fake.complete_sync([req("q", json=True)])
    assert done.parsed is None and done.parse_error == "no JSON object or array found"
    assert fake.usage.parse_errors == 1 and done.attempts == 2


def test_results_in_request_order_and_sampling_defaults_filled():
    fake = ScriptedBackend(default=lambda r: r.messages[0]["content"].upper())
    results = fake.complete_sync([req(f"m{i}") for i in range(5)])
    assert [c.text for c in results] == ["M0", "M1", "M2", "M3", "M4"]
    assert fake.seen[0].max_tokens == 256 and fake.seen[0].temperature == 0.8
    assert fake.usage.requests == 5


def test_usage_counters_are_the_totals_without_the_error_messages():
    fake = ScriptedBackend(default="ok")
    before = fake.usage.counters()
    fake.complete_sync([req("a"), req("b")])
    after = fake.usage.counters()
    assert "last_errors" not in after and set(after) | {"last_errors"} == set(fake.usage.as_dict())
    assert after["requests"] - before["requests"] == 2
    assert all(isinstance(v, (int, float)) for v in after.values())
