"""`forge chat`: talk to the trained persona model in the terminal (or through a pipe).

The model sees exactly its training form (persona_forge.samples.reply_messages): the persona as the
system prompt, you as `user`, its own earlier replies as `assistant`. With --base the base model
answers every message too (the adapter switched off), so the two can be compared side by side; the
conversation goes on with the trained model's reply.

Against a served endpoint (backend.kind openai, or --endpoint URL: forge serve, vLLM, any
OpenAI-compatible server) each reply is one chat-completions request with those same messages,
`model` naming the served persona adapter (EndpointChat); --base asks the adapter's base model too.

With --user the model also remembers who it is talking to (persona_forge.memory): before each
reply the user's facts (all of them, or the ones relevant to the message) go into a memory block
of the system prompt; after it, what the message says about the user is remembered.

Commands: /reset starts over, /memory shows what is remembered, /quit (or end of input) stops.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from . import layout
from .config import BackendConfig, OpenAIBackendConfig, local_settings, redact_url
from .errors import BackendUnavailable, UserError
from .schema import Turn

YOU, BOT = "user1", "user2"


def read_persona(path: Path) -> list[str]:
    """Attributes from a text file (one a line; blank lines and #comments skipped), a JSON list of
    strings, or a JSON object with `attributes` (a Profile record)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: persona file not found; give a text file with one attribute a line")
    text = path.read_text(encoding="utf-8-sig").strip()
    if text.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: looks like JSON but is not valid ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict):
            data = data.get("attributes")
        if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
            raise UserError(f"{path}: a JSON persona is a list of sentences (or an object with `attributes`)")
        attributes = [a.strip() for a in data if a.strip()]
    else:
        attributes = [line.strip() for line in text.splitlines()
                      if line.strip() and not line.strip().startswith("#")]
    if not attributes:
        raise UserError(f"{path}: no persona attributes in it; write one sentence a line, e.g. 'I have two dogs.'")
    return attributes


def trained_base(adapter: Path | None) -> str | None:
    """The base model `forge train` recorded for this adapter (adapter/../train.manifest.json), if any."""
    if adapter is None:
        return None
    manifest = Path(adapter).parent / layout.TRAIN_MANIFEST
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["models"]["base"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ChatModel:
    """The chat model with an optional adapter that can be switched off for the base model's reply."""

    def __init__(self, spec: str, adapter: Path | None, config: BackendConfig, progress: bool = True):
        from .hardware import set_torch_threads
        from .lm import load_chat_model

        config = local_settings(config)  # a model run here: threads and repetition penalty from the local kind
        set_torch_threads(config.threads)
        # Unmerged, so that `disable_adapter()` gives the base model without a second copy.
        self.model, self.tokenizer = load_chat_model(spec, adapter=adapter, progress=progress, merge=False)
        self.has_adapter = adapter is not None
        self.config = config

    def reply(self, messages: list[dict[str, str]], base: bool = False) -> str:
        import contextlib

        import torch

        sampling = self.config.sampling
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "do_sample": sampling.temperature > 0,
                                  "repetition_penalty": self.config.repetition_penalty,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        switch = self.model.disable_adapter() if (base and self.has_adapter) else contextlib.nullcontext()
        with torch.inference_mode(), switch:
            output = self.model.generate(**inputs, **kwargs)
        ids = output[0, inputs["input_ids"].shape[1]:].tolist()
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


# forge serve names its base model after the model spec; this is its default (docs/serve.md).
SERVED_BASE_DEFAULT = "packaged:smollm2-135m-instruct"


def served_base(config: OpenAIBackendConfig, model: str, fallback: str) -> str:
    """The base model the endpoint serves adapter `model` on: its `parent` in GET /v1/models (forge serve
    and vLLM list one for every adapter), else `fallback` when the endpoint lists none."""
    from .backends.openai_compat import served_models

    listed = {m.get("id"): m for m in served_models(config) or []}
    entry = listed.get(model)
    if entry is not None and "parent" in entry:
        if not entry["parent"]:
            raise UserError(f"--base: '{model}' is the endpoint's base model itself; --base compares an adapter's "
                            f"reply with it: give --model ADAPTER (one of: "
                            f"{', '.join(sorted(n for n, m in listed.items() if m.get('parent'))) or 'none served'})")
        return str(entry["parent"])
    if fallback == model:
        raise UserError(f"--base: the endpoint names no base model for '{model}' (no parent in GET /v1/models); "
                        f"set serve.served_model_name to the base model's served name")
    return fallback


class EndpointChat:
    """Replies from a served endpoint through the openai backend: one chat-completions request per
    reply, `model` naming the served persona adapter and `base_model` the model --base asks too.
    `has_adapter`: `model` is an adapter (its replies are labelled tuned, as the local path does)."""

    def __init__(self, config: OpenAIBackendConfig, model: str, base_model: str | None = None, seed: int | None = None,
                 has_adapter: bool = True):
        from .backends import build_backend

        self.where = redact_url(config.base_url) or "the OpenAI API"
        self.seed = seed
        self.backend = build_backend(config.model_copy(update={"model": model}), progress=False)
        self.base_backend = (build_backend(config.model_copy(update={"model": base_model}), progress=False)
                             if base_model else None)
        self.has_adapter = has_adapter
        # One session per backend for the whole chat: every turn goes out on the same loop and
        # kept-alive connection; opened on the first reply, closed by close() or at exit.
        self._held: dict[int, Any] = {}

    def reply(self, messages: list[dict[str, str]], base: bool = False) -> str:
        from .backends import ChatRequest
        from .backends.session import held

        backend = self.base_backend if base and self.base_backend is not None else self.backend
        self._held[id(backend)] = kept = held(self, backend, self._held.get(id(backend)))
        # Sampling (max_tokens, temperature, top_p) is filled in from backend.sampling.
        [completion] = kept.session.complete([ChatRequest.of(messages, seed=self.seed)])
        if not completion.ok:
            raise BackendUnavailable(f"{self.where}: no reply from model '{backend.model}' ({completion.error}); "
                                     f"check that the server is up and serves that name (GET /v1/models)")
        return (completion.text or "").strip()

    def close(self) -> None:
        """Close the backends' sessions (their clients)."""
        for session in self._held.values():
            session.close()
        self._held.clear()


def user_memory(recipe: Any, user: str, mode: str | None, tokenizer: Any = None):
    """The user's memory for a chat (persona_forge.memory.UserMemory); models load on first use."""
    from .memory import SentenceEncoder, UserMemory, tokenizer_counter, word_count
    from .memory.extract import LLMExtractor

    config = recipe.memory.model_copy(update={"mode": mode}) if mode else recipe.memory

    def nli():
        from .backends import build_backend
        from .nli.base import load_nli

        return load_nli(recipe.nli, lambda: build_backend(recipe.backend), progress=False)

    extractor = None
    if config.extractor == "llm" or (config.extractor == "auto" and recipe.backend.kind == "openai"):
        from .backends import build_backend

        extractor = LLMExtractor(build_backend(recipe.backend, progress=False))
    return UserMemory(user, config, nli=nli, encoder=lambda: SentenceEncoder(config.encoder), extractor=extractor,
                      count=tokenizer_counter(tokenizer) if tokenizer is not None else word_count)


def converse(persona: list[str], reply: Callable[[list[dict[str, str]], bool], str], compare_base: bool,
             lines: Iterable[str], out: TextIO, interactive: bool, has_adapter: bool, memory: Any = None) -> int:
    """The loop: each input line is your message; returns how many messages were answered."""
    from .samples import reply_messages

    history: list[Turn] = []
    answered = 0
    label = "tuned" if has_adapter else "base"
    for raw in lines:
        text = raw.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            history = []
            print("(conversation reset)", file=out, flush=True)
            continue
        if text == "/memory" and memory is not None:
            facts = memory.active()
            print("\n".join(f"({f.id[:8]}) {f.text}" for f in facts) or "(nothing remembered yet)", file=out,
                  flush=True)
            continue
        if text.startswith("/"):
            print(f"(unknown command {text}; /reset starts over, /quit stops)", file=out, flush=True)
            continue
        block = memory.block(text) if memory is not None and memory.config.mode != "off" else []
        history.append(Turn(speaker=YOU, text=text))
        messages = [m.model_dump() for m in reply_messages(persona, history, BOT, memory=block)]
        answer = reply(messages, False)
        print(f"{label}> {answer}", file=out, flush=True)
        if compare_base and has_adapter:
            print(f"base> {reply(messages, True)}", file=out, flush=True)
        history.append(Turn(speaker=BOT, text=answer))
        if memory is not None and memory.config.mode != "off":
            memory.observe(text)
        answered += 1
    return answered


def stdin_lines(interactive: bool) -> Iterable[str]:
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return
