"""The OpenAI-compatible HTTP server: one base model, many LoRA adapters, chosen by `model`.

Routes: GET /v1/models, POST /v1/chat/completions (JSON or server-sent events), POST
/v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's names and bodies), GET /health.
Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}: an unknown model is 404,
a bad body 400, a full queue 429 with Retry-After, a missing or wrong key 401.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import Request  # at module level: the routes' annotations are resolved against it
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError
from .batcher import MicroBatcher, Overloaded
from .engine import Engine, GenRequest, GenResult
from .registry import AdapterRegistry

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- request bodies ---
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part of type '{part.type}' is not supported (text only)")
            parts.append(part.text or "")
        return "".join(parts)


class ChatCompletionBody(BaseModel):
    # Fields clients send that change nothing here (user, metadata, ...) are ignored, as OpenAI does.
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)   # a vLLM extension
    ignore_eos: bool = False                                           # a vLLM extension
    response_format: dict[str, Any] | None = None


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


@dataclass
class ServeState:
    engine: Engine
    registry: AdapterRegistry
    batcher: MicroBatcher
    base_name: str
    base_root: str
    max_tokens: int = 256
    repetition_penalty: float = 1.0
    api_key: str | None = None
    created: int = 0


def create_app(state: ServeState):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI(title="forge serve", docs_url=None, redoc_url=None)
    app.state.forge = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if state.api_key and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), state.api_key.encode()):
                return APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                                code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "waiting": state.batcher.waiting(), "loaded": state.engine.loaded_adapters()}

    @app.get("/v1/models")
    async def list_models():
        base = {"id": state.base_name, "object": "model", "created": state.created, "owned_by": "persona_forge",
                "root": state.base_root, "parent": None, "max_model_len": state.engine.max_context}
        data = [base] + [{"id": a.name, "object": "model", "created": a.created, "owned_by": "persona_forge",
                          "root": a.path, "parent": state.base_name, "max_model_len": state.engine.max_context}
                         for a in state.registry.known.values()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionBody)
        gen = _gen_request(state, body)
        loop = asyncio.get_running_loop()
        if not body.stream:
            try:
                result = await state.batcher.generate(gen)
            except Overloaded as exc:
                raise _overloaded(exc) from None
            except LookupError as exc:
                raise APIError(404, str(exc), param="model", code="model_not_found") from None
            return JSONResponse(_completion_body(body.model, result))
        events: asyncio.Queue = asyncio.Queue()
        gen.on_text = lambda text: loop.call_soon_threadsafe(events.put_nowait, text)
        try:
            future = state.batcher.submit(gen)
        except Overloaded as exc:
            raise _overloaded(exc) from None
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, f))
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(body.model, gen, events, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        body = await _parse(request, LoadBody)
        if body.lora_name in state.registry.known:
            raise APIError(400, f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name",
                           code="adapter_exists")
        try:
            info = await asyncio.to_thread(state.registry.check, body.lora_name, body.lora_path)
        except UserError as exc:
            raise APIError(400, str(exc), param="lora_path", code="invalid_adapter") from None
        state.registry.add(info)

        def load_now():
            unload, load = state.registry.plan([info.name])
            for name in unload:
                state.engine.unload_adapter(name)
            for name in load:
                state.engine.load_adapter(name, info.path)

        try:
            await asyncio.wrap_future(state.batcher.call(load_now))
        except Exception as exc:  # noqa: BLE001 - peft refused it: the adapter is not kept
            state.registry.remove(info.name)
            state.registry.forget_loaded(info.name)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise APIError(400, f"{body.lora_path}: could not be loaded ({first})", param="lora_path",
                           code="invalid_adapter") from None
        return PlainTextResponse(f"Success: LoRA adapter '{info.name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        body = await _parse(request, UnloadBody)
        if state.registry.remove(body.lora_name) is None:
            raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", param="lora_name",
                           code="model_not_found")

        def unload_now():
            state.registry.forget_loaded(body.lora_name)
            state.engine.unload_adapter(body.lora_name)

        await asyncio.wrap_future(state.batcher.call(unload_now))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


async def _parse(request, model: type[BaseModel]):
    try:
        data = json.loads(await request.body())
    except ValueError as exc:
        raise APIError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or None
        raise APIError(400, f"{where}: {error['msg']}" if where else error["msg"], param=where) from None


def _overloaded(exc: Overloaded) -> APIError:
    return APIError(429, f"the server is busy (queue full); retry after {exc.retry_after:.0f} s",
                    type_="rate_limit_error", code="queue_full", headers={"Retry-After": f"{exc.retry_after:.0f}"})


def _gen_request(state: ServeState, body: ChatCompletionBody) -> GenRequest:
    if body.model == state.base_name:
        adapter = None
    elif body.model in state.registry.known:
        adapter = body.model
    else:
        raise APIError(404, f"The model `{body.model}` does not exist.", param="model", code="model_not_found")
    try:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
    except ValueError as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from None
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
    try:
        prompt_ids = state.engine.chat_ids(messages)
    except Exception as exc:  # noqa: BLE001 - a template that rejects the conversation (e.g. roles)
        raise APIError(400, f"messages: the chat template refused them ({exc})", param="messages") from None
    context = state.engine.max_context
    asked = body.max_completion_tokens or body.max_tokens
    max_tokens = asked or state.max_tokens
    if context:
        if asked and len(prompt_ids) + asked > context:
            raise APIError(400, f"this model's context is {context} tokens; the prompt has {len(prompt_ids)} and "
                                f"{asked} more were asked for", param="max_tokens", code="context_length_exceeded")
        max_tokens = min(max_tokens, context - len(prompt_ids))
        if max_tokens < 1:
            raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) fills this model's context ({context})",
                           param="messages", code="context_length_exceeded")
    return GenRequest(
        prompt_ids=prompt_ids, adapter=adapter, max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=tuple(stops),
        repetition_penalty=body.repetition_penalty or state.repetition_penalty, ignore_eos=body.ignore_eos)


def _usage(result: GenResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _completion_body(model: str, result: GenResult) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "forge-serve",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage(result)}


async def _sse(model: str, gen: GenRequest, events: asyncio.Queue, include_usage: bool) -> AsyncIterator[str]:
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None,
              choices: bool = True) -> str:
        body: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                "model": model, "system_fingerprint": "forge-serve",
                                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await events.get()
            if isinstance(event, str):
                yield chunk({"content": event})
                continue
            try:
                result: GenResult = event.result()
            except Exception as exc:  # noqa: BLE001 - the stream has begun: the error goes in the stream
                error = {"message": str(exc), "type": "server_error", "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                break
            yield chunk({}, finish=result.finish_reason)
            if include_usage:
                yield chunk({}, usage=_usage(result), choices=False)
            break
        yield "data: [DONE]\n\n"
    finally:
        gen.cancelled.set()  # a client that went away stops its row; a finished row is unaffected


# --- building a server ---
def build_state(model_spec: str, served_name: str | None, adapters: dict[str, Path], *, max_loaded: int = 8,
                max_rank: int = 64, max_batch: int = 16, wait_ms: float = 50.0, max_queue: int = 64,
                mixed: bool = True, max_tokens: int = 256, repetition_penalty: float = 1.0,
                base_aliases: list[str] | None = None, api_key: str | None = None, threads: int | None = None,
                lora_kernel: str = "bmm", progress: bool = True) -> ServeState:
    """Load the base model, check every adapter (a UserError names the first refused) and load up to
    `max_loaded` of them."""
    from ..hardware import set_torch_threads
    from ..lm import load_chat_model
    from ..models import causal_lm_path, resolve

    set_torch_threads(threads)
    root = causal_lm_path(model_spec, progress=progress)
    model, tokenizer = load_chat_model(model_spec, adapter=None, progress=progress)
    engine = Engine(model, tokenizer, lora_kernel=lora_kernel)
    aliases = [model_spec, root, *(base_aliases or [])]
    source = resolve(model_spec)
    if source.kind == "packaged":
        aliases.append(source.name)
    registry = AdapterRegistry(served_name or model_spec, aliases, model, max_loaded=max_loaded, max_rank=max_rank)
    for name, path in adapters.items():
        registry.add(registry.check(name, path))
    batcher = MicroBatcher(engine, registry, max_batch=max_batch, wait_ms=wait_ms, max_queue=max_queue, mixed=mixed)

    def preload():
        names = list(registry.known)[:max_loaded]
        _, load = registry.plan(names)
        for name in load:
            engine.load_adapter(name, registry.known[name].path)

    batcher.call(preload).result()
    return ServeState(engine=engine, registry=registry, batcher=batcher, base_name=served_name or model_spec,
                      base_root=root, max_tokens=max_tokens, repetition_penalty=repetition_penalty,
                      api_key=api_key, created=int(time.time()))


class BackgroundServer:
    """The app served by uvicorn on a thread, on a loopback port chosen by the OS (tests, benches).

    with BackgroundServer(state) as server: ... server.base_url (ends in /v1)
    """

    def __init__(self, state: ServeState, host: str = "127.0.0.1"):
        import socket

        import uvicorn

        self.state = state
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        config = uvicorn.Config(create_app(state), log_level="warning", timeout_keep_alive=30,
                                limit_concurrency=4096, backlog=1024)
        self.server = uvicorn.Server(config)
        self.thread = None

    def __enter__(self) -> "BackgroundServer":
        import threading

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
