"""Scripted replies for tests: records every request it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from ..config import SamplingConfig
from .base import ChatBackend, ChatRequest, Completion, OptionProbs

Reply = str | Callable[[ChatRequest], str]
# A scripted next-token distribution: option -> probability (any subset; the rest of the
# vocabulary gets 1 - their sum), or a function of (request, options) giving one.
Distribution = dict[str, float] | Callable[[ChatRequest, Sequence[str]], dict[str, float]]


class ScriptedBackend(ChatBackend):
    """Replies from a queue (strings or functions of the request), then a default.

    `seen` holds every request in the order it was answered. Given `distributions` (a queue, then
    `default_distribution`), it also gives token probabilities (`option_probs`), as a local model does.
    Scripted replies are functions of nothing stable, so a judge cache does not keep them
    (`deterministic = False`) unless told to.
    """

    name = "fake"
    deterministic = False

    def __init__(self, replies: Sequence[Reply] = (), default: Reply = "ok", delay_s: float = 0.0,
                 model: str = "scripted", sampling: SamplingConfig | None = None,
                 distributions: Sequence[Distribution] | None = None,
                 default_distribution: Distribution | None = None):
        super().__init__(model, sampling)
        self.queue: list[Reply] = list(replies)
        self.default = default
        self.delay_s = delay_s
        self.seen: list[ChatRequest] = []
        self.distributions: list[Distribution] = list(distributions or [])
        self.default_distribution = default_distribution
        self.supports_logprobs = distributions is not None or default_distribution is not None
        self.option_prefixes: list[str] = []

    def enqueue_distributions(self, *distributions: Distribution) -> None:
        self.distributions.extend(distributions)

    async def option_probs(self, requests: Sequence[ChatRequest], options: Sequence[str],
                           prefix: str = "") -> list[OptionProbs]:
        if not self.supports_logprobs:
            return await super().option_probs(requests, options, prefix)
        out = []
        for request in requests:
            self.seen.append(request)
            self.option_prefixes.append(prefix)
            script = self.distributions.pop(0) if self.distributions else self.default_distribution
            given = script(request, options) if callable(script) else dict(script or {})
            probs = {o: float(given.get(o, 0.0)) for o in options}
            mass = sum(probs.values())
            prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
            result = OptionProbs({o: p / mass for o, p in probs.items()} if mass > 0 else {}, mass=mass,
                                 prompt_tokens=prompt_tokens,
                                 error=None if mass > 0 else "no probability on any option")
            self.usage.add(Completion(text=None, prompt_tokens=prompt_tokens))
            out.append(result)
        return out

    def count_tokens(self, request: ChatRequest) -> int:
        return sum(len(m["content"].split()) for m in request.messages)

    def enqueue(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    async def _stream_raw(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        for index, request in enumerate(requests):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.seen.append(request)
            reply = self.queue.pop(0) if self.queue else self.default
            text = reply(request) if callable(reply) else reply
            yield index, Completion(text=text, finish_reason="stop",
                                    prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
                                    completion_tokens=len(text.split()))
