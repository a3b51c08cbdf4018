"""`forge chat` against a served endpoint: the stand-in OpenAI-compatible server on 127.0.0.1 answers
`echo: <last user message>` and keeps the requests it was sent, so the tests read exactly what each
reply asked for (persona system prompt, history, model name) and what the user was shown."""

from __future__ import annotations

import socket
from io import StringIO
from types import SimpleNamespace

import pytest

from persona_forge.chat import EndpointChat, converse
from persona_forge.config import OpenAIBackendConfig
from persona_forge.samples import reply_messages
from persona_forge.schema import Turn
from conftest import STANDIN_KEY_ENV, one_line_error, run_forge, standin_fixtures

pytestmark = pytest.mark.timeout(120)

SECRET = "sk-test-chat-3b1f"
PERSONA = ["I have two dogs.", "I work as a nurse in Ohio."]

module_server, server = standin_fixtures(SECRET)


@pytest.fixture
def persona(tmp_path):
    path = tmp_path / "me.txt"
    path.write_text("\n".join(PERSONA) + "\n")
    return path


def endpoint_args(url: str, *extra: str) -> tuple[str, ...]:
    return ("--set", "backend.kind=openai", "--set", f"backend.base_url={url}",
            "--set", f"backend.api_key_env={STANDIN_KEY_ENV}", *extra)


def expected(*turns: str) -> list[dict[str, str]]:
    """The messages the local path builds for this history (user1 = you, user2 = the persona)."""
    history = [Turn(speaker="user1" if i % 2 == 0 else "user2", text=t) for i, t in enumerate(turns)]
    return [m.model_dump() for m in reply_messages(PERSONA, history, "user2")]


def test_each_reply_is_one_request_with_the_persona_and_the_history(server, persona):
    result = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona), "--model", "warm",
                       "--seed", "7", input="Hi there!\nDo you have pets?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tuned> echo: Hi there!", "tuned> echo: Do you have pets?"]
    sent = server.stats()["recent"]
    assert [r["model"] for r in sent] == ["warm", "warm"]
    system = sent[0]["messages"][0]
    assert system["role"] == "system" and all(line in system["content"] for line in PERSONA)
    assert sent[0]["messages"] == expected("Hi there!")
    assert sent[1]["messages"] == expected("Hi there!", "echo: Hi there!", "Do you have pets?")
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "assistant", "user"]
    # Sampling follows backend.sampling, as the local path's does; the seed is --seed.
    assert {(r["seed"], r["temperature"], r["top_p"], r["max_tokens"]) for r in sent} == {(7, 0.8, 0.95, 256)}


def test_reset_starts_the_history_over(server, persona):
    result = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona), "--model", "warm",
                       input="one\n/reset\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert server.stats()["recent"][1]["messages"] == expected("two")


def test_endpoint_option_and_base_ask_the_adapters_parent_too(server, persona):
    server.reset(models=["my-base", "warm"], parents={"my-base": None, "warm": "my-base"})
    result = run_forge("--set", f"backend.api_key_env={STANDIN_KEY_ENV}", "chat", "--endpoint", server.url,
                       "--persona", str(persona), "--model", "warm", "--base", input="Hello\nHow are you?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tuned> echo: Hello", "base> echo: Hello",
                                          "tuned> echo: How are you?", "base> echo: How are you?"]
    stats = server.stats()
    sent = stats["recent"]
    assert [r["model"] for r in sent] == ["warm", "my-base", "warm", "my-base"]
    assert stats["by_path"]["GET /v1/models"] == 1
    # Both models get the same messages; the conversation goes on with the adapter's reply.
    assert sent[0]["messages"] == sent[1]["messages"] == expected("Hello")
    assert sent[2]["messages"] == sent[3]["messages"] == expected("Hello", "echo: Hello", "How are you?")


def test_base_without_a_listed_parent_asks_the_served_model_name(server, persona):
    result = run_forge(*endpoint_args(server.url, "--set", "serve.served_model_name=smol"), "chat",
                       "--persona", str(persona), "--model", "warm", "--base", input="Hi\n")
    assert result.returncode == 0, result.stderr
    assert [r["model"] for r in server.stats()["recent"]] == ["warm", "smol"]


def test_base_against_the_base_model_itself_is_one_line(server, persona):
    server.reset(models=["my-base", "warm"], parents={"my-base": None, "warm": "my-base"})
    result = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona), "--model", "my-base",
                       "--base", input="Hi\n")
    assert "'my-base' is the endpoint's base model itself" in one_line_error(result)
    assert "one of: warm" in result.stderr
    assert server.stats()["chat"] == 0


def test_adapter_folder_with_an_endpoint_says_use_model(server, persona, tmp_path):
    result = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona),
                       "--adapter", str(tmp_path / "adapter"), input="Hi\n")
    assert "use --model NAME instead" in one_line_error(result)
    assert server.stats()["by_path"] == {"GET /stats": 1}  # nothing but this look at the counters


def test_a_refused_port_is_one_line_and_a_non_zero_exit(persona):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = run_forge(*endpoint_args(url, "--set", "backend.backoff_s=0.01"), "chat", "--persona", str(persona),
                       "--model", "warm", input="Hi\n")
    line = one_line_error(result, code=None)
    assert result.returncode != 0
    assert line.startswith(f"forge: error: cannot reach {url} (connection failed")
    assert result.stdout == ""
    with_base = run_forge(*endpoint_args(url), "chat", "--persona", str(persona), "--model", "warm", "--base",
                          input="Hi\n")  # the /v1/models look-up fails the same way
    assert with_base.returncode != 0 and one_line_error(with_base, code=None).startswith(
        f"forge: error: cannot reach {url}")


def test_http_errors_are_one_line(server, persona):
    server.reset(models=["warm"])
    unknown = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona), "--model", "cold",
                        input="Hi\n")
    assert unknown.returncode != 0
    assert "the endpoint or model was not found (HTTP 404" in one_line_error(unknown, code=None)
    refused = run_forge(*endpoint_args(server.url), "chat", "--persona", str(persona), "--model", "warm",
                        input="Hi\nthis is too long [[fault:400]]\nnever sent\n")
    assert refused.returncode != 0
    assert refused.stdout.splitlines() == ["tuned> echo: Hi"]
    line = one_line_error(refused, code=None)
    assert "no reply from model 'warm' (HTTP 400: This model's maximum context length" in line
    assert server.stats()["chat"] == 3  # the unknown model, then Hi and the refused message


def test_the_memory_block_reaches_the_endpoint(server):
    """converse is shared: the memory block goes into the system prompt whichever reply function answers."""
    remembered = SimpleNamespace(config=SimpleNamespace(mode="block"), block=lambda text: ["They have a turtle."],
                                 observe=lambda text: None, active=lambda: [])
    config = OpenAIBackendConfig(base_url=server.url, api_key_env=STANDIN_KEY_ENV)
    out = StringIO()
    converse(PERSONA, EndpointChat(config, "warm").reply, False, ["What pet do I have?"], out, False, True,
             remembered)
    [sent] = server.stats()["recent"]
    assert sent["messages"][0]["content"].endswith("- They have a turtle.")
    assert out.getvalue() == "tuned> echo: What pet do I have?\n"
