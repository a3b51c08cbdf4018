"""A stand-in OpenAI-compatible server for tests and benchmarks: stdlib asyncio streams only.

It serves POST /v1/chat/completions and GET /v1/models over HTTP/1.1 with keep-alive, binds
127.0.0.1 only, and misbehaves on request, so the openai backend can be tested against every
way a real endpoint fails.

What each chat request gets, first match wins:

1. a fault keyword in a user message, e.g. `[[fault:500*2]]`. The spec is a comma-separated
   list of behaviours, each optionally `*N`: the n-th arrival of that same message gets the
   n-th behaviour, so `500*2` fails twice and then answers, `429:1*1,500*1` rate-limits, fails,
   then answers, and a plain `drop` drops every time. Faults are keyed by the message, so
   they hold for one prompt of a batch whatever order the requests arrive in, and they follow
   the prompt into a JSON repair request (which repeats the original messages);
2. the next entry of the fault script (`--script '["429:1", "ok"]'`), consumed in arrival order;
3. the default behaviour (`--default`, normally `ok`).

Behaviours (`name` or `name:arg`):
    ok               an echo-based answer (JSON `{"echo": ...}` when response_format asks for JSON; an
                     instance of the schema when it is a json_schema; with `logprobs`, a one-token
                     answer, 1-5 or A/B as the prompt asks, with top_logprobs from a seeded distribution)
    json             a JSON answer even without response_format
    fenced, prose    that JSON inside a ```json fence, or inside a sentence
    truncated        JSON cut off mid-way, finish_reason "length"
    429[:s]          429 with Retry-After: s seconds (default 1)
    500, 503, 400    that status with an OpenAI-style error body
    401, 404         bad key, unknown model (also given for real: see --api-key, --models)
    drop             close the connection without answering
    drop_mid         send the headers and half the body, then close
    garbage          200, Content-Type application/json, a body that is not JSON
    html             200, Content-Type text/html: a proxy's error page
    shape            200, valid JSON that is not a chat completion (no choices)
    nomessage        200, a chat completion whose choice has no message
    leaky            500 whose error message quotes the Authorization header
    slow[:s]         answer normally after s more seconds (default 5): beyond a client timeout
    persona          a conversation in "User 1: / User 2:" lines that restates the personas listed in
                     the prompt, worded differently for each request seed (JSON requests get a
                     judge's rubric instead): a generator and judge
    restyle          forge restyle's rewrite: `Here is the line: "PHRASE LINE"`, LINE the quoted line of
                     `Rewrite this line in the STYLE voice: "LINE"` and PHRASE the `phrases` setting's
                     entry for STYLE (POST /control {"phrases": {STYLE: PHRASE}}; none: the line alone)

Fine-tuning (as OpenAI's API): POST /v1/files (multipart, purpose fine-tune) stores a JSONL file;
POST /v1/fine_tuning/jobs starts a job on a stored file; each GET /v1/fine_tuning/jobs/{id} moves the
job one step along validating_files -> queued -> running -> succeeded (fine_tuned_model
"ft:MODEL:standin:SUFFIX:ID"); a base model whose name contains "fail" ends "failed" instead.

--latency-ms delays every chat answer; GET /stats returns counters (by path, by behaviour,
arrival times per prompt, the last 64 chat requests as sent, the most requests in flight at once, every
Authorization header seen); POST /control resets them and sets `script`, `latency_ms`, `default`,
`api_key`, `models`, `parents` (the `parent` /v1/models lists for a model)
(those not given go back to how the server was started), and `formats`: the response_format
types it accepts (others get 400, as servers without structured outputs answer; default all), so
one process can serve a test module.

    python tests/standin_server.py --port 0 --latency-ms 50     # prints the port, then serves
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import select
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

HOST = "127.0.0.1"
RECENT_KEPT = 64
_FAULT_OPEN = "[[fault:"

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}
_ERROR_MESSAGES = {400: "This model's maximum context length is 8192 tokens.",
                   429: "Rate limit reached for requests. Please try again later.",
                   500: "The server had an error while processing your request.",
                   503: "The engine is currently overloaded, please try again later."}


class Settings:
    def __init__(self, latency_ms: float = 0.0, default: str = "ok", script: list[str] | None = None,
                 api_key: str | None = None, models: list[str] | None = None,
                 formats: list[str] | None = None, parents: dict[str, str | None] | None = None,
                 phrases: dict[str, str] | None = None):
        self.formats = formats
        self.phrases = dict(phrases or {})  # the `restyle` behaviour: style -> the phrase its rewrites add
        # GET /v1/models lists `parent` for these models (as forge serve and vLLM do: the base model's
        # name for an adapter, null for the base itself); others are listed without it.
        self.parents = dict(parents or {})
        self.latency_s = latency_ms / 1000
        self.default = default
        self.script = list(script or [])
        self.api_key = api_key
        self.models = list(models or [])


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.requests = 0
        self.connections = 0
        self.by_path: Counter[str] = Counter()
        self.by_behaviour: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.authorization: Counter[str] = Counter()
        self.json_mode = 0
        self.json_schema = 0
        self.logprobs = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Where the time goes, to tell a slow client from a slow server: the server's own time
        # per chat request (not counting the latency it was told to add), and how long a
        # kept-alive connection sat idle between an answer and the client's next request.
        self.handling_s = 0.0
        self.turnaround_s = 0.0
        self.turnarounds = 0
        # First user message -> arrival times (seconds since reset): how often, and when, each
        # prompt was attempted.
        self.arrivals: dict[str, list[float]] = {}
        # The last chat requests as sent (model, messages, sampling), oldest first: what a test asserts on.
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_KEPT)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "connections": self.connections,
            "chat": self.by_path["POST /v1/chat/completions"],
            "by_path": dict(self.by_path), "by_behaviour": dict(self.by_behaviour),
            "by_model": dict(self.by_model), "authorization": dict(self.authorization),
            "json_mode": self.json_mode, "json_schema": self.json_schema, "logprobs": self.logprobs,
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "arrivals": self.arrivals, "recent": list(self.recent),
            "handling_ms": round(self.handling_s / max(1, self.by_path["POST /v1/chat/completions"]) * 1000, 3),
            "turnaround_ms": round(self.turnaround_s / max(1, self.turnarounds) * 1000, 3),
            "cpu_s": round(time.process_time() - self.cpu_started, 4),
            "wall_s": round(time.monotonic() - self.started, 4),
        }


class StandinServer:
    def __init__(self, options: dict[str, Any]):
        self.options = options  # as started; POST /control starts again from these
        self.settings = Settings(**options)
        self.stats = Stats()
        self.seen_faults: Counter[str] = Counter()
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    # --- HTTP plumbing: as little work per request as possible -----------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        answered = 0.0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                request_line, _, header_block = head.decode("latin-1").partition("\r\n")
                method, path, _version = request_line.split(" ", 2)
                headers = {}
                for line in header_block.split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                stats = self.stats
                if answered > stats.started:
                    stats.turnaround_s += time.monotonic() - answered
                    stats.turnarounds += 1
                keep_open = await self.dispatch(method, path.split("?", 1)[0], headers, body, writer)
                answered = time.monotonic()
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except ValueError:  # not HTTP, or a body that is not JSON
            with contextlib.suppress(ConnectionError):
                await self.send(writer, 400, _error_body(400, "malformed request"))
        finally:
            writer.close()

    @staticmethod
    async def send(writer: asyncio.StreamWriter, status: int, body: bytes,
                   content_type: bytes = b"application/json", extra: bytes = b"") -> None:
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            status, _REASONS.get(status, "Status").encode(), content_type, len(body), extra, body))
        await writer.drain()

    async def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        stats = self.stats
        stats.requests += 1
        stats.by_path[f"{method} {path}"] += 1
        if path == "/stats":
            fine_tuning = {"files": {k: {x: v[x] for x in ("filename", "bytes", "lines", "purpose")}
                                     for k, v in self.files.items()},
                           "jobs": {k: {x: v[x] for x in ("status", "model", "training_file", "retrieved",
                                                          "suffix", "seed", "method")}
                                    for k, v in self.jobs.items()}}
            await self.send(writer, 200, json.dumps({**stats.as_dict(), "fine_tuning": fine_tuning}).encode())
            return True
        if path == "/control" and method == "POST":
            self.control(json.loads(body or b"{}"))
            await self.send(writer, 200, b'{"ok":true}')
            return True
        if not path.startswith("/v1/"):
            await self.send(writer, 404, _error_body(404, f"no route {method} {path}"))
            return True
        auth = headers.get("authorization", "")
        stats.authorization[auth] += 1
        key = self.settings.api_key
        if key is not None and auth != f"Bearer {key}":
            presented = auth.removeprefix("Bearer ")
            # Careless servers echo the key they were given; the backend must not repeat it.
            await self.send(writer, 401, _error_body(401, f"Incorrect API key provided: {presented}."))
            return True
        if path == "/v1/models" and method == "GET":
            parents = self.settings.parents
            models = [{"id": m, "object": "model", "owned_by": "standin"} | (
                {"parent": parents[m]} if m in parents else {}) for m in self.settings.models]
            await self.send(writer, 200, json.dumps({"object": "list", "data": models}).encode())
            return True
        if path == "/v1/chat/completions" and method == "POST":
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                return await self.chat(json.loads(body), auth, writer)
            finally:
                stats.in_flight -= 1
        if path == "/v1/files" and method == "POST":
            status, answer = self.upload(headers, body)
            await self.send(writer, status, json.dumps(answer).encode())
            return True
        if path == "/v1/fine_tuning/jobs" and method == "POST":
            status, answer = self.create_job(json.loads(body or b"{}"))
            await self.send(writer, status, json.dumps(answer).encode())
            return True
        if path.startswith("/v1/fine_tuning/jobs/") and method == "GET":
            status, answer = self.retrieve_job(path.rsplit("/", 1)[1])
            await self.send(writer, status, json.dumps(answer).encode())
            return True
        await self.send(writer, 404, _error_body(404, f"no route {method} {path}"))
        return True

    # --- fine-tuning: files and jobs ------------------------------------------------------------

    def upload(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        fields = _multipart(headers.get("content-type", ""), body)
        if "file" not in fields:
            return 400, json.loads(_error_body(400, "no file in the multipart body"))
        filename, content = fields["file"]
        purpose = fields.get("purpose", ("", b""))[1].decode()
        try:
            lines = [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError):
            return 400, json.loads(_error_body(400, "the training file is not valid JSONL"))
        file_id = f"file-standin{len(self.files) + 1}"
        self.files[file_id] = {"filename": filename, "bytes": len(content), "lines": len(lines), "purpose": purpose}
        return 200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                     "filename": filename, "purpose": purpose, "status": "processed"}

    def create_job(self, request: dict[str, Any]) -> tuple[int, Any]:
        training_file = request.get("training_file")
        if training_file not in self.files:
            return 400, json.loads(_error_body(400, f"invalid training_file: {training_file}"))
        job_id = f"ftjob-standin{len(self.jobs) + 1}"
        self.jobs[job_id] = {"status": "validating_files", "model": request.get("model", ""),
                             "training_file": training_file, "retrieved": 0, "suffix": request.get("suffix"),
                             "seed": request.get("seed"), "method": request.get("method"),
                             "created_at": int(time.time())}
        return 200, self._job(job_id)

    def retrieve_job(self, job_id: str) -> tuple[int, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            return 404, json.loads(_error_body(404, f"no fine-tuning job {job_id}"))
        job["retrieved"] += 1
        steps = ["validating_files", "queued", "running", "failed" if "fail" in job["model"] else "succeeded"]
        if job["status"] in steps[:-1]:
            job["status"] = steps[steps.index(job["status"]) + 1]
        return 200, self._job(job_id)

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        done = job["status"] == "succeeded"
        failed = job["status"] == "failed"
        lines = self.files[job["training_file"]]["lines"]
        return {"id": job_id, "object": "fine_tuning.job", "created_at": job["created_at"], "model": job["model"],
                "fine_tuned_model": f"ft:{job['model']}:standin:{job['suffix'] or 'model'}:{job_id}" if done else None,
                "organization_id": "org-standin", "status": job["status"], "training_file": job["training_file"],
                "validation_file": None, "hyperparameters": {"n_epochs": 3}, "result_files": [],
                "trained_tokens": lines * 100 if done else None, "seed": job["seed"] or 0,
                "finished_at": int(time.time()) if done or failed else None,
                "error": {"code": "invalid_training_file", "message": "The base model cannot be fine-tuned.",
                          "param": None} if failed else None}

    def control(self, options: dict[str, Any]) -> None:
        self.files.clear()
        self.jobs.clear()
        self.stats = Stats()
        self.seen_faults.clear()
        self.settings = Settings(**{**self.options, **options})

    # --- chat completions -------------------------------------------------------------------

    def behaviour_for(self, messages: list[dict[str, Any]]) -> str:
        for message in messages:
            content = message.get("content")
            if message.get("role") == "user" and isinstance(content, str) and _FAULT_OPEN in content:
                spec = content.split(_FAULT_OPEN, 1)[1].split("]]", 1)[0]
                arrival = self.seen_faults[content]
                self.seen_faults[content] += 1
                return _nth_behaviour(spec, arrival)
        if self.settings.script:
            return self.settings.script.pop(0)
        return self.settings.default

    async def chat(self, request: dict[str, Any], auth: str, writer: asyncio.StreamWriter) -> bool:
        stats = self.stats
        started = time.monotonic()
        try:
            return await self._chat(stats, request, auth, writer)
        finally:
            stats.handling_s += time.monotonic() - started - self.settings.latency_s

    async def _chat(self, stats: Stats, request: Any, auth: str, writer: asyncio.StreamWriter) -> bool:
        try:
            messages = _read_messages(request)
        except ValueError as exc:  # what it cannot read gets a 400 saying why, as OpenAI's API does
            stats.by_behaviour["unreadable"] += 1
            await self.send(writer, 400, _error_body(400, str(exc)))
            return True
        users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
        first_user = users[0] if users else ""
        stats.arrivals.setdefault(first_user[:200], []).append(round(time.monotonic() - stats.started, 4))
        model = request.get("model", "")
        stats.by_model[model] += 1
        stats.recent.append({"model": model, "messages": messages,
                             **{k: request[k] for k in ("seed", "temperature", "top_p", "max_tokens") if k in request}})
        response_format = request.get("response_format") or {}
        format_type = response_format.get("type")
        wants_json = format_type in ("json_object", "json_schema")
        stats.json_mode += format_type == "json_object"
        stats.json_schema += format_type == "json_schema"
        stats.logprobs += bool(request.get("logprobs"))

        behaviour = self.behaviour_for(messages)
        name, _, arg = behaviour.partition(":")
        stats.by_behaviour[name] += 1
        if self.settings.latency_s:
            await asyncio.sleep(self.settings.latency_s)

        if self.settings.models and model not in self.settings.models:
            await self.send(writer, 404, _error_body(404, f"The model `{model}` does not exist."))
            return True
        if format_type and self.settings.formats is not None and format_type not in self.settings.formats:
            await self.send(writer, 400, _error_body(400, f"response_format type '{format_type}' is not supported"))
            return True
        if name.isdigit():
            status = int(name)
            extra = b""
            if status == 429:
                extra = b"Retry-After: %s\r\n" % (arg or "1").encode()
            message = "Incorrect API key provided." if status == 401 else \
                f"The model `{model}` does not exist." if status == 404 else \
                _ERROR_MESSAGES.get(status, f"status {status}")
            await self.send(writer, status, _error_body(status, message), extra=extra)
            return True
        if name == "drop":
            return False
        if name == "garbage":
            await self.send(writer, 200, b"<<not json>> \x00\x01 upstream said: oops")
            return True
        if name == "html":
            await self.send(writer, 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                            content_type=b"text/html")
            return True
        if name == "shape":
            await self.send(writer, 200, b'{"object":"chat.completion","result":"not what you expected"}')
            return True
        if name == "nomessage":
            await self.send(writer, 200, b'{"object":"chat.completion","choices":[{"index":0,"finish_reason":"stop"}]}')
            return True
        if name == "leaky":
            # A careless proxy that quotes the request headers in its error.
            message = f"upstream failed for request with headers {{'authorization': '{auth}'}}"
            await self.send(writer, 500, _error_body(500, message))
            return True
        if name == "slow":
            await asyncio.sleep(float(arg or 5))
            name = "ok"

        last_user = users[-1] if users else ""
        content, finish = _content(name, last_user, wants_json, request.get("seed"))
        if name == "restyle":
            content = _restyle_content(last_user, self.settings.phrases)
        logprobs = None
        if format_type == "json_schema" and name in ("ok", "persona", "json"):
            content = json.dumps(_instance(response_format.get("json_schema", {}).get("schema", {})))
        if request.get("logprobs") and name in ("ok", "persona"):
            content, logprobs = _answer_logprobs(last_user, int(request.get("top_logprobs") or 0))
        prompt_tokens = sum(_tokens(m.get("content") or "") + 4 for m in messages) + 3
        body = json.dumps({
            "id": f"chatcmpl-standin{stats.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": logprobs, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(content),
                      "total_tokens": prompt_tokens + _tokens(content)},
        }, separators=(",", ":")).encode()
        if name == "drop_mid":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body[: len(body) // 2]))
            await writer.drain()
            return False
        await self.send(writer, 200, body)
        return True


def _read_messages(request: Any) -> list[dict[str, str]]:
    """The request's messages with each `content` as one string. OpenAI's API takes a string or a
    list of parts (`[{"type": "text", "text": ...}]`, which NVIDIA Data Designer always sends);
    the text parts are joined. ValueError (answered with 400) for anything else."""
    if not isinstance(request, dict):
        raise ValueError("the request body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array")
    out = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{number}] must be an object with a string 'role'")
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{number}].content: only text parts "
                                     f"({{\"type\": \"text\", \"text\": ...}}) are understood here")
                texts.append(part["text"])
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise ValueError(f"messages[{number}].content must be a string or an array of parts")
        out.append({**message, "content": content})
    return out


def _restyle_content(prompt: str, phrases: dict[str, str]) -> str:
    """A well-formed rewrite of the line forge restyle's prompt asks for: the style's phrase, then the line."""
    match = re.search(r'Rewrite this line in the (\S+) voice: "(.*)"\s*$', prompt, re.DOTALL)
    if match is None:
        return "I cannot find the line to rewrite."
    style, line = match.groups()
    return f'Here is the line: "{" ".join(filter(None, [phrases.get(style), line]))}"'


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """name -> (filename, content) for each part of a multipart/form-data body."""
    boundary = content_type.partition("boundary=")[2].strip().strip('"').encode()
    fields: dict[str, tuple[str, bytes]] = {}
    if not boundary:
        return fields
    for part in body.split(b"--" + boundary):
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = head.decode("latin-1")
        name = disposition.partition('name="')[2].partition('"')[0]
        filename = disposition.partition('filename="')[2].partition('"')[0]
        if name:
            fields[name] = (filename, content.removesuffix(b"\r\n"))
    return fields


def _nth_behaviour(spec: str, arrival: int) -> str:
    """The behaviour for the `arrival`-th (0-based) time a message with this fault spec is seen."""
    for item in spec.split(","):
        behaviour, star, count = item.strip().partition("*")
        if not star:
            return behaviour
        if arrival < int(count):
            return behaviour
        arrival -= int(count)
    return "ok"


def _content(name: str, last_user: str, wants_json: bool, seed: int | None = None) -> tuple[str, str]:
    if name == "persona":
        return _persona_content(last_user, wants_json, seed), "stop"
    echo = last_user.split(_FAULT_OPEN, 1)[0].strip()
    payload = json.dumps({"echo": echo, "words": len(echo.split())})
    if name == "truncated":
        return payload[: max(1, len(payload) * 2 // 3)], "length"
    if name == "fenced":
        return f"Here is the JSON you asked for:\n```json\n{payload}\n```\nAnything else?", "stop"
    if name == "prose":
        return f"Sure! The answer is {payload} - I hope that helps.", "stop"
    if name == "json" or wants_json:
        return payload, "stop"
    return f"echo: {echo}", "stop"


_OPENERS = [("Hi! Nice to meet you.", "Hello, nice to meet you too. Tell me about yourself."),
            ("Hey there, how is your day going?", "Pretty good, thanks! What about you?"),
            ("Hello! I'm glad we got matched.", "Me too. So, what keeps you busy?"),
            ("Hi, how are you doing today?", "I'm great, just relaxing. How about you?")]
_SHARES = ["Well, {a}", "Honestly, {a}", "Funny you ask, {a}", "{A} That's a big part of my life.",
           "{A} What about you?", "Let me think... {a}"]
_REPLIES = ["Oh nice. {B}", "That's cool! {B}", "Interesting. {B}", "No way! {B}", "{B} How about that?",
            "I see. {B}"]
_CLOSERS = [("It was great talking to you.", "You too, bye!"), ("I should get going, talk soon!", "Sure, take care!"),
            ("Thanks for the chat.", "Anytime, have a good one!")]


def _persona_content(prompt: str, wants_json: bool, seed: int | None = None) -> str:
    """What a competent generator or judge would answer to forge generate's prompts. Like a model
    sampling at a temperature, each seed words the conversation differently (openers, phrasing,
    attribute order), so a pair's candidates are not copies of each other."""
    if wants_json:
        return json.dumps({k: {"score": 4, "reason": "reads well"} for k in
                           ("coherence", "engagingness", "naturalness", "consistency")} | {"unsafe": False})
    personas: dict[str, list[str]] = {"User 1": [], "User 2": []}
    current = None
    for line in prompt.splitlines():
        if line.startswith("User 1's persona"):
            current = "User 1"
        elif line.startswith("User 2's persona"):
            current = "User 2"
        elif current and line.startswith("- "):
            personas[current].append(line[2:].strip())
        elif current and line.strip() and not line.startswith("- "):
            current = None
    rng = random.Random(seed or 0)
    first, second = (list(personas[k]) for k in ("User 1", "User 2"))
    rng.shuffle(first)
    rng.shuffle(second)
    opener = rng.choice(_OPENERS)
    turns = [f"User 1: {opener[0]}", f"User 2: {opener[1]}"]
    for a, b in zip(first, second):
        lowered = a if a.startswith(("I ", "I'")) else a[0].lower() + a[1:]
        share = rng.choice(_SHARES).format(a=lowered, A=a)
        turns += [f"User 1: {share}", f"User 2: {rng.choice(_REPLIES).format(B=b)}"]
    closer = rng.choice(_CLOSERS)
    return "\n".join(turns + [f"User 1: {closer[0]}", f"User 2: {closer[1]}"])


def _instance(schema: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema: what a server that honours it returns."""
    if "enum" in schema:
        values = schema["enum"]
        return values[len(values) * 3 // 4] if all(isinstance(v, int) for v in values) else values[0]
    kind = schema.get("type")
    if kind == "object":
        return {key: _instance(sub) for key, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_instance(schema.get("items") or {})]
    return {"integer": 4, "number": 4.0, "boolean": False, "string": "reads well"}.get(kind)


def _answer_logprobs(prompt: str, top: int) -> tuple[str, dict[str, Any]]:
    """A one-token answer to a question asking for a digit 1-5 or a letter A/B, with the top
    logprobs of a distribution seeded by the prompt (the options, then filler tokens)."""
    import hashlib
    import math

    options = ["A", "B"] if "A or B" in prompt else ["1", "2", "3", "4", "5"]
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    weights = [rng.random() + 0.05 for _ in options] + [0.05, 0.03]
    tokens = options + ["The", " I"]
    total = sum(weights)
    ranked = sorted(zip(tokens, (w / total for w in weights)), key=lambda tp: -tp[1])[:max(1, top)]
    best = ranked[0][0]
    return best, {"content": [{"token": best, "logprob": math.log(ranked[0][1]), "bytes": list(best.encode()),
                               "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                                                for t, p in ranked]}]}


def _tokens(text: str) -> int:
    # About 4/3 tokens per word, as for English with a BPE vocabulary.
    return (len(text.split()) * 4 + 2) // 3


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                                 "param": None, "code": None}}, separators=(",", ":")).encode()


async def serve(port: int, options: dict[str, Any]) -> None:
    standin = StandinServer(options)
    server = await asyncio.start_server(standin.handle, HOST, port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout).")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="Delay before every chat answer.")
    parser.add_argument("--default", default="ok", help="Behaviour when no keyword or script applies.")
    parser.add_argument("--script", default="[]", help="JSON list of behaviours, consumed in arrival order.")
    parser.add_argument("--api-key", default=None, help="Refuse any other Authorization with 401.")
    parser.add_argument("--models", default="", help="Comma-separated served models; others get 404.")
    args = parser.parse_args(argv)
    options = {"latency_ms": args.latency_ms, "default": args.default, "script": json.loads(args.script),
               "api_key": args.api_key, "models": [m for m in args.models.split(",") if m]}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, options))


# --- helpers for tests and benchmarks ---------------------------------------------------------

def start_server(latency_ms: float = 0.0, default: str = "ok", script: list[str] | None = None,
                 api_key: str | None = None, models: list[str] | None = None,
                 ready_timeout_s: float = 15.0) -> tuple[str, subprocess.Popen]:
    """Launch the server in its own process; (base_url ending in /v1, process) once it listens."""
    cmd = [sys.executable, os.path.abspath(__file__), "--port", "0", "--latency-ms", str(latency_ms),
           "--default", default, "--script", json.dumps(script or [])]
    if api_key is not None:
        cmd += ["--api-key", api_key]
    if models:
        cmd += ["--models", ",".join(models)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([process.stdout], [], [], ready_timeout_s)
    line = process.stdout.readline().strip() if ready else ""
    if not line.isdigit():
        stop_server(process)
        raise RuntimeError(f"stand-in server did not start within {ready_timeout_s:g}s (said {line!r})")
    return f"http://{HOST}:{line}/v1", process


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


class Standin:
    """A running server: its base URL, its counters, and a reset between tests."""

    def __init__(self, url: str, process: subprocess.Popen):
        self.url = url
        self.process = process
        self.root = url.removesuffix("/v1")
        # Bypass any proxy from the environment: this is always a local socket.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def stats(self) -> dict[str, Any]:
        with self._opener.open(f"{self.root}/stats", timeout=10) as response:
            return json.loads(response.read())

    def reset(self, **options: Any) -> None:
        """Zero the counters; options (script, latency_ms, default, api_key, models, parents) apply from now."""
        request = urllib.request.Request(f"{self.root}/control", data=json.dumps(options).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with self._opener.open(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        stop_server(self.process)


@contextlib.contextmanager
def standin(**options: Any) -> Iterator[Standin]:
    """`with standin(latency_ms=50) as server:` ... the process is stopped afterwards."""
    url, process = start_server(**options)
    try:
        yield Standin(url, process)
    finally:
        stop_server(process)


if __name__ == "__main__":
    main()
