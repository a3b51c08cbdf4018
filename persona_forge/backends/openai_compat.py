"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, Ollama) via AsyncOpenAI.

Many requests in flight (bounded by `concurrency`); each retried with exponential backoff and
jitter on 429, 5xx, timeouts and dropped connections, honouring Retry-After. A request that
still fails comes back as a Completion with `error` set: the stage records it and a re-run
tries it again, so nothing is lost. Errors that no retry can fix for any request (bad key,
unknown model, no endpoint at all) stop the run with one line. The API key is read from the
environment and never written to logs, manifests or errors.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from ..config import BackendConfig
from ..errors import BackendUnavailable, UserError
from .base import ChatBackend, ChatRequest, Completion

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401: "the API key was refused", 403: "access denied",
                404: "the endpoint or model was not found"}


class OpenAIBackend(ChatBackend):
    name = "openai"

    def __init__(self, config: BackendConfig):
        super().__init__(config.model, config.sampling)
        self.config = config
        self._api_key = _read_key(config)
        self._client = None
        # Every connection failure counts here: when *no* request has ever succeeded, the
        # endpoint is probably down or wrong, and we say so instead of failing each request.
        self._successes = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.config.base_url or "api.openai.com"}

    def _client_for_loop(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self.config.base_url,
                timeout=self.config.timeout_s, max_retries=0,  # we retry ourselves, with jitter
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _stream_raw(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        client = self._client_for_loop()
        gate = asyncio.Semaphore(self.config.concurrency)

        async def run(index: int, request: ChatRequest) -> tuple[int, Completion]:
            async with gate:
                return index, await self._with_retries(client, request)

        tasks = [asyncio.create_task(run(i, r)) for i, r in enumerate(requests)]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _with_retries(self, client, request: ChatRequest) -> Completion:
        import openai

        attempt = 0
        while True:
            attempt += 1
            try:
                response = await client.chat.completions.create(**self._body(request))
                self._successes += 1
                return _completion_from(response, attempt)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in FATAL_STATUS:
                    raise BackendUnavailable(self._fatal_message(status, exc)) from None
                error = f"HTTP {status}: {_short(self._redact(_error_text(exc)))}"
                retry = status in RETRYABLE_STATUS
                wait = _retry_after(exc.response.headers) if retry else None
            except openai.APITimeoutError:
                error, retry, wait = f"no answer within {self.config.timeout_s:g}s", True, None
            except openai.APIConnectionError as exc:
                error, retry, wait = f"connection failed: {_short(self._redact(str(exc.__cause__ or exc)))}", True, None
            except (openai.APIResponseValidationError, ValueError) as exc:
                # A 200 whose body is not a chat completion (garbage from a proxy, a torn body).
                error, retry, wait = f"unreadable response: {_short(self._redact(str(exc)))}", True, None
            never_reached = self._successes == 0 and error.startswith("connection failed")
            if not retry or attempt > self.config.max_retries or (never_reached and attempt >= 3):
                if never_reached:
                    raise BackendUnavailable(
                        f"cannot reach {self.config.base_url or 'the OpenAI API'} ({error}); "
                        f"check backend.base_url and that the server is running") from None
                return Completion(text=None, error=error, attempts=attempt)
            await asyncio.sleep(self._delay(attempt, wait))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter: spreading retries keeps a crowd of clients from hammering in lockstep.
        backoff = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (attempt - 1))
        delay = random.uniform(backoff / 2, backoff)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.backoff_max_s * 4))
        return delay

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "top_p": request.top_p,
            self.config.max_tokens_field: request.max_tokens,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json and self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _fatal_message(self, status: int, exc: Exception) -> str:
        where = self.config.base_url or "the OpenAI API"
        hint = {401: f"check the key in ${self.config.api_key_env}",
                403: f"check the key in ${self.config.api_key_env} and its permissions",
                404: f"check backend.base_url and backend.model ('{self.model}')"}[status]
        return f"{where}: {FATAL_STATUS[status]} (HTTP {status}: {_short(self._redact(_error_text(exc)))}); {hint}"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _read_key(config: BackendConfig) -> str:
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if config.base_url:
        # Local servers (vLLM, llama.cpp, Ollama) usually take any key.
        return "not-needed"
    raise UserError(f"no API key: set the environment variable {config.api_key_env} "
                    f"(or name another one in backend.api_key_env)")


def _completion_from(response: Any, attempt: int) -> Completion:
    if not getattr(response, "choices", None):
        raise ValueError("response has no choices")
    choice = response.choices[0]
    usage = getattr(response, "usage", None)
    return Completion(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        attempts=attempt,
    )


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header: a number or an HTTP date."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_text(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
