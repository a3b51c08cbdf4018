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
import json
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from ..config import BackendConfig
from ..errors import BackendUnavailable, UserError
from .base import ChatBackend, ChatRequest, Completion

_FORMAT_ORDER = ("json_schema", "json_object", "text")
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401: "the API key was refused", 403: "access denied",
                404: "the endpoint or model was not found"}


class OpenAIBackend(ChatBackend):
    name = "openai"
    supports_logprobs = True   # OpenAI, vLLM and llama.cpp server return logprobs; others: the text is read
    supports_schema = True

    def __init__(self, config: BackendConfig):
        super().__init__(config.model, config.sampling)
        self.config = config
        self._api_key = _read_key(config)
        self._client = None
        self._client_loop = None
        # Every connection failure counts here: when *no* request has ever succeeded, the
        # endpoint is probably down or wrong, and we say so instead of failing each request.
        self._successes = 0
        # Structured outputs, best first; a server that refuses one with 400 moves this down for
        # the rest of the run (json_schema -> json_object -> plain text with the JSON asked in words).
        self.format_mode = "json_schema"
        self.format_fallbacks: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.config.base_url or "api.openai.com"}

    def _client_for_loop(self):
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            # Made under an earlier event loop (asyncio.run without aclose): its pooled
            # connections belong to that closed loop and fail with "Event loop is closed".
            self._client = None
        if self._client is None:
            import openai

            self._client_loop = loop
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self.config.base_url,
                timeout=self.config.timeout_s, max_retries=0,  # we retry ourselves, with jitter
                http_client=_http_client(self.config),
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
                return index, await self._with_fallback(client, request)

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
            connect_failed = False
            try:
                # A raw POST through the client (its auth, base_url, headers and error types)
                # skips the SDK's per-request parameter transform and response model, which
                # cost more CPU than the network wait at high concurrency (bench/backends.py).
                response = await client.post("/chat/completions", body=self._body(request),
                                             cast_to=_httpx().Response)
                completion = _completion_from(_json_body(response), attempt)
                self._successes += 1
                return completion
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in FATAL_STATUS:
                    raise BackendUnavailable(self._fatal_message(status, exc)) from None
                error = f"HTTP {status}: {_short(self._redact(_error_text(exc)))}"
                retry = status in RETRYABLE_STATUS
                wait = _retry_after(exc.response.headers) if retry else None
            except openai.APITimeoutError as exc:
                error, retry, wait = _timeout_or_drop(exc, self.config.timeout_s), True, None
                connect_failed = _connect_failed(exc)
            except openai.APIConnectionError as exc:
                error, retry, wait = f"connection failed: {_short(self._redact(str(exc.__cause__ or exc)))}", True, None
                connect_failed = _connect_failed(exc)
            except (openai.APIResponseValidationError, ValueError) as exc:
                # A 200 whose body is not a chat completion (garbage from a proxy, a torn body).
                error, retry, wait = f"unreadable response: {_short(self._redact(str(exc)))}", True, None
            # Only a refused connection says nothing is listening; one dropped after it was made
            # means the server is there (a proxy or a crashing worker), so that is retried per request.
            never_reached = self._successes == 0 and connect_failed
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
        response_format = self._response_format(request)
        if response_format is not None:
            body["response_format"] = response_format
        if request.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        return body

    def _response_format(self, request: ChatRequest) -> dict[str, Any] | None:
        if not (request.json and self.config.json_mode) or self.format_mode == "text":
            return None
        if request.schema is not None and self.format_mode == "json_schema":
            return request.schema
        return {"type": "json_object"}

    async def _with_fallback(self, client, request: ChatRequest) -> Completion:
        """`_with_retries`, and when the server refuses the structured-output format with 400, the
        next format down (json_object, then none) for this request and all after it."""
        while True:
            sent = self._response_format(request)
            completion = await self._with_retries(client, request)
            error = (completion.error or "").lower()
            if sent is None or not error.startswith("http 400") or not any(
                    word in error for word in ("format", "schema", "json")):
                return completion
            lower = "json_object" if sent.get("type") == "json_schema" else "text"
            if self.format_mode != lower and _FORMAT_ORDER.index(self.format_mode) < _FORMAT_ORDER.index(lower):
                self.format_fallbacks.append(f"{sent.get('type')} refused ({completion.error}); using {lower}")
                self.format_mode = lower

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


def _httpx():
    """The HTTP library the installed openai client is built on (httpx2 in 3.x, httpx before)."""
    try:
        import httpx2

        return httpx2
    except ImportError:  # pragma: no cover - older openai releases
        import httpx

        return httpx


def _http_client(config: BackendConfig):
    """aiohttp under the openai client where installed (openai[aiohttp]): at 64 requests in
    flight its lower per-request CPU is what keeps throughput near the ideal."""
    import openai

    limits = _httpx().Limits(max_connections=max(100, config.concurrency),
                             max_keepalive_connections=max(100, config.concurrency))
    try:
        return openai.DefaultAioHttpClient(timeout=config.timeout_s, limits=limits)
    except (RuntimeError, ImportError, TypeError):
        return openai.DefaultAsyncHttpxClient(timeout=config.timeout_s, limits=limits)


def _json_body(response: Any) -> Any:
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON ({exc})") from None


def _completion_from(body: Any, attempt: int) -> Completion:
    """A Completion from a chat.completion JSON body; ValueError (retried) if it is not one."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise ValueError("response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("response choice has no message")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        text=message.get("content") or "",
        finish_reason=choices[0].get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=attempt,
        logprobs=choices[0].get("logprobs"),
    )


def _timeout_or_drop(exc: Exception, timeout_s: float) -> str:
    # Under aiohttp a connection the server closed without answering surfaces as a timeout
    # ("Server disconnected"); call it what it is, or the user chases a slow server.
    cause = str(exc.__cause__ or "")
    if "disconnect" in cause.lower() or _connect_failed(exc):
        return f"connection failed: {cause}"
    return f"no answer within {timeout_s:g}s"


def _connect_failed(exc: Exception) -> bool:
    """Whether the TCP connection itself failed (refused, no route, DNS).

    Matched by name: it is httpx.ConnectError or httpx2.ConnectError, by openai version; the
    aiohttp transport reports a refused connection as a ConnectTimeout that says so.
    """
    cause = exc.__cause__
    return type(cause).__name__ == "ConnectError" or "cannot connect to host" in str(cause).lower()


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
