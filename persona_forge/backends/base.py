"""The one interface every chat backend implements: a batch of requests in, completions out.

Backends implement `_stream_raw`, yielding (index, Completion) as each request finishes, so a
stage can write results while others are still in flight. This base adds what all backends
share: sampling defaults, JSON parsing with one repair request, and usage accounting.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..config import SamplingConfig
from ..jsonparse import JsonParseError, parse_json

if TYPE_CHECKING:
    from .session import BackendSession

REPAIR_INSTRUCTION = (
    "Your previous reply could not be read as JSON ({error}). Reply again with only the JSON, "
    "nothing before or after it."
)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    json: bool = False
    stop: tuple[str, ...] = ()
    # A structured-output `response_format` (a JSON schema, rubric.py) for endpoints that take one;
    # backends without it (or a server that refuses it) fall back to `json`.
    schema: dict[str, Any] | None = None
    # Ask the endpoint for the top log-probabilities of each generated token (option_probs).
    top_logprobs: int | None = None

    @classmethod
    def of(cls, messages: Sequence[dict[str, str]], **kwargs: Any) -> "ChatRequest":
        return cls(messages=tuple(dict(m) for m in messages), **kwargs)

    def params(self) -> dict[str, Any]:
        """Sampling parameters, for provenance."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "json": self.json}


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    parsed: Any = None
    parse_error: str | None = None
    attempts: int = 1
    logprobs: Any = None   # the endpoint's `logprobs` of the choice, when asked for (top_logprobs)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class OptionProbs:
    """The distribution over a question's answer options ("1".."5", "A"/"B") at the answer position.

    `probs` is normalised over the options; `mass` is their share of the whole next-token
    distribution before that (low mass: the judge wanted to say something else); `from_text`
    marks an answer read from generated text because the endpoint sent no logprobs (one-hot)."""

    probs: dict[str, float]
    mass: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    from_text: bool = False
    text: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.probs)


@dataclass
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    parse_errors: int = 0
    repairs: int = 0
    seconds: float = 0.0
    # The last error of each kind ("HTTP 500", "connection failed", "timeout", ...): why requests
    # failed, for the summary and the manifest (backends redact keys before errors get here).
    last_errors: dict[str, str] = field(default_factory=dict)

    def add(self, completion: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.retries += max(0, completion.attempts - 1)
        self.failures += completion.error is not None
        if completion.error is not None:
            self.last_errors[error_kind(completion.error)] = completion.error

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["last_errors"] = dict(self.last_errors)
        return out

    def counters(self) -> dict[str, int | float]:
        """The running totals alone (not last_errors): two snapshots subtract to what happened between them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "last_errors"}


def error_kind(error: str) -> str:
    """The kind of a Completion.error: "HTTP 429", "connection failed", "timeout", "unreadable response"."""
    if error.startswith("no answer within"):
        return "timeout"
    head, sep, _ = error.partition(":")
    return head.strip() if sep and len(head) <= 40 else "error"


ProgressFn = Callable[[int], None]


class ChatBackend(abc.ABC):
    """Subclasses set `name` and implement `_stream_raw`.

    Capabilities: `supports_logprobs` (option_probs reads token probabilities), `supports_schema`
    (a request's `schema` is sent as a structured-output response_format). `deterministic`: the
    same request gives the same answer (a judge cache may keep it).
    """

    name: str = "abstract"
    supports_logprobs: bool = False
    supports_schema: bool = False
    deterministic: bool = True
    batch_invariant: bool = True
    # Completion tokens an endpoint generates for one option question (the answer token and a
    # little slack for a leading quote or space).
    option_max_tokens: int = 3

    def __init__(self, model: str, sampling: SamplingConfig | None = None):
        self.model = model
        self.sampling = sampling or SamplingConfig()
        self.usage = UsageTotals()

    def resolve(self, request: ChatRequest) -> ChatRequest:
        """Fill unset sampling parameters from the backend's defaults."""
        return replace(
            request,
            max_tokens=request.max_tokens or self.sampling.max_tokens,
            temperature=self.sampling.temperature if request.temperature is None else request.temperature,
            top_p=self.sampling.top_p if request.top_p is None else request.top_p,
        )

    @abc.abstractmethod
    def _stream_raw(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        """Yield (index, completion) for every request, in any order, each exactly once."""

    async def stream(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        """Completions as they finish; JSON requests are parsed, with one repair request each."""
        resolved = [self.resolve(r) for r in requests]
        needs_repair: list[tuple[int, Completion]] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for index, completion in self._stream_raw(resolved):
            self.usage.add(completion)
            if resolved[index].json and completion.ok:
                _parse_into(completion)
                if completion.parse_error:
                    needs_repair.append((index, completion))
                    continue
            yield index, completion
        async for index, completion in self._repair(resolved, needs_repair):
            yield index, completion
        self.usage.seconds += loop.time() - started

    async def _repair(self, requests: Sequence[ChatRequest],
                      failed: list[tuple[int, Completion]]) -> AsyncIterator[tuple[int, Completion]]:
        if not failed:
            return
        repairs = [_repair_request(requests[i], c) for i, c in failed]
        self.usage.repairs += len(repairs)
        async for j, second in self._stream_raw(repairs):
            self.usage.add(second)
            index, first = failed[j]
            if second.ok:
                _parse_into(second)
            merged = replace(
                second if second.ok and second.parse_error is None else first,
                prompt_tokens=first.prompt_tokens + second.prompt_tokens,
                completion_tokens=first.completion_tokens + second.completion_tokens,
                attempts=first.attempts + second.attempts,
            )
            if merged.parse_error:
                self.usage.parse_errors += 1
            yield index, merged

    async def complete(self, requests: Sequence[ChatRequest],
                       progress: ProgressFn | None = None) -> list[Completion]:
        """All completions, in request order."""
        results: list[Completion | None] = [None] * len(requests)
        async for index, completion in self.stream(requests):
            results[index] = completion
            if progress:
                progress(1)
        return results  # type: ignore[return-value]

    def session(self) -> "BackendSession":
        """The backend's session: the open one if there is one (sessions nest), else a new one to
        open with `with`."""
        from .session import BackendSession

        current = getattr(self, "_session_open", None)
        if current is None or not current.is_open:
            current = self._session_open = BackendSession(self)
        return current

    def complete_sync(self, requests: Sequence[ChatRequest],
                      progress: ProgressFn | None = None) -> list[Completion]:
        """All completions, in request order, through the open session or, outside one, a session
        of this call alone (a one-off request; stages hold a session instead)."""
        with self.session() as session:
            return session.complete(requests, progress)

    async def aclose(self) -> None:
        """Release connections; the backend can be used again afterwards."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    # --- answer-token probabilities -------------------------------------------------------------

    def option_request(self, request: ChatRequest) -> ChatRequest:
        """The request as an endpoint is sent it for option_probs: greedy, a few tokens, logprobs."""
        return replace(request, max_tokens=self.option_max_tokens, temperature=0.0, json=False, schema=None,
                       top_logprobs=20)

    async def option_probs(self, requests: Sequence[ChatRequest], options: Sequence[str],
                           prefix: str = "") -> list[OptionProbs]:
        """P(option) at the answer position of each request, normalised over `options`.

        Endpoints (this default): the first generated token whose top logprobs hold an option
        (a leading space or quote ignored); the generated text when the endpoint sends no
        logprobs. `prefix` (text the answer starts with, e.g. "Score: ") is used by backends that
        can prefill the assistant turn (local) and ignored here.
        """
        if not self.supports_logprobs:
            raise NotImplementedError(f"the {self.name} backend gives no token probabilities")
        completions = await self.complete([self.option_request(r) for r in requests])
        return [options_from_completion(c, options) for c in completions]

    def option_probs_sync(self, requests: Sequence[ChatRequest], options: Sequence[str],
                          prefix: str = "") -> list[OptionProbs]:
        with self.session() as session:
            return session.option_probs(requests, options, prefix)

    def count_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens of a request, for estimates before anything is sent: about 4 characters
        a token plus a few per message (backends with a tokenizer count exactly)."""
        return sum((len(m["content"]) + 3) // 4 + 4 for m in request.messages) + 3


async def bounded_stream(requests: Sequence[ChatRequest], concurrency: int,
                         handle: Callable[[ChatRequest], Any]) -> AsyncIterator[tuple[int, Completion]]:
    """(index, await handle(request)) as each finishes, at most `concurrency` at once.

    `concurrency` workers take the requests in order and put results on one queue: a fixed set of
    tasks instead of one per request waiting on a semaphore. The first error a handler raises is
    raised here, and leaving early cancels the workers."""
    pending = iter(enumerate(requests))
    done: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        for index, request in pending:
            try:
                done.put_nowait((index, await handle(request)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                done.put_nowait((index, exc))
                return

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(requests)))]
    try:
        for _ in range(len(requests)):
            index, result = await done.get()
            if isinstance(result, BaseException):
                raise result
            yield index, result
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def _option_of(token: str, options: Sequence[str]) -> str | None:
    token = token.strip().strip('"\'*`(').strip()
    return token if token in options else None


def options_from_completion(completion: Completion, options: Sequence[str]) -> OptionProbs:
    """OptionProbs from an endpoint's answer: the first position whose top logprobs hold an
    option; without logprobs, the first option standing alone in the text (one-hot)."""
    import math
    import re

    usage = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
    if not completion.ok:
        return OptionProbs({}, error=completion.error, **usage)
    content = completion.logprobs.get("content") if isinstance(completion.logprobs, dict) else None
    for position in content or []:
        probs: dict[str, float] = {}
        for top in position.get("top_logprobs") or []:
            option = _option_of(str(top.get("token", "")), options)
            if option is not None and top.get("logprob") is not None:
                probs[option] = probs.get(option, 0.0) + math.exp(float(top["logprob"]))
        if probs:
            mass = sum(probs.values())
            full = {o: probs.get(o, 0.0) / mass for o in options}
            return OptionProbs(full, mass=round(mass, 6), text=completion.text, **usage)
    if content:
        return OptionProbs({}, error="no answer option among the top logprobs", text=completion.text, **usage)
    alternatives = "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))
    match = re.search(rf"(?<![\w.])({alternatives})(?![\w]|\.\d)", completion.text or "")
    if match:
        return OptionProbs({o: float(o == match.group(1)) for o in options}, from_text=True, text=completion.text,
                           **usage)
    return OptionProbs({}, error="no logprobs and no answer option in the text", text=completion.text, **usage)


def _parse_into(completion: Completion) -> None:
    try:
        completion.parsed = parse_json(completion.text)
        completion.parse_error = None
    except JsonParseError as exc:
        completion.parsed = None
        completion.parse_error = str(exc)


def _repair_request(request: ChatRequest, bad: Completion) -> ChatRequest:
    messages = request.messages + (
        {"role": "assistant", "content": bad.text or ""},
        {"role": "user", "content": REPAIR_INSTRUCTION.format(error=bad.parse_error)},
    )
    return replace(request, messages=messages)
