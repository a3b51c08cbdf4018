"""The one interface every chat backend implements: a batch of requests in, completions out.

Backends implement `_stream_raw`, yielding (index, Completion) as each request finishes, so a
stage can write results while others are still in flight. This base adds what all backends
share: sampling defaults, JSON parsing with one repair request, and usage accounting.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import SamplingConfig
from ..jsonparse import JsonParseError, parse_json

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

    @property
    def ok(self) -> bool:
        return self.error is None


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


def error_kind(error: str) -> str:
    """The kind of a Completion.error: "HTTP 429", "connection failed", "timeout", "unreadable response"."""
    if error.startswith("no answer within"):
        return "timeout"
    head, sep, _ = error.partition(":")
    return head.strip() if sep and len(head) <= 40 else "error"


ProgressFn = Callable[[int], None]


class ChatBackend(abc.ABC):
    """Subclasses set `name` and implement `_stream_raw`."""

    name: str = "abstract"

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

    def complete_sync(self, requests: Sequence[ChatRequest],
                      progress: ProgressFn | None = None) -> list[Completion]:
        return asyncio.run(self._complete_and_close(requests, progress))

    async def _complete_and_close(self, requests, progress):
        try:
            return await self.complete(requests, progress)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release connections; the backend can be used again afterwards."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}


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
