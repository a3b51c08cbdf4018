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

from ..config import OpenAIBackendConfig, redact_url
from ..errors import BackendUnavailable, UserError
from .base import ChatBackend, ChatRequest, Completion, bounded_stream

_FORMAT_ORDER = ("json_schema", "json_object", "text")
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUS = {401: "the API key was refused", 403: "access denied",
                404: "the endpoint or model was not found"}


class OpenAIBackend(ChatBackend):
    name = "openai"
    supports_logprobs = True   # OpenAI, vLLM and llama.cpp server return logprobs; others: the text is read
    supports_schema = True

    def __init__(self, config: OpenAIBackendConfig):
        super().__init__(config.model, config.sampling)
        self.config = config
        self._api_key = read_key(config)
        self._client = None
        self._client_loop = None
        # Every connection failure counts here: when *no* request has ever succeeded, the
        # endpoint is probably down or wrong, and we say so instead of failing each request.
        self._successes = 0
        self._session = None
        self._session_loop = None
        self._proxy: str | None = None
        # Structured outputs, best first; a server that refuses one with 400 moves this down for
        # the rest of the run (json_schema -> json_object -> plain text with the JSON asked in words).
        self.format_mode = "json_schema"
        self.format_fallbacks: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model,
                "base_url": redact_url(self.config.base_url) or "api.openai.com"}

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
                api_key=self._api_key, base_url=_without_userinfo(self.config.base_url),
                timeout=self.config.timeout_s, max_retries=0,  # we retry ourselves, with jitter
                http_client=_http_client(self.config),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_for_loop(self):
        """One aiohttp session (a keep-alive pool sized to `concurrency`) per event loop.

        Chat requests go straight through aiohttp rather than the openai SDK: the SDK's request
        building, header merging and response wrapping cost about 2 ms of CPU per request, which
        at 64+ requests in flight left connections idle between an answer and the next request
        (bench/backends.py). Errors are mapped to the same kinds the SDK gave."""
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is not None and (self._session_loop is not loop or self._session.closed):
            self._session = None  # made under an earlier event loop: its connections are dead
        if self._session is None:
            self._session_loop = loop
            connector = aiohttp.TCPConnector(limit=self.config.concurrency, limit_per_host=self.config.concurrency,
                                             ttl_dns_cache=300, enable_cleanup_closed=False)
            # trust_env would look up proxies and .netrc in a thread for every request (two
            # executor round trips each); the proxy is looked up once here instead.
            self._proxy = _env_proxy(_chat_url(self.config.base_url))
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": "persona-forge"})
        return self._session

    async def _stream_raw(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        from yarl import URL

        session = self._session_for_loop()
        url = URL(_chat_url(self.config.base_url))   # parsed once, not once per request
        async for item in bounded_stream(requests, self.config.concurrency,
                                         lambda request: self._with_fallback(session, url, request)):
            yield item

    async def _post(self, session, url, request: ChatRequest) -> tuple[int, Any, bytes]:
        async with session.post(url, data=json.dumps(self._body(request)).encode(), proxy=self._proxy) as response:
            return response.status, response.headers, await response.read()

    async def _with_retries(self, session, url, request: ChatRequest) -> Completion:
        import aiohttp

        attempt = 0
        while True:
            attempt += 1
            connect_failed = False
            wait = None
            try:
                status, headers, content = await self._post(session, url, request)
                if status < 300:
                    completion = _completion_from(_json_body(content), attempt)
                    self._successes += 1
                    return completion
                if status in FATAL_STATUS:
                    raise BackendUnavailable(self._fatal_message(status, _body_error_text(content)))
                error = f"HTTP {status}: {_short(self._redact(_body_error_text(content)))}"
                retry = status in RETRYABLE_STATUS
                wait = _retry_after(headers) if retry else None
            except aiohttp.ClientConnectorError as exc:  # refused, no route, DNS: nothing reached
                error, retry, connect_failed = f"connection failed: {_short(self._redact(str(exc)))}", True, True
            except asyncio.TimeoutError:
                error, retry = f"no answer within {self.config.timeout_s:g}s", True
            except (aiohttp.ClientError, ConnectionError) as exc:  # dropped, torn body
                error, retry = f"connection failed: {_short(self._redact(str(exc) or type(exc).__name__))}", True
            except ValueError as exc:
                # A 2xx whose body is not a chat completion (garbage from a proxy, a torn body).
                error, retry = f"unreadable response: {_short(self._redact(str(exc)))}", True
            # Only a refused connection says nothing is listening; one dropped after it was made
            # means the server is there (a proxy or a crashing worker), so that is retried per request.
            never_reached = self._successes == 0 and connect_failed
            if not retry or attempt > self.config.max_retries or (never_reached and attempt >= 3):
                if never_reached:
                    raise BackendUnavailable(
                        f"cannot reach {redact_url(self.config.base_url) or 'the OpenAI API'} ({error}); "
                        f"check backend.base_url and that the server is running") from None
                return Completion(text=None, error=self._redact(error), attempts=attempt)
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

    async def _with_fallback(self, session, url, request: ChatRequest) -> Completion:
        """`_with_retries`, and when the server refuses the structured-output format with 400, the
        next format down (json_object, then none) for this request and all after it."""
        while True:
            sent = self._response_format(request)
            completion = await self._with_retries(session, url, request)
            error = (completion.error or "").lower()
            if sent is None or not error.startswith("http 400") or not any(
                    word in error for word in ("format", "schema", "json")):
                return completion
            lower = "json_object" if sent.get("type") == "json_schema" else "text"
            if self.format_mode != lower and _FORMAT_ORDER.index(self.format_mode) < _FORMAT_ORDER.index(lower):
                self.format_fallbacks.append(f"{sent.get('type')} refused ({completion.error}); using {lower}")
                self.format_mode = lower

    def _fatal_message(self, status: int, text: str) -> str:
        where = redact_url(self.config.base_url) or "the OpenAI API"
        hint = {401: f"check the key in ${self.config.api_key_env}",
                403: f"check the key in ${self.config.api_key_env} and its permissions",
                404: f"check backend.base_url and backend.model ('{self.model}')"}[status]
        return f"{where}: {FATAL_STATUS[status]} (HTTP {status}: {_short(self._redact(text))}); {hint}"

    def _redact(self, text: str) -> str:
        """`text` without the API key or a secret written into base_url (http://user:KEY@host)."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _secrets(self) -> list[str]:
        secrets = [self._api_key] if self._api_key and self._api_key != "not-needed" else []
        url = self.config.base_url or ""
        if "@" in url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            secrets += [s for s in (parts.password, parts.username) if s and len(s) >= 4]
        return secrets


def _without_userinfo(url: str | None) -> str | None:
    """The endpoint without `user:KEY@`: the key travels as the Bearer token (aiohttp refuses a URL
    with credentials beside an Authorization header)."""
    if not url or "@" not in url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def read_key(config: OpenAIBackendConfig) -> str:
    """The API key the endpoint takes: from the environment, or a placeholder for a local server."""
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if config.base_url and "@" in config.base_url:
        from urllib.parse import urlsplit

        parts = urlsplit(config.base_url)
        if parts.password or parts.username:  # http://user:KEY@host: the key was written into the URL
            return parts.password or parts.username
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


def _http_client(config: OpenAIBackendConfig):
    """aiohttp under the openai client where installed (openai[aiohttp]): at 64 requests in
    flight its lower per-request CPU is what keeps throughput near the ideal."""
    import openai

    limits = _httpx().Limits(max_connections=max(100, config.concurrency),
                             max_keepalive_connections=max(100, config.concurrency))
    try:
        return openai.DefaultAioHttpClient(timeout=config.timeout_s, limits=limits)
    except (RuntimeError, ImportError, TypeError):
        return openai.DefaultAsyncHttpxClient(timeout=config.timeout_s, limits=limits)


def _chat_url(base_url: str | None) -> str:
    base = _without_userinfo(base_url) or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return base.rstrip("/") + "/chat/completions"


def _env_proxy(url: str) -> str | None:
    """The proxy the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) names for `url`, if any."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _body_error_text(content: bytes) -> str:
    """The message of an OpenAI-style error body, else the body's text."""
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return content.decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return json.dumps(body)[:500]


def _json_body(content: bytes) -> Any:
    try:
        return json.loads(content)
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


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def served_models(config: OpenAIBackendConfig) -> list[dict[str, Any]] | None:
    """The endpoint's GET /v1/models list (forge serve and vLLM give each LoRA adapter its `parent`, the
    base model's name), or None when it has no such route or answers something else. An endpoint that
    cannot be reached, or refuses the key, is BackendUnavailable (one line)."""
    import urllib.error
    import urllib.request

    base = _without_userinfo(config.base_url) or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    where = redact_url(config.base_url) or "the OpenAI API"
    request = urllib.request.Request(base.rstrip("/") + "/models", headers={
        "Authorization": f"Bearer {read_key(config)}", "Accept": "application/json", "User-Agent": "persona-forge"})
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            hint = f"check the key in ${config.api_key_env}"
            raise BackendUnavailable(f"{where}: {FATAL_STATUS[exc.code]} (HTTP {exc.code} on GET /models); {hint}") from None
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BackendUnavailable(f"cannot reach {where} (connection failed: {_short(str(reason))}); check "
                                 f"backend.base_url and that the server is running") from None
    except ValueError:  # not JSON
        return None
    data = body.get("data") if isinstance(body, dict) else None
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else None
