"""Scripted replies for tests: records every request it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from ..config import SamplingConfig
from .base import ChatBackend, ChatRequest, Completion

Reply = str | Callable[[ChatRequest], str]


class ScriptedBackend(ChatBackend):
    """Replies from a queue (strings or functions of the request), then a default.

    `seen` holds every request in the order it was answered.
    """

    name = "fake"

    def __init__(self, replies: Sequence[Reply] = (), default: Reply = "ok", delay_s: float = 0.0,
                 model: str = "scripted", sampling: SamplingConfig | None = None):
        super().__init__(model, sampling)
        self.queue: list[Reply] = list(replies)
        self.default = default
        self.delay_s = delay_s
        self.seen: list[ChatRequest] = []

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
