"""Backend sessions (backends/session.py): one event loop and one client per stage, requests kept in
flight across chunk boundaries and chat turns, the client closed once however the stage ends.

CountingBackend stands in for an endpoint: `concurrency` workers, a fixed latency, and counters of
what a real client does (a client made per event loop, as the openai backend makes its pool)."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import KeywordNLI, make_recipe
from persona_forge.backends import ChatBackend, ChatRequest, Completion
from persona_forge.backends.base import bounded_stream
from persona_forge.contract import StageContext
from persona_forge.errors import BackendUnavailable

pytestmark = pytest.mark.timeout(60)


class CountingBackend(ChatBackend):
    """Echoes each request's last message after `latency_s`, `concurrency` at a time.

    opened / closed: clients made (one per event loop a request arrives on) and closed (aclose);
    peak: the most requests in flight at once; low: the fewest left in flight when a request
    finished while more of the `total` expected were still to be sent (0: the pipe ran dry)."""

    name = "counting"

    def __init__(self, concurrency: int = 4, latency_s: float = 0.004, total: int | None = None,
                 fail_after: int | None = None):
        super().__init__("counting")
        self.concurrency, self.latency_s, self.total, self.fail_after = concurrency, latency_s, total, fail_after
        self.opened = self.closed = 0
        self.started = self.in_flight = self.peak = 0
        self.low: int | None = None
        self._loop = None

    async def aclose(self) -> None:
        if self._loop is not None:
            self.closed += 1
            self._loop = None

    async def _stream_raw(self, requests):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.opened += 1
            self._loop = loop

        async def handle(request):
            if self.fail_after is not None and self.started >= self.fail_after:
                raise BackendUnavailable("the endpoint went away")
            self.started += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(self.latency_s)
            finally:
                self.in_flight -= 1
            if self.total is not None and self.started < self.total:
                self.low = self.in_flight if self.low is None else min(self.low, self.in_flight)
            return Completion(text=f"echo: {request.messages[-1]['content']}", finish_reason="stop")

        async for item in bounded_stream(requests, self.concurrency, handle):
            yield item


def ask(text: str) -> ChatRequest:
    return ChatRequest.of([{"role": "user", "content": text}])


# --- the session itself ------------------------------------------------------------------------------

def test_a_session_keeps_one_client_and_closes_it_once():
    backend = CountingBackend()
    with backend.session() as session:
        first = session.complete([ask(f"a{i}") for i in range(6)])
        with backend.session() as inner:   # nested: the same session
            assert inner is session
            second = inner.complete([ask("b")])
        streamed = dict(session.stream([ask(f"c{i}") for i in range(5)]))
        assert backend.closed == 0
    assert [c.text for c in first] == [f"echo: a{i}" for i in range(6)] and second[0].text == "echo: b"
    assert sorted(streamed) == list(range(5)) and streamed[3].text == "echo: c3"
    assert (backend.opened, backend.closed) == (1, 1)
    assert not session.is_open
    with pytest.raises(RuntimeError, match="not open"):
        session.complete([ask("late")])


def test_chunks_come_back_in_order_while_later_requests_are_in_flight():
    backend = CountingBackend(concurrency=3, total=12)
    with backend.session() as session:
        got = [(start, [c.text for c in part]) for start, part in session.chunks([ask(f"q{i}") for i in range(12)], 5)]
    assert got == [(0, [f"echo: q{i}" for i in range(5)]), (5, [f"echo: q{i}" for i in range(5, 10)]),
                   (10, ["echo: q10", "echo: q11"])]
    assert backend.peak == 3 and backend.low == 2   # never drained between the chunks


def test_an_error_in_the_backend_or_the_caller_still_closes_the_client():
    failing = CountingBackend(concurrency=2, fail_after=3)
    with pytest.raises(BackendUnavailable, match="went away"):
        with failing.session() as session:
            session.complete([ask(f"q{i}") for i in range(8)])
    assert (failing.opened, failing.closed) == (1, 1)

    backend = CountingBackend(concurrency=2, latency_s=0.05)
    with pytest.raises(KeyboardInterrupt):
        with backend.session() as session:
            for _ in session.stream([ask(f"q{i}") for i in range(20)]):
                raise KeyboardInterrupt   # Ctrl-C while requests are in flight
    assert (backend.opened, backend.closed) == (1, 1) and backend.in_flight == 0


# --- stages on one session -----------------------------------------------------------------------------

def _eval(tmp_path, backend, scorers=None, chunk=2, limit=8):
    from persona_forge.stages import evaluation as E

    def bert(replies, refs):
        return [(0.5, 0.5, 0.5)] * len(replies)

    recipe = make_recipe(tmp_path / "run", backend={"kind": "fake"},
                         eval={"limit": limit, "chunk": chunk, "bootstrap": 20})
    return E.run(recipe.eval, StageContext(recipe.run_dir, progress=False), chat=recipe.backend,
                 nli_config=recipe.nli, scorers=scorers or E.Scorers(lambda: bert, KeywordNLI),
                 generator_factory=lambda cfg, chat, model, progress: E.Generator(backend, None, "counting"))


def test_eval_streams_every_chunk_through_one_client_without_draining(tmp_path):
    backend = CountingBackend(concurrency=3, total=8)
    result = _eval(tmp_path, backend)
    assert result.data["models"]["base"]["n"] == 8
    lines = (tmp_path / "run" / "eval" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 8
    # Four chunks of two: three in flight from the first chunk to the last; one client, closed once.
    assert backend.peak == 3 and backend.low is not None and backend.low > 0
    assert (backend.opened, backend.closed) == (1, 1)


def test_eval_written_in_request_order_as_before(tmp_path):
    from persona_forge.stages import evaluation as E

    recipe = make_recipe(tmp_path / "x", backend={"kind": "fake"}, eval={"limit": 8})
    examples, _ = E.load_examples(E.default_data(), recipe.eval)
    _eval(tmp_path, CountingBackend(concurrency=8, latency_s=0.001))
    written = [json.loads(line)["example_id"]
               for line in (tmp_path / "run" / "eval" / "generations.jsonl").read_text().splitlines()]
    assert written == [e.id for e in examples]


def test_eval_failing_mid_stage_closes_the_client(tmp_path):
    from persona_forge.stages import evaluation as E

    calls = []

    def bert(replies, refs):
        calls.append(len(replies))
        if len(calls) == 2:
            raise RuntimeError("scorer broke on the second chunk")
        return [(0.5, 0.5, 0.5)] * len(replies)

    backend = CountingBackend(concurrency=3, latency_s=0.01)
    with pytest.raises(RuntimeError, match="second chunk"):
        _eval(tmp_path, backend, scorers=E.Scorers(lambda: bert, KeywordNLI))
    assert (backend.opened, backend.closed) == (1, 1) and backend.in_flight == 0
    assert len((tmp_path / "run" / "eval" / "generations.jsonl").read_text().splitlines()) == 2


def test_forge_complete_stops_cleanly_when_the_endpoint_goes_away(tmp_path):
    from persona_forge.stages import complete

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"hello {i}"}) + "\n" for i in range(10)))
    recipe = make_recipe(tmp_path / "run", backend={"kind": "fake"}, complete={"input": str(prompts)})
    backend = CountingBackend(concurrency=2, fail_after=4)
    with pytest.raises(BackendUnavailable):
        complete.run(recipe.complete, StageContext(recipe.run_dir, progress=False), backend, chat=recipe.backend)
    assert (backend.opened, backend.closed) == (1, 1)
    written = (tmp_path / "run" / "complete.jsonl").read_text().splitlines()
    assert 1 <= len(written) <= 4   # what came back before it went away is kept for the re-run


def test_chat_keeps_one_client_across_turns(monkeypatch):
    from persona_forge import backends, chat
    from persona_forge.config import OpenAIBackendConfig

    made = []

    def build(config, progress=True):
        made.append(CountingBackend())
        return made[-1]

    monkeypatch.setattr(backends, "build_backend", build)
    endpoint = chat.EndpointChat(OpenAIBackendConfig(base_url="http://127.0.0.1:9/v1"), "warm")
    replies = [endpoint.reply([{"role": "user", "content": f"turn {i}"}]) for i in range(4)]
    assert replies == [f"echo: turn {i}" for i in range(4)]
    [backend] = made
    assert (backend.opened, backend.closed) == (1, 0)
    endpoint.close()
    assert (backend.opened, backend.closed) == (1, 1)


def test_the_llm_nli_judge_keeps_one_client_across_predict_calls():
    from persona_forge.nli.base import LLMJudgeNLI

    backend = CountingBackend()
    judge = LLMJudgeNLI(backend)
    for _ in range(3):
        probs = judge.predict([("I have a dog.", "I own a pet.")])
        assert probs.shape == (1, 3)
    assert (backend.opened, backend.closed) == (1, 0)
    judge.close()
    assert (backend.opened, backend.closed) == (1, 1)
