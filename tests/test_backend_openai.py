"""The openai backend against a stand-in OpenAI-compatible server on 127.0.0.1.

Each fault is asked for per prompt with a `[[fault:...]]` keyword (see tests/standin_server.py):
the server counts every attempt, so the tests check how many requests were made, what came
back for each prompt, and that a failing prompt never takes the rest of its batch with it.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from persona_forge.backends.base import REPAIR_INSTRUCTION, ChatRequest, Completion
from persona_forge.backends.openai_compat import OpenAIBackend
from persona_forge.config import OpenAIBackendConfig
from persona_forge.errors import BackendUnavailable
from conftest import STANDIN_KEY_ENV, standin_fixtures
from standin_server import Standin

pytestmark = pytest.mark.timeout(120)

KEY_ENV = STANDIN_KEY_ENV
SECRET = "sk-test-SECRET-7f3a9c2e51d04b68"
REPAIR_START = REPAIR_INSTRUCTION.split("(")[0].strip()


module_server, server = standin_fixtures(SECRET)


def make_backend(url: str, **overrides) -> OpenAIBackend:
    options = dict(kind="openai", base_url=url, model="standin-model", api_key_env=KEY_ENV,
                   concurrency=8, timeout_s=5.0, backoff_s=0.01, backoff_max_s=1.0, max_retries=3)
    options.update(overrides)
    return OpenAIBackend(OpenAIBackendConfig(**options))


def ask(text: str, **kwargs) -> ChatRequest:
    return ChatRequest.of([{"role": "system", "content": "You are terse."},
                           {"role": "user", "content": text}], **kwargs)


def attempts_at_server(server: Standin, prompt: str) -> int:
    return len(server.stats()["arrivals"].get(prompt, []))


def assert_ok_echo(completion: Completion, prompt: str) -> None:
    assert completion.error is None, completion.error
    assert completion.text == f"echo: {prompt.split('[[fault:')[0].strip()}"


# --- many requests in flight -------------------------------------------------------------------

def test_results_come_back_in_request_order_with_the_right_contents(server):
    server.reset(latency_ms=20)
    prompts = [f"prompt number {i}" for i in range(120)]
    backend = make_backend(server.url, concurrency=16)
    results = backend.complete_sync([ask(p) for p in prompts])

    assert len(results) == len(prompts)
    for prompt, completion in zip(prompts, results):
        assert_ok_echo(completion, prompt)
        assert completion.finish_reason == "stop"
        assert completion.attempts == 1
    stats = server.stats()
    assert stats["chat"] == 120
    assert sorted(stats["arrivals"]) == sorted(prompts)  # each prompt exactly once
    assert all(len(times) == 1 for times in stats["arrivals"].values())
    assert stats["by_model"] == {"standin-model": 120}


def test_in_flight_requests_never_exceed_concurrency(server):
    server.reset(latency_ms=100)
    backend = make_backend(server.url, concurrency=5)
    results = backend.complete_sync([ask(f"q{i}") for i in range(40)])

    assert all(c.ok for c in results)
    # The batch is large enough to fill every slot, and the semaphore lets no more through.
    assert server.stats()["max_in_flight"] == 5


def test_token_usage_is_summed(server):
    backend = make_backend(server.url)
    prompts = ["one two three", "four five", "six"]
    results = backend.complete_sync([ask(p) for p in prompts])

    # The stand-in counts 4/3 tokens per word, +4 per message, +3 per request.
    system = (3 * 4 + 2) // 3 + 4
    expected_prompt = [system + (len(p.split()) * 4 + 2) // 3 + 4 + 3 for p in prompts]
    expected_completion = [(len(f"echo: {p}".split()) * 4 + 2) // 3 for p in prompts]
    assert [c.prompt_tokens for c in results] == expected_prompt
    assert [c.completion_tokens for c in results] == expected_completion
    assert backend.usage.requests == 3
    assert backend.usage.prompt_tokens == sum(expected_prompt)
    assert backend.usage.completion_tokens == sum(expected_completion)
    assert backend.usage.retries == 0 and backend.usage.failures == 0


def test_backend_can_be_run_again_in_a_new_event_loop(server):
    backend = make_backend(server.url)
    first = asyncio.run(backend.complete([ask("first run")]))
    # No aclose in between: the second asyncio.run gets a new loop.
    second = asyncio.run(backend.complete([ask("second run")]))

    assert_ok_echo(first[0], "first run")
    assert_ok_echo(second[0], "second run")
    assert server.stats()["chat"] == 2


# --- faults a retry fixes ----------------------------------------------------------------------

def test_429_waits_for_retry_after_then_succeeds(server):
    limited = "rate limited [[fault:429:1*1]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask("before"), ask(limited), ask("after")])

    assert_ok_echo(results[0], "before")
    assert_ok_echo(results[1], limited)
    assert_ok_echo(results[2], "after")
    assert results[1].attempts == 2
    stats = server.stats()
    first, second = stats["arrivals"][limited]
    assert second - first >= 0.99  # Retry-After: 1, although the backoff alone is 10 ms
    assert stats["by_behaviour"] == {"ok": 3, "429": 1}
    assert backend.usage.retries == 1


@pytest.mark.parametrize("status", ["500", "503"])
def test_server_errors_are_retried_then_succeed(server, status):
    flaky = f"flaky [[fault:{status}*2]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(flaky), ask("steady")])

    assert_ok_echo(results[0], flaky)
    assert results[0].attempts == 3
    assert_ok_echo(results[1], "steady")
    assert attempts_at_server(server, flaky) == 3
    assert server.stats()["by_behaviour"][status] == 2


def test_faults_from_the_server_script_are_retried_in_arrival_order(server):
    server.reset(script=["503", "429:0", "ok"])
    backend = make_backend(server.url)
    results = backend.complete_sync([ask("scripted")])

    assert_ok_echo(results[0], "scripted")
    assert results[0].attempts == 3
    assert server.stats()["by_behaviour"] == {"503": 1, "429": 1, "ok": 1}


@pytest.mark.parametrize("fault", ["drop", "drop_mid"])
def test_dropped_connection_is_retried_then_succeeds(server, fault):
    dropped = f"dropped [[fault:{fault}*1]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(dropped), ask("steady")])

    assert_ok_echo(results[0], dropped)
    assert results[0].attempts == 2
    assert_ok_echo(results[1], "steady")
    assert attempts_at_server(server, dropped) == 2


def test_dropped_connections_before_any_success_are_not_an_unreachable_server(server):
    # The server answered (by hanging up): it is reachable, so this is a retryable fault of one
    # request, not "cannot reach the endpoint", even though nothing has succeeded yet.
    dropped = "dropped thrice [[fault:drop*3]]"
    backend = make_backend(server.url, max_retries=4)
    results = backend.complete_sync([ask(dropped)])

    assert_ok_echo(results[0], dropped)
    assert results[0].attempts == 4


@pytest.mark.parametrize("fault", ["garbage", "html", "shape", "nomessage"])
def test_unreadable_200_is_retried_then_succeeds(server, fault):
    unreadable = f"unreadable [[fault:{fault}*1]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(unreadable), ask("steady")])

    assert_ok_echo(results[0], unreadable)
    assert results[0].attempts == 2
    assert_ok_echo(results[1], "steady")
    assert attempts_at_server(server, unreadable) == 2


def test_timeout_is_retried_then_succeeds(server):
    slow = "slow once [[fault:slow:3*1]]"
    backend = make_backend(server.url, timeout_s=0.5)
    results = backend.complete_sync([ask(slow), ask("steady")])

    assert_ok_echo(results[0], slow)
    assert results[0].attempts == 2
    assert_ok_echo(results[1], "steady")
    assert attempts_at_server(server, slow) == 2


# --- faults no retry fixes: recorded per request, the batch goes on -----------------------------

def test_requests_failing_past_max_retries_come_back_with_error_and_nothing_is_lost(server):
    prompts = [f"fine {i}" for i in range(12)]
    prompts[2] = "always 500 [[fault:500]]"
    prompts[5] = "always dropped [[fault:drop]]"
    prompts[7] = "always slow [[fault:slow:3]]"
    prompts[9] = "always garbage [[fault:garbage]]"
    prompts[11] = "bad request [[fault:400]]"
    backend = make_backend(server.url, max_retries=2, timeout_s=0.5)
    results = backend.complete_sync([ask(p) for p in prompts])

    assert len(results) == 12
    assert results[2].error.startswith("HTTP 500")
    assert results[5].error.startswith("connection failed")
    assert results[7].error == "no answer within 0.5s"
    assert results[9].error.startswith("unreadable response")
    assert results[11].error.startswith("HTTP 400")
    for i in (2, 5, 7, 9):
        assert results[i].attempts == 3 and results[i].text is None
        assert attempts_at_server(server, prompts[i]) == 3
    assert results[11].attempts == 1  # a 400 is the request's fault: retrying cannot help
    assert attempts_at_server(server, prompts[11]) == 1
    for i in (0, 1, 3, 4, 6, 8, 10):
        assert_ok_echo(results[i], prompts[i])
    assert backend.usage.failures == 5
    assert backend.usage.requests == 12
    assert backend.usage.retries == 4 * 2


# --- faults that stop the run, with one line and no key -----------------------------------------

def test_refused_key_raises_one_line_without_the_key(server):
    server.reset(api_key="the-right-key")  # its 401 body echoes the key it was given
    backend = make_backend(server.url)
    with pytest.raises(BackendUnavailable) as caught:
        backend.complete_sync([ask(f"p{i}") for i in range(6)])

    message = str(caught.value)
    assert "\n" not in message
    assert "HTTP 401" in message and KEY_ENV in message
    assert SECRET not in message and SECRET not in repr(caught.value)
    assert "***" in message  # the server did echo the key, and it was redacted
    # The key went where it belongs, in the Authorization header, and nowhere in the prompts.
    stats = server.stats()
    assert set(stats["authorization"]) == {f"Bearer {SECRET}"}
    assert not any(SECRET in prompt for prompt in stats["arrivals"])


def test_key_echoed_in_an_error_is_redacted_from_completions(server):
    backend = make_backend(server.url, max_retries=1)
    results = backend.complete_sync([ask("leaks [[fault:leaky]]"), ask("steady")])

    assert results[0].error.startswith("HTTP 500")
    assert "***" in results[0].error  # the server quoted the header; the backend hid the key
    assert_ok_echo(results[1], "steady")
    for completion in results:
        assert SECRET not in repr(completion)
    assert SECRET not in repr(backend.describe()) and SECRET not in repr(backend.config)


def test_content_as_a_list_of_text_parts_is_answered_like_a_string(server):
    """OpenAI's API allows `content` as parts (NVIDIA Data Designer always sends them)."""
    backend = make_backend(server.url)
    parts = ChatRequest.of([{"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
                            {"role": "user", "content": [{"type": "text", "text": "in"},
                                                         {"type": "text", "text": "parts"}]}])
    results = backend.complete_sync([parts, ask("a plain string")])
    assert results[0].error is None and results[0].text == "echo: in\nparts"
    assert_ok_echo(results[1], "a plain string")
    assert server.stats()["chat"] == 2 and server.stats()["connections"] >= 1


def test_content_the_server_cannot_read_is_a_400_not_a_dropped_connection(server):
    backend = make_backend(server.url, max_retries=2)
    image = ChatRequest.of([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    number = ChatRequest.of([{"role": "user", "content": 42}])
    results = backend.complete_sync([image, number, ask("still fine")])
    for bad in results[:2]:
        assert bad.error.startswith("HTTP 400") and bad.attempts == 1  # a 400 is not retried
    assert "only text parts" in results[0].error and "must be a string or an array" in results[1].error
    assert_ok_echo(results[2], "still fine")
    assert list(backend.usage.last_errors) == ["HTTP 400"]  # one kind, its latest message


def test_unknown_model_raises_backend_unavailable(server):
    server.reset(models=["served-model"])
    backend = make_backend(server.url, model="no-such-model")
    with pytest.raises(BackendUnavailable) as caught:
        backend.complete_sync([ask("hello")])

    message = str(caught.value)
    assert "\n" not in message
    assert "HTTP 404" in message and "'no-such-model'" in message
    assert server.stats()["chat"] == 1  # not retried


def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now; the backend's own defaults for retries and backoff.
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=f"http://127.0.0.1:{port}/v1",
                                                model="m", api_key_env=KEY_ENV))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        backend.complete_sync([ask(f"p{i}") for i in range(20)])

    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach http://127.0.0.1:{port}/v1")
    assert SECRET not in message


# --- JSON replies -------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["json", "fenced", "prose"])
def test_json_in_fences_or_prose_is_parsed_without_repair(server, fault):
    prompt = f"give json [[fault:{fault}]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(prompt, json=True)])

    assert results[0].parsed == {"echo": "give json", "words": 2}
    assert results[0].parse_error is None
    assert backend.usage.repairs == 0
    stats = server.stats()
    assert stats["chat"] == 1
    assert stats["json_mode"] == 1  # response_format=json_object was asked for


def test_truncated_json_is_repaired_with_exactly_one_request(server):
    prompts = [f"json {i}" for i in range(6)]
    prompts[3] = "cut off once [[fault:truncated*1]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(p, json=True) for p in prompts])

    for i in (0, 1, 2, 4, 5):
        assert results[i].parsed == {"echo": prompts[i], "words": 2}
    repaired = results[3]
    assert repaired.parse_error is None and repaired.error is None
    # The repair request ends with the repair instruction; the stand-in echoes it back as JSON.
    assert repaired.parsed["echo"].startswith(REPAIR_START)
    assert repaired.attempts == 2
    stats = server.stats()
    assert stats["chat"] == 7
    assert attempts_at_server(server, prompts[3]) == 2
    assert stats["by_behaviour"] == {"ok": 6, "truncated": 1}
    assert backend.usage.repairs == 1
    assert backend.usage.parse_errors == 0


def test_json_still_truncated_after_repair_keeps_parse_error(server):
    prompt = "always cut off [[fault:truncated]]"
    backend = make_backend(server.url)
    results = backend.complete_sync([ask(prompt, json=True), ask("fine", json=True)])

    broken = results[0]
    assert broken.ok  # the endpoint answered; the answer was unreadable
    assert broken.parsed is None
    assert "truncated" in broken.parse_error
    assert broken.text.startswith('{"echo": "always cut off"') and broken.finish_reason == "length"
    assert results[1].parsed == {"echo": "fine", "words": 1}
    assert attempts_at_server(server, prompt) == 2  # the first try and exactly one repair
    assert server.stats()["chat"] == 3
    assert backend.usage.repairs == 1
    assert backend.usage.parse_errors == 1
    # Both tries' tokens are counted, on the completion and in the totals.
    assert broken.prompt_tokens > 0 and broken.completion_tokens > 0
    assert backend.usage.prompt_tokens == sum(c.prompt_tokens for c in results)
